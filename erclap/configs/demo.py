"""Demo: the embedded synthetic corpus, the tiny model, CPU, a few minutes on 2 cores.

  python -m erclap.main --config=configs/demo.py --workdir=workdirs/demo --mode=all
  python -m erclap.main --config=configs/demo.py:single_stage --workdir=workdirs/demo_1 --mode=all

The default follows the paper's recipe in two stages (``erclap.recipe``): stage 1 trains the speech emotion
model (``configs/ser_pretrain.py:demo``: speech tower + attribute head, CCC + ranking losses) in
``<workdir>/stage1``; it is frozen and its representation of every clip cached in ``<workdir>/speech_features``;
the cross-modal stage then trains the text tower and both projections on the cache. ``single_stage`` trains
everything (both towers from random initialisation) in one run on audio.
"""

from erclap.configs import default

VARIANTS = ("two_stage", "single_stage")


def get_config(variant: str = "two_stage"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/demo.py:{variant}: unknown variant; use one of {VARIANTS}")
  c = default.get_config()
  c.loss = "rnc"
  c.data.name = "embedded"
  c.data.max_seconds = 3.0
  c.data.max_text_tokens = 24
  c.data.embedded.max_seconds = 3.0
  c.model.size = "tiny"
  c.model.joint_dim = 128
  c.model.projection_hidden = (256,)
  c.model.tokenizer = "descriptions"
  # A randomly initialised text tower's CLS output hardly depends on the input (std across descriptions
  # ~6e-4 of a unit vector at init): mean pooling gives the loss something to work with from step 0.
  c.model.text_pooling = "mean"
  c.train.num_steps = 600
  c.train.global_batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 1e-4
  c.train.temperature_init = 0.1
  c.train.log_every_steps = 25
  c.checkpoint.every_steps = 200
  c.checkpoint.keep = 2
  c.checkpoint.best_metric = "aoc_voc_mean"
  c.eval.every_steps = 200
  # A multiple of 8, like train.global_batch_size: the config runs unchanged on 1, 2, 4 or 8 devices.
  # Evaluation drops the padding rows of its last batch: its metrics do not depend on the batch size
  # (beyond float rounding).
  c.eval.batch_size = 200
  c.eval.retrieval_draws = 100
  c.mesh.shape = (-1, 1, 1)
  if variant == "two_stage":
    c.recipe.stage1 = "ser_pretrain:demo"
  return c
