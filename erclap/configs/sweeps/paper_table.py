"""The paper's comparison of losses on the embedded corpus: RNC vs InfoNCE (the paper's SCE) vs SupCon, 4 seeds each.

  python launch/sweep.py paper_table --root=workdirs/sweeps --mode=all        # 12 runs, one shared stage 1
  python launch/sweep.py paper_table --root=workdirs/sweeps --summarize       # summary.md: the table

The two-stage demo (``configs/demo.py``): stage 1 (``ser_pretrain:demo``, 400 steps, ``recipe.stage1_seed`` 0) is
trained once, frozen and its representation cached, in ``<root>/paper_table/_shared/ser_pretrain-demo_embedded``;
every run trains the cross-modal stage (600 steps × 64) on that cache, so losses and seeds differ in the
cross-modal stage alone. ``--mode=all`` exports the test split, whose metrics the summary reads: each loss as
mean ± sd [95 % Student-t interval] over its four seeds, the paper's Table 1 figures beside.
"""

from erclap.configs.sweeps import product

base_config = "configs/demo.py"

# One evaluation (of the validation split), at the end: the table is the export's test split.
fixed = {"eval.every_steps": 600}

# The table's columns: the paper's AOC / VOC, ours (anchor-wise τ), the modality gap, retrieval, the valence probe,
# and the temperature the loss ended at.
summary_metrics = ("aoc", "voc", "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein", "r1_s2t",
                   "ccc_probe_valence", "temperature")

LOSSES = ("rnc", "infonce", "supcon")
SEEDS = (0, 1, 2, 3)


def get_sweep():
  return product({"loss": LOSSES, "seed": SEEDS})
