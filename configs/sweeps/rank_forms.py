"""Which RNC form keeps both order and alignment when valence is weak: per-attribute weights and terms, the
temperature, the joint form's weight on same-modality terms; both corpora, 4 seeds as members.

The definition lives in erclap/configs/sweeps/rank_forms.py.
"""

from erclap.configs.sweeps.rank_forms import base_config, fixed, get_sweep, members, summary_metrics  # noqa: F401
