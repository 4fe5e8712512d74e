"""The EmotionRankCLAP recipe: a frozen Odyssey-format speech emotion model, DistilRoBERTa, Rank-N-Contrast.

The definition, with the command line and what of the paper's set-up is unknown, lives in
erclap/configs/paper.py (importable as ``erclap.configs.paper``); ``--config=configs/paper.py:tiny`` is the
recipe on the embedded corpus.
"""

from erclap.configs.paper import get_config  # noqa: F401
