"""Why RNC leaves a larger modality gap than InfoNCE here: each explanation a variant, × loss × seed (45 runs).

The definition lives in erclap/configs/sweeps/modality_gap.py.
"""

from erclap.configs.sweeps.modality_gap import base_config, fixed, get_sweep, summary_metrics  # noqa: F401
