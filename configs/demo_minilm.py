"""The demo with the pre-trained all-MiniLM-L6-v2 text tower (frozen) instead of the from-scratch one.

The definition lives in erclap/configs/demo_minilm.py (importable as ``erclap.configs.demo_minilm``).
"""

from erclap.configs.demo_minilm import get_config  # noqa: F401
