"""Initialising towers from elsewhere: an ERCLAP workdir, an Odyssey-format SER model, a Hugging Face model.

``config.model.speech_init`` may name
  * an ERCLAP workdir (it has ``checkpoints/``), e.g. a stage-1 (SER) run: its latest checkpoint's speech
    representation is copied in: ``speech_tower``, and in the cross-modal stage also ``speech_pool`` /
    ``ser_head`` where the model being trained has them (the stage's ``speech_group``, ``erclap.stages``). Its input
    standardisation (``model.speech_input_mean`` / ``std``) must be the run's;
  * an Odyssey-format SER model directory (``config.json`` with ``ssl_type`` + ``model.safetensors``,
    ``erclap.odyssey_import``): the same parts. Its backbone architecture, pooling, input statistics and head
    size are read from it (``erclap.resolve`` puts them into the config);
  * a Hugging Face model directory (``config.json`` + safetensors): the tower alone, by ``erclap.hf_import``.
``config.model.text_init``: an ERCLAP workdir or a Hugging Face directory.
Shapes must match what the current config builds; otherwise one error lists every difference.

A two-stage run's stage 1 (``config.recipe.stage1``: ``model.speech_init`` is ``<workdir>/stage1``) is loaded only
once it is complete (its latest checkpoint at stage 1's ``train.num_steps``): a stage 1 stopped half-way is never
cached or trained on. A run resumed from a checkpoint keeps the frozen parts it loaded when it started; they must
still be what these directories give (``check_loaded_unchanged``), or the checkpoint was trained on another model
(e.g. stage 1 trained again since) and is refused.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from erclap import checkpointing, hf_import, members, odyssey_import, resolve, sharding, stages, trainable, trees
from erclap.models import SPEECH_POOL, SPEECH_TOWER, TEXT_TOWER, SpeechArch

TOWERS = ((SPEECH_TOWER, "speech_init"), (TEXT_TOWER, "text_init"))
# Stage-1 settings the speech representation depends on without showing in its parameter shapes.
INPUT_KEYS = ("speech_input_mean", "speech_input_std")


class TowerMismatchError(ValueError):
  """The weights to load do not fit the tower that the config builds."""


def is_erclap_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints"))


def split_checkpoint_path(path: str) -> tuple[str, int]:
  """A workdir -> (workdir, -1); ``<workdir>/checkpoints/<step>`` -> (workdir, step)."""
  path = os.path.abspath(path.rstrip("/"))
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    return os.path.dirname(os.path.dirname(path)), int(base)
  return path, -1


def read_workdir_config(workdir: str, step: int = -1) -> ml_collections.ConfigDict:
  """The config an ERCLAP checkpoint was trained with (its metadata); the latest step when ``step`` < 0."""
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"{workdir}: not an ERCLAP workdir or checkpoint (no {ckpt_dir})")
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  if not steps:
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoint")
  chosen = step if step >= 0 else steps[-1]
  meta_dir = os.path.join(ckpt_dir, str(chosen), "meta")
  meta_files = [os.path.join(r, f) for r, _, fs in os.walk(meta_dir) for f in fs if not f.startswith("_")]
  for meta_file in meta_files:
    try:
      with open(meta_file) as f:
        meta = json.load(f)
      if "config" in meta:  # its paths inside the workdir are read under this one (it may have moved)
        return ml_collections.ConfigDict(checkpointing.local_paths(json.loads(meta["config"]),
                                                                   os.path.dirname(ckpt_dir)))
    except (json.JSONDecodeError, UnicodeDecodeError):
      continue
  raise FileNotFoundError(f"{meta_dir}: no training config in the checkpoint metadata")


def read_workdir_params(workdir: str, step: int = -1) -> tuple[int, dict]:
  """Parameters (numpy) of an ERCLAP workdir's latest (or given) checkpoint, without knowing its config."""
  manager = ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir), item_names=("state", "meta"),
                                  options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  try:
    steps = sorted(manager.all_steps(), reverse=True) if step < 0 else [step]
    if not steps:
      raise FileNotFoundError(f"{workdir}: no checkpoint under {manager.directory}")
    errors = []
    for s in steps:
      try:
        restored = manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        params = state["params"] if isinstance(state, dict) else state.params
        return s, jax.tree.map(np.asarray, params)
      except Exception as e:  # a damaged newest checkpoint: fall back to the previous one
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:200]}")
    raise RuntimeError(f"{workdir}: no readable checkpoint ({'; '.join(errors)})")
  finally:
    manager.close()


def speech_init_arch(model_config) -> SpeechArch | None:
  """The backbone architecture of an Odyssey ``model.speech_init`` (pass it to the model builders as
  ``speech_arch=``: it is not a config preset), else None. Reads config.json only.

  The rest of what the directory says about its model (pooling, input statistics, head size, sample rate:
  ``OdysseyConfig.config_overrides``) is put into the config once, by ``erclap.resolve``."""
  path = model_config.get("speech_init", "")
  return odyssey_import.read_odyssey_config(path).speech_arch if odyssey_import.is_odyssey_dir(path) else None


def _speech_parts(params: dict, config) -> tuple[str, ...]:
  """The entries of the speech representation that the model being built has (the stage's ``speech_group``)."""
  return tuple(name for name in stages.of(config).speech_group if name in params)


def _check_same_tree(name: str, source: str, want, have) -> None:
  """TowerMismatchError listing every missing, unexpected and differently shaped leaf of ``have``."""
  lines = trees.mismatch_lines(trees.leaf_shapes(want), trees.leaf_shapes(have), limit=15)
  if lines:
    raise TowerMismatchError("\n".join([f"{source}: its {name} does not match the {name} this config builds "
                                        f"(check config.model.size / *_arch / speech_pooling / "
                                        f"speech_representation / ser_head_* against the source):", *lines]))


def _copy_parts(params: dict, source: dict, names: tuple[str, ...], where: str) -> dict:
  """``params`` with the entries ``names`` taken from ``source`` (cast to ``params``' dtypes); one
  TowerMismatchError listing every difference of all of them."""
  label = names[0] if len(names) == 1 else " + ".join(names)
  _check_same_tree(label, where, {n: params[n] for n in names}, {n: source[n] for n in names if n in source})
  params = dict(params)
  for name in names:
    params[name] = jax.tree.map(lambda new, old: np.asarray(new, dtype=np.asarray(old).dtype), source[name],
                                params[name])
  return params


def _input_problems(config, stored_model, source: str) -> list[str]:
  """Differences in the settings a speech representation depends on beyond its parameters."""
  problems = [f"  model.{k}: {source} has {stored_model.get(k, 0.0)!r}, this config {config.model[k]!r}"
              for k in INPUT_KEYS if float(stored_model.get(k, 0.0)) != float(config.model[k])]
  pooling = stored_model.get("speech_pooling", "mean")
  if SPEECH_POOL in stages.of(config).speech_group and pooling != config.model.speech_pooling:
    problems.append(f"  model.speech_pooling: {source} has {stored_model.get('speech_pooling', 'mean')!r}, "
                    f"this config {config.model.speech_pooling!r}")
  return problems


def _unfinished_stage1(config, step: int, where: str) -> str | None:
  """Why a two-stage run's stage 1 at ``step`` may not be used yet (None: it is complete)."""
  if not config.recipe.get("stage1", ""):
    return None
  wanted = resolve.stage1_config(config).train.num_steps
  if step >= wanted:
    return None
  return (f"{where}: stage 1 of this run stopped at step {step} of {wanted} (it was preempted or killed, or "
          f"config.recipe.stage1_steps grew since): nothing is cached from it or trained on it before it is complete; "
          f"run --mode=train (or --mode=all), which finishes stage 1 first")


def _from_workdir(params: dict, config, tower: str, key: str, path: str) -> dict:
  try:
    count = members.count(read_workdir_config(path))
  except FileNotFoundError:
    count = 0  # a checkpoint without its config: its shapes are checked below
  if count:
    raise TowerMismatchError(f"config.model.{key}={path!r} holds {count} members (config.members), one model each, "
                             f"and a tower is read from a run of one model: train the member's settings as a run of "
                             f"its own (members.member_config) and name that workdir")
  step, source = read_workdir_params(path)
  where = f"config.model.{key}={path!r} (step {step})"
  unfinished = _unfinished_stage1(config, step, where) if tower == SPEECH_TOWER else None
  if unfinished:
    raise checkpointing.CheckpointMismatchError(unfinished)
  if tower != SPEECH_TOWER:
    return _copy_parts(params, source, (tower,), where)
  try:
    stored = read_workdir_config(path, step).model
  except FileNotFoundError:
    stored = None  # a checkpoint without its config: only the parameter shapes can be checked
  problems = [] if stored is None else _input_problems(config, stored, "the checkpoint")
  if problems:
    raise TowerMismatchError("\n".join([f"{where}: its speech model was trained with other input settings:",
                                        *problems]))
  return _copy_parts(params, source, _speech_parts(params, config), where)


def _from_odyssey(params: dict, config, path: str) -> dict:
  ckpt = odyssey_import.import_odyssey(path)
  where = f"config.model.speech_init={path!r} (Odyssey SER model)"
  stored = dict(speech_input_mean=ckpt.mean, speech_input_std=ckpt.std, speech_pooling="attentive_stats")
  problems = _input_problems(config, stored, "the Odyssey model")
  if problems:
    raise TowerMismatchError("\n".join([f"{where}: this config does not describe it (build the model with "
                                        f"erclap.runtime.build_model, which reads these from the directory):",
                                        *problems]))
  return _copy_parts(params, ckpt.params, _speech_parts(params, config), where)


def load_tower_weights(params: dict, config) -> dict:
  """Returns ``params`` (host numpy tree) with the configured towers replaced by pre-trained weights."""
  params = dict(params)
  hf_model_config = ml_collections.ConfigDict(config.model.to_dict())  # the inits left for the HF importer
  hf_needed = False
  for tower, key in TOWERS:
    path = config.model[key]
    if not path:
      continue
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.model.{key}={path!r} does not exist")
    if is_erclap_workdir(path):
      params = _from_workdir(params, config, tower, key, path)
    elif tower == SPEECH_TOWER and odyssey_import.is_odyssey_dir(path):
      params = _from_odyssey(params, config, path)
    else:
      hf_needed = True
      continue
    with hf_model_config.unlocked():
      hf_model_config[key] = ""
  if hf_needed:
    params = hf_import.init_from_pretrained(params, hf_model_config)
  return params


def loaded_parts(config, names=None) -> tuple[str, ...]:
  """The top-level parameters that ``load_tower_weights`` takes from ``model.speech_init`` / ``model.text_init``
  (of ``names``, those the model has, when given)."""
  parts = []
  path = config.model.speech_init
  if path and (is_erclap_workdir(path) or odyssey_import.is_odyssey_dir(path)):
    parts += stages.of(config).speech_group
  elif path:
    parts.append(SPEECH_TOWER)  # a Hugging Face directory holds the tower alone
  if config.model.text_init:
    parts.append(TEXT_TOWER)
  return tuple(name for name in parts if names is None or name in names)


def _init_key(name: str) -> str:
  return "text_init" if name == TEXT_TOWER else "speech_init"


def check_loaded_unchanged(config, initial: dict, restored: dict, *, step: int, directory: str) -> None:
  """Refuses a checkpoint whose frozen, loaded parameters differ from those the init directories give now.

  Frozen parameters never change in training, so a checkpoint of this config holds exactly what
  ``model.speech_init`` / ``model.text_init`` gave when the run started. When they differ, those directories hold
  another model now (a two-stage run's stage 1 trained further or again, a replaced directory), and resuming would
  go on training on the old one (and on a speech-feature cache made from it).

  Args:
    config: the run's config.
    initial: the parameters the config starts from (``load_pretrained_towers`` done), global or host arrays.
    restored: the checkpoint's parameters.
    step: the checkpoint's step, for the message.
    directory: the checkpoints' directory, for the message.

  Raises:
    checkpointing.CheckpointMismatchError: naming the differing parts, their source, and the fix; nothing is moved.
  """
  what = trainable.of(config)
  frozen = [name for name in loaded_parts(config, initial) if not what.trains(name) and name in restored]
  differing = [name for name in frozen if not _same_values(initial[name], restored[name])]
  if not differing:
    return
  sources = dict.fromkeys(f"config.model.{_init_key(n)}={config.model[_init_key(n)]!r}" for n in differing)
  workdir = os.path.dirname(str(directory).rstrip("/"))
  aside = [str(directory)]
  if config.data.get("speech_features", ""):
    aside.append(f"the speech-feature cache {config.data.speech_features}")
  why = ("stage 1 of this run was trained further or again since" if config.recipe.get("stage1", "")
         else "that directory holds another model now")
  raise checkpointing.CheckpointMismatchError(
      f"the checkpoint at step {step} in {directory} was trained with frozen {', '.join(differing)} other than "
      f"{' and '.join(sources)} gives now ({why}); resuming would go on training on the old ones. To train on the "
      f"current ones, start afresh: move {' and '.join(aside)} aside (or use another --workdir than {workdir}); "
      f"nothing was changed")


def _same_values(a, b) -> bool:
  """Whether two trees of arrays (global or host) hold the same values, bit for bit; every process must call it."""
  equal = jax.tree.map(lambda x, y: jnp.array_equal(x, y), a, b)
  return all(bool(np.asarray(jax.device_get(e.addressable_data(0) if isinstance(e, jax.Array) else e)))
             for e in jax.tree.leaves(equal))


def load_pretrained_towers(params, shardings, *, config):
  """Sharded ``params`` with the ``model.speech_init`` / ``model.text_init`` towers put in place.

  Args:
    params: the freshly initialised parameters (global arrays).
    shardings: their NamedShardings (the result is placed the same way).
    config: the run's config.

  Returns:
    ``params`` unchanged when no init is configured, else the parameters with the loaded towers.
    ``functools.partial(load_pretrained_towers, config=config)`` is the ``load_towers`` argument of
    ``erclap.state.create_train_state``.
  """
  if not (config.model.speech_init or config.model.text_init):
    return params
  host = load_tower_weights(sharding.to_host(params), config)
  return jax.tree.map(sharding.put_global, host, shardings)
