"""Paper scale on a Cloud TPU v4 slice (e.g. v4-32: 16 chips = 16 JAX devices across 4 hosts).

The definition lives in erclap/configs/tpu_v4.py (importable as ``erclap.configs.tpu_v4``).
"""

from erclap.configs.tpu_v4 import get_config  # noqa: F401
