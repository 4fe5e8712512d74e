"""Stage 1, the emotion rank encoder: SER pre-training of the speech tower (CCC + pairwise ranking losses).

The definition lives in erclap/configs/ser_pretrain.py (importable as ``erclap.configs.ser_pretrain``).
"""

from erclap.configs.ser_pretrain import get_config  # noqa: F401
