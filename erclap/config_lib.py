"""Config validation: a config that passes here has known keys and sensible values.

Unknown keys are already refused by ``ml_collections`` (configs are locked, and command-line overrides of
keys that do not exist fail while flags are parsed); this module checks values, and names the key.
"""

from __future__ import annotations

import ml_collections

CHOICES = {
    "stage": ("clap", "ser"),
    "loss": ("rnc", "infonce", "supcon"),
    "loss_options.similarity": ("cosine", "neg_l2"),
    "loss_options.label_distance": ("l1", "l2"),
    "data.name": ("embedded", "msp_podcast", "iemocap"),
    "model.size": ("tiny", "base", "large"),
    "model.speech_arch": ("wav2vec2", "hubert", "wavlm"),
    "model.text_arch": ("bert", "roberta", "distilroberta"),
    "model.speech_pooling": ("mean",),
    "model.text_pooling": ("cls", "mean"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "checkpoint.best_mode": ("max", "min"),
}
POSITIVE = (
    "data.sample_rate", "data.max_seconds", "data.max_text_tokens", "model.joint_dim", "train.num_steps",
    "train.global_batch_size", "train.learning_rate", "train.temperature_init", "train.log_every_steps",
    "checkpoint.every_steps", "checkpoint.keep", "eval.every_steps", "eval.batch_size",
)
NON_NEGATIVE = (
    "train.micro_batch_size", "train.warmup_steps", "train.weight_decay", "train.grad_clip_norm",
    "data.worker_count", "loss_options.row_block", "model.dropout", "data.eval_max_seconds",
    "data.unreadable_audio_tolerance",
)
LABEL_NAMES = ("arousal", "valence", "dominance")


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def get(config: ml_collections.ConfigDict, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks values; raises ConfigError naming the offending key. Returns the config."""
  for key, choices in CHOICES.items():
    value = get(config, key)
    if value not in choices:
      raise ConfigError(f"config.{key}={value!r}: must be one of {choices}")
  for key in POSITIVE:
    if not get(config, key) > 0:
      raise ConfigError(f"config.{key}={get(config, key)!r}: must be > 0")
  for key in NON_NEGATIVE:
    if not get(config, key) >= 0:
      raise ConfigError(f"config.{key}={get(config, key)!r}: must be >= 0")
  bad = [n for n in config.loss_options.rank_labels if n not in LABEL_NAMES]
  if bad or not config.loss_options.rank_labels:
    raise ConfigError(f"config.loss_options.rank_labels={tuple(config.loss_options.rank_labels)!r}: "
                      f"choose a non-empty subset of {LABEL_NAMES}")
  t = config.train
  if t.micro_batch_size and t.global_batch_size % t.micro_batch_size:
    raise ConfigError(f"config.train.micro_batch_size={t.micro_batch_size} must divide "
                      f"config.train.global_batch_size={t.global_batch_size}")
  if len(config.mesh.shape) != len(config.mesh.axes):
    raise ConfigError(f"config.mesh.shape {tuple(config.mesh.shape)} and config.mesh.axes "
                      f"{tuple(config.mesh.axes)} differ in length")
  if config.train.global_batch_size < 2:
    raise ConfigError("config.train.global_batch_size must be >= 2 (contrastive losses need pairs)")
  return config
