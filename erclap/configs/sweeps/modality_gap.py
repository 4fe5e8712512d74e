r"""Why RNC leaves a larger modality gap than InfoNCE here: each explanation a variant, × loss × seed (45 runs).

  .venv/bin/python -m erclap.tools.synthesize_descriptions --data_name=embedded --splits=train,validation,test \
      --num=4 --output=workdirs/unique_descriptions.jsonl      # the `unique` variant's descriptions, once
  python launch/sweep.py modality_gap --root=workdirs/sweeps --mode=all
  python launch/sweep.py modality_gap --root=workdirs/sweeps --summarize

Every run is the two-stage demo's cross-modal stage (``configs/demo.py``: 600 steps × 64) on one stage 1 and speech
cache shared by all (``<root>/modality_gap/_shared/ser_pretrain-demo_embedded``), with the test split's metrics from
its export: the paper's AOC / VOC and every modality-gap measure of docs/metrics.md, and the temperature it ended at.
The variants (``VARIANTS``), each for the three losses:

  base          learned temperature (initialised at 0.1), cosine similarity, the two-direction cross-modal loss
  fixed_t005    (a) fixed temperature 0.05    (train.learn_temperature=False, train.temperature_init=0.05)
  fixed_t01     (a) fixed temperature 0.1
  fixed_t02     (a) fixed temperature 0.2
  neg_l2        (b) similarity -||s - t|| at a fixed temperature 0.1, as the official Rank-N-Contrast loss
  joint         (c) the joint 2N form: speech and text rows one set of anchors, self excluded
  unique        (d) unique LLM-style descriptions per clip (4 per clip) instead of the shared templates
  batch16       (e) global batch 16
  batch256      (e) global batch 256 (64 is the base)

``base`` and ``joint`` run four seeds (0-3), the others seed 0: the summary groups the seeds (mean, sd, 95 %
interval) by variant and loss.
"""

from erclap.configs.sweeps import product

base_config = "configs/demo.py"

# One evaluation (of the validation split), at the end: the tables are the export's test split.
fixed = {"eval.every_steps": 600}

summary_metrics = ("aoc", "voc", "mmd", "wasserstein", "mmd_fixed", "mmd_linear", "centroid_distance",
                   "paired_cosine", "wasserstein_centered", "description_centroid_distance", "temperature")

UNIQUE_DESCRIPTIONS = "workdirs/unique_descriptions.jsonl"  # relative to the repository root, where runs start
FIXED_TEMPERATURE = {"train.learn_temperature": False}
VARIANTS = {
    "base": {},
    "fixed_t005": {**FIXED_TEMPERATURE, "train.temperature_init": 0.05},
    "fixed_t01": {**FIXED_TEMPERATURE, "train.temperature_init": 0.1},
    "fixed_t02": {**FIXED_TEMPERATURE, "train.temperature_init": 0.2},
    "neg_l2": {**FIXED_TEMPERATURE, "train.temperature_init": 0.1, "loss_options.similarity": "neg_l2"},
    "joint": {"loss_options.joint": True},
    "unique": {"data.descriptions": UNIQUE_DESCRIPTIONS},
    "batch16": {"train.global_batch_size": 16},
    "batch256": {"train.global_batch_size": 256},
}
LOSSES = ("rnc", "infonce", "supcon")
SEEDS = {"base": (0, 1, 2, 3), "joint": (0, 1, 2, 3)}  # the other variants: seed 0


def get_sweep():
  return [{**overrides, **run} for name, overrides in VARIANTS.items()
          for run in product({"loss": LOSSES, "seed": SEEDS.get(name, (0,))})]
