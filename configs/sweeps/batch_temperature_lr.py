"""The main sweep: global batch size × initial temperature × learning rate on a TPU v4 slice (27 runs).

The definition lives in erclap/configs/sweeps/batch_temperature_lr.py.
"""

from erclap.configs.sweeps.batch_temperature_lr import base_config, fixed, get_sweep  # noqa: F401
