"""Stage 1, the emotion rank encoder: SER pre-training of the speech tower (CCC + pairwise ranking losses).

  python -m erclap.main --config=configs/ser_pretrain.py --workdir=workdirs/ser
  python -m erclap.main --config=configs/ser_pretrain.py:demo --workdir=workdirs/ser_demo   # tiny, CPU

Its workdir then initialises the cross-modal stage's speech tower (``configs/demo.py`` does both stages in one
run, ``erclap.recipe``; by hand):
  python -m erclap.main --config=configs/demo.py:single_stage --workdir=workdirs/demo_from_ser \
      --config.model.speech_init=workdirs/ser_demo [--config.model.freeze_speech=True]
"""

from erclap.configs import default, demo


def get_config(size: str = "base"):
  if size == "demo":
    c = demo.get_config("single_stage")
    c.train.num_steps = 400
    c.train.learning_rate = 1e-3
  elif size == "base":
    c = default.get_config()
    c.data.name = "msp_podcast"
    c.data.max_seconds = 6.0
    c.model.size = "base"
    c.model.speech_arch = "wavlm"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.train.num_steps = 20_000
    c.train.global_batch_size = 256
    c.train.learning_rate = 5e-5
  else:
    raise ValueError(f"configs/ser_pretrain.py:{size}: unknown size; use 'demo' or 'base'")
  c.stage = "ser"
  c.loss_options.ccc_weight = 1.0
  c.loss_options.rank_weight = 1.0
  c.loss_options.rank_margin = 0.25   # pairs closer than this on the 1–7 scale carry no order
  c.loss_options.rank_scale = 1.0
  c.checkpoint.best_metric = "ser_ccc_mean"
  c.export.splits = ("test",)
  return c
