"""Base configuration: every key any part of ERCLAP reads is declared here (others are errors).

The definition lives in erclap/configs/default.py (importable as ``erclap.configs.default``).
"""

from erclap.configs.default import get_config  # noqa: F401
