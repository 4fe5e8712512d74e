"""The config a run runs with: resolved once, before any work, validated once, written down, then frozen.

``resolve(config, workdir, mode)`` turns the config a user gave (a config file and its command-line overrides)
into the config every part of the run reads:

1. the two-stage recipe (``config.recipe.stage1``): the cross-modal stage reads its speech model from
   ``<workdir>/stage1`` (``model.speech_init``), frozen, from the speech-feature cache ``<workdir>/speech_features``
   unless ``data.speech_features`` names another; when part of its speech path trains on the frozen tower
   (``erclap.trainable``: nothing a cache could stand for) it reads audio instead (``stage1_overrides``, which a
   sweep also applies to point its runs at one shared stage 1). ``stage1_config`` derives stage 1's own config,
   seeded by ``recipe.stage1_seed``: the run's ``seed`` is the cross-modal stage's alone;
2. an Odyssey SER directory as ``model.speech_init``: the settings the directory fixes (attentive statistics
   pooling, input mean / std, head layers and width, number of outputs, sample rate:
   ``OdysseyConfig.config_overrides``) replace the config's;
3. ``--mode=cache_speech``: ``data.speech_features`` becomes where the cache is written
   (``speech_cache.directory``: ``<workdir>/speech_features`` when it is "");
4. validation (``erclap.validation``, with the run's devices and processes), what the mode cannot do
   (``mode_problems``: e.g. an ``export.model_dir`` that is not a model directory), the recipe's stage-1 config:
   one ``ConfigError`` listing every problem, before a corpus or model is built or anything is written;
5. the result is written to ``<workdir>/config.<mode>.json`` (process 0; what resolution changed is listed
   there and printed) and returned as an immutable ``FrozenConfigDict``: nothing changes a config after this.

Mode functions take a resolved config and say which mode's (``require``): library callers resolve first
(``train.train_and_evaluate(resolve.resolve(config, workdir, "train"), workdir)``) and get the same config as
``python -m erclap.main``. A resolved config is never resolved again, nor changed.

``for_inference(stored)`` is the other resolution: the training config stored with a checkpoint or a model
directory, rewritten to run that model on this machine's devices (``erclap.inference``,
``erclap.emotion_encoder``, ``erclap.model_export``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from erclap import (
    config_lib,
    configs,
    distributed,
    fileio,
    members,
    model_files,
    models,
    odyssey_import,
    progress,
    speech_cache,
    speech_source,
    stages,
    trainable,
    validation,
)

STAGE1_DIR = "stage1"
# The speech model's settings: the cross-modal config's values are stage 1's (same tower, pooling, head, inputs).
STAGE1_MODEL_KEYS = ("size", "speech_arch", "speech_pooling", "speech_input_mean", "speech_input_std",
                     "ser_head_layers", "ser_head_hidden", "num_attributes", "dtype", "remat")
STAGE1_SECTIONS = ("data", "mesh", "distributed")
# What only the text side reads: stage 1 keeps its own config's values (nothing of stage 1 depends on them).
STAGE1_TEXT_DATA_KEYS = ("descriptions", "descriptions_per_example", "max_text_tokens")
MODES = ("train", "eval", "export", "all", "export_model", "plan", "cache_speech", "prepare_speech")


def record_path(workdir: str, mode: str) -> str:
  """Where ``resolve`` writes the config of ``mode``: ``<workdir>/config.<mode>.json``."""
  return os.path.join(workdir, f"config.{mode}.json")


def stage1_workdir(workdir: str) -> str:
  return os.path.join(workdir, STAGE1_DIR)


def stage1_config(config) -> ml_collections.ConfigDict:
  """The stage-1 (SER) config of a recipe run: ``config.recipe.stage1`` with the settings of ``config`` the two
  stages must share: the corpus (``data``, without the cache and the description settings only text reads), the
  devices (``mesh``, ``distributed``) and the speech model's settings (``STAGE1_MODEL_KEYS``), so that the tower
  stage 1 trains is the one the cross-modal stage loads. Its seed is ``recipe.stage1_seed``, never the run's
  ``seed``: runs that differ only in their seed share one stage 1 (and one speech cache). ``recipe.stage1_steps``
  > 0 replaces its step count.

  Raises:
    config_lib.ConfigError: the name is not a config, or not a stage-1 (``stage="ser"``) config.
  """
  name = config.recipe.stage1
  try:
    base = configs.get(name)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.recipe.stage1={name!r}: {e}") from None
  if stages.of(base) is not stages.SER:
    raise config_lib.ConfigError(f"config.recipe.stage1={name!r}: has stage={base.stage!r}; stage 1 must be a "
                                 f"speech-emotion (stage='ser') config such as 'ser_pretrain:demo'")
  text_keys = {f"data.{key}" for key in STAGE1_TEXT_DATA_KEYS}
  overrides = {f"{section}.{key}": value for section in STAGE1_SECTIONS
               for key, value in config_lib.flat_items(config[section]) if f"{section}.{key}" not in text_keys}
  overrides.update({f"model.{key}": config.model[key] for key in STAGE1_MODEL_KEYS})
  overrides.update({"seed": config.recipe.stage1_seed, "recipe.stage1": "", "data.speech_features": ""})
  if config.recipe.stage1_steps:
    overrides["train.num_steps"] = config.recipe.stage1_steps
  first = config_lib.apply_overrides(base, overrides, f"config.recipe.stage1={name!r}")
  config_lib.raise_problems([f"config.recipe.stage1={name!r}: {p}" for p in validation.problems(first)],
                            f"config.recipe.stage1={name!r}")
  return first


def stage1_overrides(config, stage1_dir: str, cache_dir: str) -> dict[str, Any]:
  """What makes the cross-modal stage of a two-stage config read the stage 1 trained in ``stage1_dir``: its speech
  model from there (``model.speech_init``), frozen, and from the cache ``cache_dir`` (``data.speech_features``)
  when nothing of its speech path trains (``erclap.trainable``); otherwise it reads audio.

  Args:
    config: a config whose ``recipe.stage1`` names stage 1.
    stage1_dir: the stage-1 workdir (``<workdir>/stage1`` in a recipe run; a sweep's shared one).
    cache_dir: the speech-feature cache of that stage 1.

  Returns:
    Dotted overrides.
  """
  overrides = {"model.speech_init": stage1_dir, "model.freeze_speech": True}
  if config.stage in stages.STAGES and trainable.of(config_lib.apply_overrides(config, overrides)).cached:
    overrides["data.speech_features"] = cache_dir  # the frozen path, cached
  return overrides


def _recipe_overrides(config, workdir: str) -> tuple[dict, list[str]]:
  """The cross-modal config of a recipe run as overrides, and the recipe's problems."""
  if not config.recipe.stage1:
    return {}, []
  try:
    stage1_config(config)  # a bad stage-1 name or setting stops every mode, before anything is built
  except config_lib.ConfigError as e:
    return {}, [str(e)]
  if config.model.speech_init:
    return {}, [f"config.recipe.stage1={config.recipe.stage1!r} trains the speech model in <workdir>/{STAGE1_DIR}, "
                f"and config.model.speech_init={config.model.speech_init!r} names another: set one of them (for "
                f"a one-stage run from that model: --config.recipe.stage1=)"]
  return stage1_overrides(config, stage1_workdir(workdir), speech_cache.directory(config, workdir)), []


def _odyssey_overrides(config) -> dict:
  """What an Odyssey ``model.speech_init`` directory fixes about its model (config.json only)."""
  path = config.model.speech_init
  return odyssey_import.read_odyssey_config(path).config_overrides() if odyssey_import.is_odyssey_dir(path) else {}


def mode_problems(config, mode: str, workdir: str | None = None) -> list[str]:
  """What ``mode`` cannot do with ``config`` (besides ``validation.problems``); resolution and the mode function
  check the same. ``--mode=cache_speech`` writes the cache ``config.data.speech_features`` names, which the config
  must be able to read (``speech_source.CACHED``); ``--mode=prepare_speech`` needs a two-stage config.
  ``--mode=export_model`` replaces its target directory, which must be a model directory or nothing
  (``model_files.target_problem``; checked with ``workdir`` only, by process 0 for every process: a collective when
  there are several)."""
  if mode not in MODES:
    return [f"mode {mode!r}: must be one of {MODES}"]
  k = members.count(config)
  if mode == "export_model" and k > 1 and config.export.member < 0:
    return [f"--mode=export_model writes one member's model and this run has {k} members (config.members): name it "
            f"with --config.export.member=<0..{k - 1}>"]
  if mode == "prepare_speech" and not config.recipe.stage1:
    return ["--mode=prepare_speech trains the stage 1 of a two-stage config and caches its speech representation, "
            "and config.recipe.stage1 is empty (a one-stage config has no stage 1: --mode=cache_speech caches its "
            "frozen speech path)"]
  if mode == "export_model" and workdir is not None:
    problem = model_files.target_problem(model_files.model_dir_path(config, workdir), workdir) \
        if jax.process_index() == 0 else None
    if distributed.agree(problem is not None):  # process 0 writes the directory: its verdict counts
      return [problem or "config.export.model_dir: refused by process 0 (its log names the reason)"]
    return []
  if mode != "cache_speech" or config.stage not in stages.STAGES:
    return []
  if speech_source.of(config) is not speech_source.CACHED:
    return ["--mode=cache_speech writes the cache config.data.speech_features names, and it is empty (resolve the "
            "config for --mode=cache_speech: it sets <workdir>/speech_features)"]
  return speech_source.CACHED.problems(config)


def require(config, mode: str) -> None:
  """TypeError unless ``config`` is resolved (``resolve``); the mode functions call it with their own mode.

  Args:
    config: what a mode function was given.
    mode: that function's ``--mode``, for the message."""
  if not isinstance(config, ml_collections.FrozenConfigDict):
    raise TypeError(f"--mode={mode} takes a resolved config: pass erclap.resolve.resolve(config, workdir, "
                    f"{mode!r}) (got a {type(config).__name__})")


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in after.items() if before.get(k) != v}


def _write(path: str, payload: dict) -> None:
  if "://" in path:  # an object store: no rename there, one write of the whole file
    epath.Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fileio.write_json(path, payload)


def resolve(config, workdir: str, mode: str = "train") -> ml_collections.FrozenConfigDict:
  """The config ``mode`` runs with in ``workdir`` (see the module docstring).

  Args:
    config: the config as given (a config file with its overrides).
    workdir: the run's directory (absolute, or a ``gs://`` path); the resolved config is written into it.
    mode: the ``--mode`` it is resolved for.

  Returns:
    The resolved, validated, immutable config.

  Raises:
    config_lib.ConfigError: one message listing every problem of the config (each naming its key).
  """
  if isinstance(config, ml_collections.FrozenConfigDict):
    raise TypeError("resolve: the config is resolved already (a resolved config is final; resolve the config it "
                    "was made from)")
  given = dict(config_lib.flat_items(config))
  overrides, problems = _recipe_overrides(config, workdir)
  if mode == "cache_speech":  # the mode writes the cache: where the run reads it
    overrides.setdefault("data.speech_features", speech_cache.directory(config, workdir))
  try:
    overrides.update(_odyssey_overrides(config))
  except (OSError, ValueError) as e:
    problems.append(f"config.model.speech_init={config.model.speech_init!r}: {e}")
  resolved = config_lib.apply_overrides(config, overrides, "resolve") if overrides else config
  devices = validation.Devices.current()
  problems += mode_problems(resolved, mode, workdir) + validation.problems(resolved, devices)
  config_lib.raise_problems(list(dict.fromkeys(problems)), validation.title(devices))
  changed = _changes(given, dict(config_lib.flat_items(resolved)))
  frozen = ml_collections.FrozenConfigDict(resolved)
  if jax.process_index() == 0:
    path = record_path(workdir, mode)
    _write(path, dict(mode=mode, changed_by_resolution=changed, config=json.loads(resolved.to_json_best_effort())))
    what = ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "nothing changed"
    progress.print_line(f"[config] --mode={mode}: {what}; resolved config -> {path}")
    logging.info("Resolved config for --mode=%s:\n%s", mode, resolved)
  return frozen


# --------------------------------------------------------------------------- inference


def _fill_defaults(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """Adds the keys a stored config lacks (written before they existed) with their default values."""
  for key, value in defaults.items():
    if key not in config:
      # As a stored config holds it (a JSON list): FrozenConfigDict takes a second sighting of the empty tuple, a
      # singleton, for a reference cycle.
      config[key] = list(value) if isinstance(value, tuple) else value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
      _fill_defaults(config[key], value)


def for_inference(stored, *, dtype: str | None = None, arch_dirs: Mapping[str, str] | None = None,
                  tokenizer_dir: str = "") -> ml_collections.FrozenConfigDict:
  """The training config stored with a model, rewritten to run that model here.

  * keys added to ERCLAP since it was stored get their defaults;
  * the mesh becomes data parallel over every local device;
  * ``data.speech_features`` is cleared: a model trained on cached speech features still holds its speech tower
    and embeds audio;
  * ``model.speech_init`` / ``model.text_init``: the weights are in the stored parameters, only the architecture
    is read from these directories: ``arch_dirs`` ({key: directory}, a model directory's copies) when given,
    else the stored path where it still exists on this machine, else "";
  * ``tokenizer_dir``: the tokenizer to read (a model directory's copy), if given;
  * ``dtype``: the compute dtype (parameters stay float32); None keeps the training's.

  Args:
    stored: the stored training config (a dict or ConfigDict).
    dtype, arch_dirs, tokenizer_dir: see above.

  Returns:
    The config, immutable.

  Raises:
    ValueError: ``dtype`` is not a known dtype; the stored config is a program with members (its checkpoint holds
      K models: one is exported with ``--mode=export_model --config.export.member=k``).
  """
  if dtype is not None and dtype not in models.DTYPES:
    raise ValueError(f"dtype={dtype!r}: use one of {models.DTYPES}")
  config = ml_collections.ConfigDict(stored.to_dict() if isinstance(stored, ml_collections.ConfigDict) else stored)
  _fill_defaults(config, configs.get("default"))
  k = members.count(config)
  if k:
    raise ValueError(f"the checkpoint holds {k} members (config.members), one model each: write member k's model "
                     f"with --mode=export_model --config.export.member=k and load that directory")
  config.mesh.shape, config.mesh.axes = (-1,), ("data",)
  config.data.speech_features = ""
  for key in ("speech_init", "text_init"):
    if arch_dirs is not None:
      config.model[key] = arch_dirs.get(key, "")
    elif not os.path.isdir(config.model[key]):
      config.model[key] = ""
  if tokenizer_dir:
    config.model.tokenizer = tokenizer_dir
  if dtype is not None:
    config.model.dtype = dtype
  return ml_collections.FrozenConfigDict(config)
