"""Initialising towers from elsewhere: a Hugging Face model directory or an ERCLAP stage-1 (SER) workdir.

``config.model.speech_init`` / ``config.model.text_init`` may name
  * an ERCLAP workdir (it has ``checkpoints/``): its latest checkpoint's ``speech_tower`` (stage 1 trains
    exactly this tower) or ``text_tower`` is copied in;
  * a Hugging Face model directory (``config.json`` + safetensors): imported by ``erclap.hf_import``.
Shapes must match what the current config builds; otherwise one error lists every difference.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from erclap import checkpointing, hf_import, sharding, trees

TOWERS = (("speech_tower", "speech_init"), ("text_tower", "text_init"))


class TowerMismatchError(ValueError):
  """The weights to load do not fit the tower that the config builds."""


def is_erclap_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints"))


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


def _check_same_tree(name: str, source: str, want, have) -> None:
  """TowerMismatchError listing every missing, unexpected and differently shaped leaf of ``have``."""
  lines = trees.mismatch_lines(trees.leaf_shapes(want), trees.leaf_shapes(have), limit=15)
  if lines:
    raise TowerMismatchError("\n".join([f"{source}: its {name} does not match the {name} this config builds "
                                        f"(check config.model.size / *_arch against the checkpoint):", *lines]))


def load_tower_weights(params: dict, config) -> dict:
  """Returns ``params`` (host numpy tree) with the configured towers replaced by pre-trained weights."""
  params = dict(params)
  hf_model_config = config.model.copy_and_resolve_references()  # the inits left for the HF importer
  hf_needed = False
  for tower, key in TOWERS:
    path = config.model[key]
    if not path:
      continue
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.model.{key}={path!r} does not exist")
    if is_erclap_workdir(path):
      step, source_params = read_workdir_params(path)
      if tower not in source_params:
        raise TowerMismatchError(f"config.model.{key}={path!r}: checkpoint at step {step} has no {tower} "
                                 f"(it holds {sorted(source_params)})")
      _check_same_tree(tower, f"config.model.{key}={path!r} (step {step})", params[tower], source_params[tower])
      params[tower] = jax.tree.map(lambda new, old: np.asarray(new, dtype=np.asarray(old).dtype),
                                   source_params[tower], params[tower])
      with hf_model_config.unlocked():
        hf_model_config[key] = ""
    else:
      hf_needed = True
  if hf_needed:
    params = hf_import.init_from_pretrained(params, hf_model_config)
  return params


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
