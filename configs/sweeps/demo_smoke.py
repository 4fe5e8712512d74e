"""A tiny sweep on the demo config (2 short CPU runs): checks the launch path end to end.

The definition lives in erclap/configs/sweeps/demo_smoke.py.
"""

from erclap.configs.sweeps.demo_smoke import base_config, fixed, get_sweep  # noqa: F401
