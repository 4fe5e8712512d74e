r"""Why RNC's order reaches retrieval less when valence is weak, and which RNC form keeps both order and alignment.

  python launch/sweep.py rank_forms --root=workdirs/sweeps --mode=all
  python launch/sweep.py rank_forms --root=workdirs/sweeps --summarize

The label distance over (arousal, valence) is dominated by the attribute the speech side carries more strongly
(arousal: on the espeak corpus valence has weak cues only). Each variant changes one thing in the RNC loss of the
two-stage demo (``configs/demo.py``), on both corpora, 4 seeds as the members of one program:

  valence_x2     ``loss_options.rank_label_weights=(1, 2)``: valence's distance counts twice
  per_label      ``loss_options.rank_terms="per_label"``: one RNC term per attribute, each with its own negatives
  fixed_t005     fixed temperature 0.05 (``train.learn_temperature=False``)
  fixed_t02      fixed temperature 0.2
  joint_l0 ...   the joint form with weight λ on its same-modality terms (``loss_options.same_modality_weight``):
                 λ = 0 (2N anchors, other-modality candidates only), 0.1, 0.3; λ = 1 is the joint form of the
                 paper_table sweep
  joint_l01_x2   λ = 0.1 with valence counted twice

The two-direction RNC, InfoNCE and the joint forms at λ = 1 are the paper_table sweep's points (same stage 1,
same data order): the two sweeps read as one table (benchmarks/README.md).
"""


base_config = "configs/demo.py"

fixed = {"eval.every_steps": 600, "loss": "rnc"}

summary_metrics = ("aoc", "voc", "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein", "r1_s2t",
                   "temperature")

CORPORA = ("embedded", "espeak")
SEEDS = (0, 1, 2, 3)
FIXED_TEMPERATURE = {"train.learn_temperature": False}
VARIANTS = {
    "joint_l0": {"loss_options.joint": True, "loss_options.same_modality_weight": 0.0},
    "joint_l01": {"loss_options.joint": True, "loss_options.same_modality_weight": 0.1},
    "joint_l03": {"loss_options.joint": True, "loss_options.same_modality_weight": 0.3},
    "valence_x2": {"loss_options.rank_label_weights": (1.0, 2.0)},
    "per_label": {"loss_options.rank_terms": "per_label"},
    "joint_l01_x2": {"loss_options.joint": True, "loss_options.same_modality_weight": 0.1,
                     "loss_options.rank_label_weights": (1.0, 2.0)},
    "fixed_t005": {**FIXED_TEMPERATURE, "train.temperature_init": 0.05},
    "fixed_t02": {**FIXED_TEMPERATURE, "train.temperature_init": 0.2},
}

members = {"seed": SEEDS}


def get_sweep():
  return [{"data.name": corpus, **overrides} for corpus in CORPORA for overrides in VARIANTS.values()]
