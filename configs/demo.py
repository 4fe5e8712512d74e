"""Demo: the embedded synthetic corpus, the tiny model, CPU, a few minutes on 2 cores.

The definition lives in erclap/configs/demo.py (importable as ``erclap.configs.demo``).
"""

from erclap.configs.demo import get_config  # noqa: F401
