"""Orbax checkpoints of the train state and the data iterator, with robust resume.

Layout: ``workdir/checkpoints/<step>/{state,data_iter,meta}``. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save leaves no half checkpoint behind; a
checkpoint damaged afterwards (truncated files) is detected at restore time and the previous one is used
with a warning. Retention: the last ``keep`` steps plus the best step by ``best_metric``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm

CHECKPOINT_DIR = "checkpoints"


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree or shapes do not match what the current config builds."""


def checkpoint_dir(workdir: str) -> str:
  if "://" not in workdir:  # Orbax's OCDBT store rejects relative local paths
    workdir = os.path.abspath(workdir)
  return os.path.join(workdir, CHECKPOINT_DIR)


def make_manager(workdir: str, ckpt_config, *, with_data_iter: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager for ``workdir/checkpoints`` following ``config.checkpoint``."""
  policies = [ocm.LatestN(n=ckpt_config.keep)]
  if ckpt_config.best_metric:
    metric = ckpt_config.best_metric
    policies.append(ocm.BestN(get_metric_fn=lambda m: m[metric], reverse=ckpt_config.best_mode == "min",
                              n=1, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocm.AnyPreservationPolicy(policies),
      enable_async_checkpointing=ckpt_config.async_save,
      read_only=read_only,
      create=not read_only,
  )
  items = ("state", "meta") + (("data_iter",) if with_data_iter else ())
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=items, options=options)


def save(manager: ocp.CheckpointManager, step: int, state, *, data_iter=None, meta: dict | None = None,
         metrics: dict[str, float] | None = None, force: bool = False) -> bool:
  """Saves (asynchronously when configured) the state, the data iterator position and metadata."""
  import grain.checkpoint as grain_ckpt

  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
  if data_iter is not None:
    items["data_iter"] = grain_ckpt.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, *, data_iter=None
                   ) -> tuple[int, Any, dict] | None:
  """Restores the newest readable checkpoint; returns (step, state, meta) or None if there is none.

  ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (the restored arrays land
  sharded like the freshly initialised state). A checkpoint that fails to read (damaged files) is skipped
  with a warning and the previous one is tried; a tree/shape mismatch with the current config is an
  error (it would fail the same way on every step).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      return restore_step(manager, step, abstract_state, data_iter=data_iter)
    except CheckpointMismatchError:
      raise
    except Exception as e:
      logging.warning("Checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one.",
                      step, manager.directory, type(e).__name__, str(e)[:300])
  if steps:
    raise RuntimeError(f"No readable checkpoint in {manager.directory} (tried steps {steps}).")
  return None


def restore_step(manager, step, abstract_state, *, data_iter=None):
  import grain.checkpoint as grain_ckpt

  check_tree_matches(manager, step, abstract_state)
  items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  if data_iter is not None:
    items["data_iter"] = grain_ckpt.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  _check_finite_scalars(restored["state"], step, manager.directory)
  return step, restored["state"], dict(restored["meta"] or {})


def check_tree_matches(manager, step: int, abstract_state) -> None:
  """Compares the stored tree (paths and shapes) with what the config builds; one error lists all."""
  try:
    stored = manager.item_metadata(step)["state"]
  except Exception:
    return
  if stored is None:
    return
  want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  have = {jax.tree_util.keystr(p): tuple(getattr(x, "shape", ()) or ())
          for p, x in jax.tree_util.tree_leaves_with_path(stored)}
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
  if missing or unexpected or shapes:
    lines = [f"Checkpoint {manager.directory}/{step} does not match the model the config builds:"]
    lines += [f"  missing in checkpoint: {k} {want[k]}" for k in missing[:20]]
    lines += [f"  unexpected in checkpoint: {k} {have[k]}" for k in unexpected[:20]]
    lines += [f"  shape mismatch: {k}: checkpoint {have[k]} vs config {want[k]}" for k in shapes[:20]]
    raise CheckpointMismatchError("\n".join(lines))


def _check_finite_scalars(state, step, directory) -> None:
  step_value = getattr(state, "step", None)
  if step_value is not None and int(step_value) != step:
    raise ValueError(f"checkpoint {directory}/{step} holds state.step={int(step_value)}")
