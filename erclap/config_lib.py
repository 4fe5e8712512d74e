"""Config validation: a config that passes here has known keys and sensible values.

Unknown keys are already refused by ``ml_collections`` (configs are locked, and command-line overrides of
keys that do not exist fail while flags are parsed); this module checks values, and names the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from erclap.schema import LABEL_NAMES

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


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def get(config: ml_collections.ConfigDict, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def _parent(config: ml_collections.ConfigDict, key: str, where: str = ""):
  """The section holding dotted ``key``, and the key's last part; ConfigError naming an unknown key."""
  prefix = f"{where}: " if where else ""
  if not isinstance(key, str) or not key:
    raise ConfigError(f"{prefix}override key {key!r}: must be a dotted config key like 'train.learning_rate'")
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ConfigError(f"{prefix}unknown config key {key!r} (no {'.'.join(parts[:i + 1])!r} in the config"
                        + (f"; known there: {', '.join(known)})" if known else ")"))
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    raise ConfigError(f"{prefix}config key {key!r} is a section, not a value")
  return node, parts[-1]


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str = "") -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted-key overrides set (``{"train.learning_rate": 1e-4}``).

  ml_collections' type checks apply; ConfigError names the key when the config has no such key or the value
  has the wrong type. ``where`` prefixes the message (e.g. the sweep run it came from).
  """
  config = ml_collections.ConfigDict(config.to_dict())  # a copy that keeps the field types
  config.lock()
  for key, value in overrides.items():
    node, last = _parent(config, key, where)
    try:
      node[last] = value
    except (TypeError, ValueError) as e:
      prefix = f"{where}: " if where else ""
      raise ConfigError(f"{prefix}config key {key!r}: cannot set {value!r}: {e}") from None
  return config


def format_value(value: Any) -> str:
  """A value as ml_collections' config flags parse it (``0.0001``, ``True``, ``(1,-1,1)``, ``infonce``)."""
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, int | float):
    return repr(value)
  if isinstance(value, str):
    return value
  if isinstance(value, list | tuple):
    inner = ",".join(repr(v) for v in value)
    return f"({inner},)" if len(value) == 1 else f"({inner})"
  raise ConfigError(f"override value {value!r}: use a bool, int, float, str, tuple or None")


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  """Dotted-key overrides as command-line flags: ``["--config.train.learning_rate=0.0001", ...]``."""
  return [f"--config.{key}={format_value(value)}" for key, value in overrides.items()]


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
  for key in ("plan.utilization", "plan.hbm_headroom"):
    if not 0 < get(config, key) <= 1:
      raise ConfigError(f"config.{key}={get(config, key)!r}: must be in (0, 1]")
  if not isinstance(config.plan.topology, str):
    raise ConfigError(f"config.plan.topology={config.plan.topology!r}: must be a name like 'v4-8' or ''")
  if config.train.global_batch_size < 2:
    raise ConfigError("config.train.global_batch_size must be >= 2 (contrastive losses need pairs)")
  return config
