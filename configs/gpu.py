"""Paper scale on one or more GPU hosts (e.g. 8×H100 per node; SLURM multi-node via launch/).

The definition lives in erclap/configs/gpu.py (importable as ``erclap.configs.gpu``).
"""

from erclap.configs.gpu import get_config  # noqa: F401
