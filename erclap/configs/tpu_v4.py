"""Paper scale on a Cloud TPU v4 slice (e.g. v4-32: 16 chips = 16 JAX devices across 4 hosts).

WavLM-base-plus-class speech tower, DistilRoBERTa-class text tower, 512-d joint space, MSP-Podcast.
Point the towers at Hugging Face checkpoints you have locally (nothing is downloaded at run time):

  python -m erclap.main --config=configs/tpu_v4.py --workdir=gs://BUCKET/erclap/run1 \
    --config.data.manual_dir=/data/MSP-Podcast \
    --config.model.speech_init=/ckpt/wavlm-base-plus \
    --config.model.text_init=/ckpt/distilroberta-base --config.model.tokenizer=/ckpt/distilroberta-base

Mesh: pure data parallelism over all chips by default (the towers are ~95M + 82M parameters). For FSDP,
``--config.mesh.shape='(1,-1,1)'``; to add tensor parallelism, e.g. ``'(1,-1,4)'``: the logical-axis
table in erclap/sharding.py maps parameters onto whichever axes exist, without model changes.

The speech tower is frozen, as in the paper. Fine-tuning it at this batch and crop does not fit a v4-8 or v4-32
by `--mode=plan` (XLA's memory analysis: ~194 / ~50 GiB per chip against 32 GiB of HBM); the plan names the
knobs, e.g. ``--config.model.freeze_speech=False --config.train.micro_batch_size=128`` on v4-8.
"""

from erclap.configs import default


def get_config():
  c = default.get_config()
  c.loss = "rnc"
  c.data.name = "msp_podcast"
  c.data.max_seconds = 6.0
  c.data.max_text_tokens = 64
  c.data.worker_count = 8
  c.data.prefetch_buffer_size = 4
  c.data.eval_split = "validation"
  c.data.test_split = "test"
  c.model.size = "base"
  c.model.speech_arch = "wavlm"
  c.model.text_arch = "distilroberta"
  c.model.joint_dim = 512
  c.model.projection_hidden = (512,)
  c.model.text_pooling = "cls"
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.model.freeze_speech = True
  c.train.num_steps = 20_000
  c.train.global_batch_size = 1024
  c.train.learning_rate = 5e-5
  c.train.speech_lr_multiplier = 1.0
  c.train.warmup_steps = 1000
  c.train.temperature_init = 0.07
  c.train.log_every_steps = 100
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.best_metric = "aoc_voc_mean"
  c.eval.every_steps = 1000
  c.eval.batch_size = 256
  c.mesh.shape = (-1, 1, 1)
  c.mesh.axes = ("data", "fsdp", "tensor")
  return c
