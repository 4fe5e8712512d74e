"""The paper's comparison of losses on two corpora: RNC vs InfoNCE (the paper's SCE) vs SupCon, each in its
two-direction cross-modal form and its joint form, 4 seeds each.

  python launch/sweep.py paper_table --root=workdirs/sweeps --mode=all        # 12 programs × 4 seeds
  python launch/sweep.py paper_table --root=workdirs/sweeps --summarize       # summary.md: the table

The two-stage demo (``configs/demo.py``) on the embedded corpus and on the espeak corpus (``data.name=espeak``,
docs/corpora.md: other speakers and sentences, valence carried by weak cues only, 600 test clips from held-out
speakers). Per corpus, stage 1 (``ser_pretrain:demo``, 400 steps, ``recipe.stage1_seed`` 0) is trained once,
frozen and its representation cached in ``<root>/paper_table/_shared/``; every run trains the cross-modal stage
(600 steps × 64) on that cache, so losses, forms and seeds differ in the cross-modal stage alone. The four seeds
of a point train together as the members of one program (``config.members``): the same runs as four separate
ones, in one process. ``--mode=all`` exports the test split, whose metrics the summary reads: each point as
mean ± sd [95 % Student-t interval] over its seeds, the paper's Table 1 figures beside.

``joint``: ``loss_options.joint`` — speech and text rows are one set of 2N anchors (self excluded), so the loss
also orders same-modality candidates; the two-direction form (``joint=False``, the paper's) ranks only the
other modality's.
"""

from erclap.configs.sweeps import product

base_config = "configs/demo.py"

# One evaluation (of the validation split), at the end: the table is the export's test split.
fixed = {"eval.every_steps": 600}

# The table's columns: the paper's AOC / VOC with their bootstrap intervals' widths in the CSV, ours (anchor-wise
# τ), the modality gap, retrieval, the valence probe, and the temperature the loss ended at.
summary_metrics = ("aoc", "voc", "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein", "r1_s2t",
                   "ccc_probe_valence", "temperature")

CORPORA = ("embedded", "espeak")
LOSSES = ("rnc", "infonce", "supcon")
SEEDS = (0, 1, 2, 3)

members = {"seed": SEEDS}


def get_sweep():
  return product({"data.name": CORPORA, "loss": LOSSES, "loss_options.joint": (False, True)})
