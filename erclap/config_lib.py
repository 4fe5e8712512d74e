"""Config mechanics: dotted keys and overrides, the generic value checks, and device arithmetic.

Unknown keys are already refused by ``ml_collections`` (configs are locked, and command-line overrides of
keys that do not exist fail while flags are parsed). Here: ``apply_overrides`` / ``override_flags`` (dotted
keys, naming the key on a bad value), ``flat_items``, the numeric range checks (``value_problems``), the values a
config file left to the command line (``required_problems``: ``ml_collections.config_dict.placeholder(str)`` is
None until set), and whether the batches and the mesh fit a device count (``device_problems``). Nothing here
knows ERCLAP's registries (stages, losses, architectures, corpora): the checks against them, and the one
validation every caller runs, are ``erclap.validation``. No jax import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections

POSITIVE = (
    "data.sample_rate", "data.max_seconds", "data.max_text_tokens", "model.joint_dim", "train.num_steps",
    "train.global_batch_size", "train.learning_rate", "train.temperature_init", "train.log_every_steps",
    "model.ser_head_layers", "checkpoint.every_steps", "checkpoint.keep", "eval.every_steps", "eval.batch_size",
    "eval.prompt_wordings",
)
NON_NEGATIVE = (
    "train.micro_batch_size", "train.warmup_steps", "train.weight_decay", "train.grad_clip_norm",
    "data.worker_count", "loss_options.row_block", "model.dropout", "data.eval_max_seconds",
    "data.unreadable_audio_tolerance", "model.speech_input_std", "model.ser_head_hidden",
)


# What a required (placeholder) value is, for the message naming it when it is not set.
REQUIRED = {
    "model.speech_init": "the speech emotion model: an Odyssey-format SER model directory (config.json with "
                         "ssl_type + model.safetensors) or an ERCLAP stage-1 workdir",
    "model.text_init": "the text tower: a local Hugging Face model directory (e.g. distilroberta-base)",
}


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


def check_key(config: ml_collections.ConfigDict, key: str, where: str = "") -> None:
  """ConfigError naming ``key`` unless the dotted key names a value (not a section) of ``config``."""
  _parent(config, key, where)


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


def _non_finite(value) -> bool:
  """A float (or a sequence holding one) that is NaN or infinite."""
  if isinstance(value, list | tuple):
    return any(_non_finite(v) for v in value)
  return isinstance(value, float) and not math.isfinite(value)


def value_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every problem of the config's numbers on their own (finite, ranges, divisibility, lengths), one message each.

  No key takes NaN or an infinity (``--config.data.max_seconds=inf`` parses as a float): each is refused here, not
  where it would first overflow, after a corpus is built."""
  non_finite = [key for key, value in flat_items(config) if _non_finite(value)]
  problems = [f"config.{key}={get(config, key)!r}: must be a finite number" for key in non_finite]
  problems += [f"config.{key}={get(config, key)!r}: must be > 0" for key in POSITIVE
               if key not in non_finite and not get(config, key) > 0]
  problems += [f"config.{key}={get(config, key)!r}: must be >= 0" for key in NON_NEGATIVE
               if key not in non_finite and not get(config, key) >= 0]
  weights = tuple(config.loss_options.rank_label_weights)
  if weights and "loss_options.rank_label_weights" not in non_finite and (
      len(weights) != len(config.loss_options.rank_labels) or min(weights) < 0 or max(weights) <= 0):
    problems.append(f"config.loss_options.rank_label_weights={weights!r}: one weight >= 0 per "
                    f"config.loss_options.rank_labels entry ({len(config.loss_options.rank_labels)}), not all 0; "
                    f"or () for equal weights")
  lam = config.loss_options.same_modality_weight
  if "loss_options.same_modality_weight" in non_finite:
    pass  # named above
  elif not lam >= 0:
    problems.append(f"config.loss_options.same_modality_weight={lam!r}: must be >= 0")
  elif lam != 1 and not config.loss_options.joint:
    problems.append(f"config.loss_options.same_modality_weight={lam!r} weighs the same-modality rows of the joint "
                    f"form: set config.loss_options.joint=True (or leave it at 1)")
  if config.model.speech_input_std == 0 and config.model.speech_input_mean != 0:
    problems.append(f"config.model.speech_input_mean={config.model.speech_input_mean!r} has no effect while "
                    f"config.model.speech_input_std=0 (standardisation off): set both or neither")
  t = config.train
  if t.micro_batch_size and t.global_batch_size % t.micro_batch_size:
    problems.append(f"config.train.micro_batch_size={t.micro_batch_size} must divide "
                    f"config.train.global_batch_size={t.global_batch_size}")
  if len(config.mesh.shape) != len(config.mesh.axes):
    problems.append(f"config.mesh.shape {tuple(config.mesh.shape)} and config.mesh.axes "
                    f"{tuple(config.mesh.axes)} differ in length")
  for key in ("plan.utilization", "plan.hbm_headroom"):
    if not 0 < get(config, key) <= 1:
      problems.append(f"config.{key}={get(config, key)!r}: must be in (0, 1]")
  if not isinstance(config.plan.topology, str):
    problems.append(f"config.plan.topology={config.plan.topology!r}: must be a name like 'v4-8' or ''")
  if config.train.global_batch_size < 2:
    problems.append("config.train.global_batch_size must be >= 2 (contrastive losses need pairs)")
  for key in ("data.seed", "export.member"):
    value = get(config, key)
    if not (isinstance(value, int) and value >= -1):
      problems.append(f"config.{key}={value!r}: must be -1 or a whole number >= 0")
  return problems + _eval_problems(config)


def data_seed(config) -> int:
  """The seed of the data order (training shuffle, crops, descriptions drawn): ``data.seed``, or ``seed`` when it is
  -1 (the default: one seed decides a run)."""
  seed = int(config.data.get("seed", -1))
  return seed if seed >= 0 else int(config.seed)


def flat_items(node, prefix: str = ""):
  """(dotted key, value) of every value under a ConfigDict (sections walked, not yielded)."""
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from flat_items(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def required_problems(config: ml_collections.ConfigDict) -> list[str]:
  """One message per value the config file left to the command line (None) and that is still not set."""
  return [f"config.{key} is required: set --config.{key}=..." + (f" ({REQUIRED[key]})" if key in REQUIRED else "")
          for key, value in flat_items(config) if value is None]


def _eval_problems(config) -> list[str]:
  e = config.eval
  problems = []
  for key in ("max_examples", "probe_train_examples"):  # 0 = the whole split; else metrics need pairs
    if e[key] < 0 or e[key] == 1:
      problems.append(f"config.eval.{key}={e[key]}: must be 0 (the whole split) or >= 2")
  if e.retrieval_levels < 2:
    problems.append(f"config.eval.retrieval_levels={e.retrieval_levels}: must be >= 2 (Kendall tau orders "
                    f"levels)")
  for key in ("retrieval_draws", "retrieval_top_k"):
    if e[key] < 1:
      problems.append(f"config.eval.{key}={e[key]}: must be >= 1")
  if e.retrieval_bootstrap < 0 or 0 < e.retrieval_bootstrap < 100:
    problems.append(f"config.eval.retrieval_bootstrap={e.retrieval_bootstrap}: must be 0 (no interval) or >= 100 "
                    f"(fewer resamples do not resolve a 95 % interval)")
  return problems


def raise_problems(problems: list[str], title: str) -> None:
  """One ConfigError: the problem itself when there is one, else ``title`` and the list; nothing when empty."""
  if len(problems) == 1:
    raise ConfigError(problems[0])
  if problems:
    raise ConfigError(f"{title}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------- devices

BATCH_SECTIONS = ("train", "eval", "export")  # their *batch_size keys are global batches split over devices


def resolve_mesh_shape(shape, axes, device_count: int,
                       known_axes: tuple[str, ...] | None = None) -> tuple[tuple[int, ...] | None, list[str]]:
  """``config.mesh.shape`` with its -1 filled for ``device_count`` devices, and the problems found.

  The same rules as ``erclap.sharding.make_mesh``, without jax: distinct axis names (among ``known_axes`` when
  given), at most one -1, the other entries >= 1, the product equal to the device count. Returns (None,
  problems) when the shape cannot be resolved."""
  shape, axes = tuple(shape), tuple(axes)
  where = f"config.mesh.shape={shape}"
  problems = []
  unknown = [a for a in axes if known_axes is not None and a not in known_axes]
  if unknown or len(set(axes)) != len(axes):
    among = f" among {known_axes}" if known_axes is not None else ""
    problems.append(f"config.mesh.axes={axes}: use distinct names{among}")
  if len(shape) != len(axes):
    problems.append(f"config.mesh.shape {shape} and config.mesh.axes {axes} differ in length")
  bad = [s for s in shape if not isinstance(s, int) or isinstance(s, bool) or (s < 1 and s != -1)]
  if bad:
    problems.append(f"{where}: entries must be positive integers or one -1 (fill), got {bad}")
  elif shape.count(-1) > 1:
    problems.append(f"{where}: at most one entry may be -1 (fill with the remaining devices)")
  if problems:
    return None, problems
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if device_count % known:
      return None, [f"{where}: the fixed entries' product {known} does not divide the {device_count} devices"]
    shape = tuple(device_count // known if s == -1 else s for s in shape)
  if math.prod(shape) != device_count:
    return None, [f"{where} needs {math.prod(shape)} devices, but {device_count} are available (use -1 in one "
                  f"entry to fill)"]
  return shape, []


def batch_size_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The global batch sizes the config holds (``train.global_batch_size``, ``eval.batch_size`` and any other
  ``*batch_size`` of the train / eval / export sections), without the micro-batch size."""
  keys = []
  for section in BATCH_SECTIONS:
    node = config.get(section)
    if isinstance(node, ml_collections.ConfigDict):
      keys += [f"{section}.{k}" for k, v in node.items() if k.endswith("batch_size") and k != "micro_batch_size"
               and isinstance(v, int) and not isinstance(v, bool)]
  return keys


def _multiple_hint(value: int, divisor: int) -> str:
  lower, upper = value // divisor * divisor, (value // divisor + 1) * divisor
  return f"e.g. {lower} or {upper}" if lower > 0 else f"e.g. {upper}"


def _device_count_problems(config, device_count, process_count, local_device_count) -> list[str]:
  problems = []
  if not device_count >= 1 or not process_count >= 1 or device_count % process_count:
    problems.append(f"{device_count} devices over {process_count} processes: need >= 1 device per process "
                    f"and the same number on every process")
  elif local_device_count is not None and local_device_count * process_count != device_count:
    problems.append(f"{local_device_count} local devices x {process_count} processes != {device_count} devices: "
                    f"every process must see the same number of devices")
  n = config.distributed.num_processes
  if n and n != process_count:
    problems.append(f"config.distributed.num_processes={n} but the run has {process_count} processes")
  return problems


def device_problems(config: ml_collections.ConfigDict, device_count: int, process_count: int = 1,
                    local_device_count: int | None = None, *, mesh_axes: tuple[str, ...] | None = None,
                    batch_axes: tuple[str, ...]) -> list[str]:
  """The problems of running ``config`` on ``device_count`` devices in ``process_count`` processes.

  Every global batch size (``batch_size_keys``) must be a multiple of the mesh's batch shards (the product of
  its ``batch_axes``) and of ``process_count`` (each process reads its share), the micro-batch size a multiple
  of the batch shards; ``mesh_axes``: the axis names a mesh may have (None: any)."""
  problems = _device_count_problems(config, device_count, process_count, local_device_count)
  if problems:
    return problems
  shape, problems = resolve_mesh_shape(config.mesh.shape, config.mesh.axes, device_count, mesh_axes)
  if shape is None:
    return problems
  mesh = dict(zip(config.mesh.axes, shape, strict=True))
  shards = math.prod(mesh.get(a, 1) for a in batch_axes)
  why = f"the {shards} batch shards of mesh {mesh} on {device_count} devices"
  divisor = math.lcm(shards, process_count)
  if process_count > 1:
    why += f", and {process_count} processes each reading an equal share"
  for key in batch_size_keys(config):
    value = get(config, key)
    if value % divisor:
      problems.append(f"config.{key}={value} must be a multiple of {divisor} ({why}): "
                      f"{_multiple_hint(value, divisor)}")
  micro, total = config.train.micro_batch_size, config.train.global_batch_size
  if micro and micro < total and micro % shards:
    problems.append(f"config.train.micro_batch_size={micro} must be a multiple of {shards} (every micro-batch is "
                    f"split over {why.removeprefix('the ')}): {_multiple_hint(micro, shards)}")
  return problems
