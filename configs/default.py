"""The base configuration, re-exported: every key is declared in erclap/configs/default.py
(``erclap.configs.default``); this file only makes it a path to pass as ``--config=configs/default.py``.
"""

from erclap.configs.default import get_config  # noqa: F401
