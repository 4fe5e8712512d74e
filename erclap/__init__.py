"""ERCLAP: EmotionRankCLAP in JAX/Flax.

Speech and speaking-style descriptions aligned in one joint space with a cross-modal
Rank-N-Contrast loss, so that similarity order follows emotional (arousal/valence) distance.
"""

__version__ = "0.1.0"
