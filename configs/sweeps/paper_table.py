"""The paper's comparison of losses on the embedded corpus: RNC, InfoNCE, SupCon × 4 seeds on one shared stage 1.

The definition lives in erclap/configs/sweeps/paper_table.py.
"""

from erclap.configs.sweeps.paper_table import base_config, fixed, get_sweep, summary_metrics  # noqa: F401
