"""The paper's comparison of losses on two corpora: RNC, InfoNCE, SupCon, two-direction and joint, × 4 seeds.

The definition lives in erclap/configs/sweeps/paper_table.py.
"""

from erclap.configs.sweeps.paper_table import base_config, fixed, get_sweep, members, summary_metrics  # noqa: F401
