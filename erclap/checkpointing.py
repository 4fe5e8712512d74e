"""Orbax checkpoints of the train state and the data iterator, with verified, self-healing resume.

Layout: ``workdir/checkpoints/<step>/{state,data_iter,meta}``. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save leaves no half checkpoint behind.

Restoring a step checks, in order:

* the tree: paths and shapes stored in the step's own ``state`` metadata against the state the config
  builds (paths compared as ``a/b/0/c``, see ``erclap.trees``). A difference is a
  ``CheckpointMismatchError``: the config changed, the files are fine, nothing is moved;
* the data order: a data iterator that can tell (``erclap.input_pipeline.TrainIterator.state_differences``)
  compares the saved iterator state with its own settings; a difference (another seed, global batch size,
  corpus) is a ``CheckpointMismatchError`` naming the settings, nothing is moved;
* the files: readable metadata, this process's data-iterator file, a clean Orbax read;
* the values: per-leaf checksums written at save time (in the ``meta`` item) are recomputed on the
  restored arrays, so flipped bytes are caught rather than trained on.

A damaged step is moved aside to ``checkpoints/<step>.corrupt-<UTC time>`` (never deleted) and the
previous step is used; the manager forgets the moved step, so the run saves that step number again later.
Retention: the last ``keep`` steps plus the best step by ``best_metric`` (in a program with members, each member's
best step: its metric is saved under ``member_metric(k, best_metric)``).

Nothing a step stores depends on where the workdir lives: the data iterator's state identifies its records by
content (``erclap.input_pipeline``), and paths inside the workdir in the metadata (the run's config, e.g. a
two-stage run's ``<workdir>/stage1``) are stored as ``${workdir}/...`` and read back under the workdir they
are read from (``portable_paths`` / ``local_paths``), so a copied or moved workdir resumes.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm

from erclap import progress, trees
from erclap.schema import METRIC_RENAMES

CHECKPOINT_DIR = "checkpoints"
CORRUPT_MARK = ".corrupt-"
INTEGRITY_KEY = "state_checksums"  # reserved key of the ``meta`` item; restore hands ``meta`` back without it
CHECKSUM_ALGORITHM = "u32-fmix-sum-x2"
# Two independent 32-bit sums per leaf: a damaged leaf goes unnoticed with probability about 2**-64.
CHECKSUM_SEEDS = (0x243F6A88, 0x85A308D3)
WORKDIR_MARK = "${workdir}"  # stands for the workdir in the paths a step's metadata stores


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree or shapes do not match what the current config builds."""


class CheckpointDamagedError(RuntimeError):
  """A checkpoint step cannot be restored as written: unreadable files, missing parts, wrong values.

  ``certain`` is True when the files themselves show the damage (missing metadata or data-iterator file,
  checksum mismatch); False for a failed read, which could also come from the environment.
  """

  def __init__(self, message: str, *, certain: bool = True):
    super().__init__(message)
    self.certain = certain


# ``config.checkpoint.best_mode``: keep the checkpoint whose ``best_metric`` is the largest or the smallest.
BEST_MODES = ("max", "min")


def workdir_of(manager: ocp.CheckpointManager) -> str:
  """The workdir whose ``checkpoints/`` the manager keeps."""
  return os.path.dirname(str(manager.directory).rstrip("/"))


def portable_paths(value, workdir: str):
  """``value`` (a str, or dicts / lists of them) with every path inside ``workdir`` written ``${workdir}/...``."""
  if isinstance(value, dict):
    return {k: portable_paths(v, workdir) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return type(value)(portable_paths(v, workdir) for v in value)
  if isinstance(value, str) and workdir:
    if value == workdir:
      return WORKDIR_MARK
    if value.startswith(workdir.rstrip("/") + "/"):
      return WORKDIR_MARK + value[len(workdir.rstrip("/")):]
  return value


def local_paths(value, workdir: str):
  """The inverse of ``portable_paths``: ``${workdir}`` read as ``workdir`` (the one the value was read from)."""
  if isinstance(value, dict):
    return {k: local_paths(v, workdir) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return type(value)(local_paths(v, workdir) for v in value)
  if isinstance(value, str) and (value == WORKDIR_MARK or value.startswith(WORKDIR_MARK + "/")):
    return workdir.rstrip("/") + value[len(WORKDIR_MARK):]
  return value


def _meta_paths(meta: dict, convert, workdir: str) -> dict:
  """``convert`` (``portable_paths`` / ``local_paths``) applied to ``meta``, and inside its JSON ``config``."""
  meta = convert(meta, workdir)
  if isinstance(meta.get("config"), str):
    try:
      config = json.loads(meta["config"])
    except ValueError:
      return meta
    meta["config"] = json.dumps(convert(config, workdir))
  return meta


def checkpoint_dir(workdir: str) -> str:
  if "://" not in workdir:  # Orbax's OCDBT store rejects relative local paths
    workdir = os.path.abspath(workdir)
  return os.path.join(workdir, CHECKPOINT_DIR)


def member_metric(k: int, metric: str) -> str:
  """The name member ``k``'s ``metric`` is saved under with a checkpoint of a program with members."""
  return f"member_{int(k)}/{metric}"


@functools.cache
def _plain_transfers_on_cpu() -> None:
  """On CPU, saves copy each array to the host once, not one slice per replica.

  Orbax's replica-parallel saving splits every replicated array among its replicas, each copying its slice to the
  host: on an accelerator it spreads the transfers; on CPU, where the devices are host memory, it only adds one
  small compiled slice per array and device (176 for the tiny test model on 8 devices: a first save of 5.8 s
  against 0.9 s, later ones 0.8-1.1 s against 0.5 s). What is written is the same."""
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def make_manager(workdir: str, ckpt_config, *, with_data_iter: bool = True, read_only: bool = False,
                 members: int = 0) -> ocp.CheckpointManager:
  """A CheckpointManager for ``workdir/checkpoints`` following ``config.checkpoint``; ``members``: K of a program
  with members (each member's best step is kept)."""
  _plain_transfers_on_cpu()
  policies = [ocm.LatestN(n=ckpt_config.keep)]
  if ckpt_config.best_metric:
    worst = math.inf if ckpt_config.best_mode == "min" else -math.inf
    names = [member_metric(k, ckpt_config.best_metric) for k in range(members)] or [ckpt_config.best_metric]
    for metric in names:
      # Metrics saved under earlier names count under today's; a step that lacks the metric never wins.
      get_metric = lambda m, metric=metric: {METRIC_RENAMES.get(k, k): v for k, v in m.items()}.get(metric, worst)
      policies.append(ocm.BestN(get_metric_fn=get_metric, reverse=ckpt_config.best_mode == "min",
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
  """Saves (asynchronously when configured) the state, the data iterator position and metadata.

  The state's checksums are computed on device from the very arrays handed to Orbax and stored in
  ``meta`` under ``INTEGRITY_KEY``; restore verifies them.

  Returns:
    Whether a checkpoint was written (Orbax's answer).
  """
  meta = _meta_paths(dict(meta or {}), portable_paths, workdir_of(manager))
  meta[INTEGRITY_KEY] = dict(algorithm=CHECKSUM_ALGORITHM, leaves=state_checksums(state))
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  if data_iter is not None:
    items["data_iter"] = grain_ckpt.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


# --------------------------------------------------------------------------- checksums


def _fmix32(h):
  """MurmurHash3's finaliser: a bijection of uint32 that spreads every input bit over the whole word."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _as_words(x):
  """A leaf's bits as uint32 words, elementwise (no reshape, so a sharded leaf stays sharded)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
  size = np.dtype(x.dtype).itemsize
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
  if size in (4, 8):  # 8-byte leaves gain a trailing axis of two words
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  raise TypeError(f"no checksum for dtype {x.dtype}")


def _leaf_checksum(x):
  """uint32[2]: sums of fmix(word ^ fmix(position + seed)). Wrapping integer sums are exact and
  independent of sharding and reduction order; the position term catches words moved within a leaf."""
  words = _as_words(jnp.asarray(x))
  position = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride % 2**32)
    stride *= words.shape[axis]
  return jnp.stack([jnp.sum(_fmix32(words ^ _fmix32(position + jnp.uint32(seed))), dtype=jnp.uint32)
                    for seed in CHECKSUM_SEEDS])


# One small program per leaf signature (shape, dtype, sharding), not one over the whole tree: a model's leaves share a
# few dozen signatures, so the programs are reused across leaves, states of other structure (members, frozen parts)
# and runs in one process, where a whole-tree program is traced and compiled anew for every structure (measured on
# the tiny test model, 328 leaves: first call 1.5 s against 4.6 s; later calls, waited for leaf by leaf on CPU,
# 0.16 s against 0.04-0.11 s).
_leaf_checksum_jit = jax.jit(_leaf_checksum)


def state_checksums(state) -> dict[str, dict[str, str]]:
  """{path: {"dtype", "sum"}} of every leaf of ``state``, computed on device under jit.

  Args:
    state: a pytree of arrays (sharded or not, single- or multi-host; PRNG keys by their key data).

  Returns:
    Per leaf path (``a/b/0/c``) its dtype and a 16-hex-digit checksum of its bytes.
  """
  paths_leaves = jax.tree_util.tree_leaves_with_path(state)
  if not paths_leaves:
    return {}
  # On CPU one program at a time: XLA's CPU collectives deadlock (a rendezvous timeout that aborts the process) when
  # several programs with all-reduces over sharded leaves are in flight together.
  one_at_a_time = jax.default_backend() == "cpu"
  sums = []
  for _, leaf in paths_leaves:
    sums.append(_leaf_checksum_jit(leaf))
    if one_at_a_time:
      sums[-1].block_until_ready()
  sums = np.asarray(jax.device_get(sums))
  return {trees.path_str(path): dict(dtype=_dtype_name(leaf), sum=f"{int(a):08x}{int(b):08x}")
          for (path, leaf), (a, b) in zip(paths_leaves, sums, strict=True)}


def _dtype_name(leaf) -> str:
  dtype = getattr(leaf, "dtype", None)
  return str(jnp.asarray(leaf).dtype if dtype is None else dtype)


def _verify_checksums(state, meta: dict, where: str) -> None:
  """Compares the checksums stored with the step against the restored arrays (pops them from ``meta``)."""
  record = meta.pop(INTEGRITY_KEY, None)
  if not record:
    logging.warning("%s was written without checksums (an older checkpoint): its values are not verified.",
                    where)
    return
  if record.get("algorithm") != CHECKSUM_ALGORITHM:
    logging.warning("%s has checksums of an unknown kind %r: its values are not verified.", where,
                    record.get("algorithm"))
    return
  want, have = record["leaves"], state_checksums(state)
  # A leaf restored into another dtype (a cast the config asked for) has other bytes by design.
  bad = sorted(p for p in want if p in have and have[p]["dtype"] == want[p]["dtype"]
               and have[p]["sum"] != want[p]["sum"])
  if bad:
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    raise CheckpointDamagedError(f"{where} failed its integrity check: the values of {shown} differ from "
                                 f"the checksums written at save time")


# --------------------------------------------------------------------------- restore


def restore_latest(manager: ocp.CheckpointManager, abstract_state, *, data_iter=None,
                   move_damaged: bool | None = None) -> tuple[int, Any, dict] | None:
  """Restores the newest intact checkpoint; returns (step, state, meta) or None if there is none.

  Damaged steps are skipped with a warning and moved aside to ``<step>.corrupt-<UTC time>`` once an older
  step restores (or, when none does, if the damage shows in the files themselves); a failed read with
  no intact step left is an error and moves nothing, since the cause may be the environment.

  Args:
    manager: from ``make_manager``.
    abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings (the restored arrays land sharded
      like the freshly initialised state).
    data_iter: a checkpointable grain iterator, set to the restored step's position (left as it was when
      nothing is restored).
    move_damaged: move damaged steps aside (default: unless the manager is read-only, where a reader must
      not change a workdir that a training run may own; such steps are only skipped).

  Returns:
    (step, state, meta) of the restored step, every process agreeing on it; None without checkpoints.

  Raises:
    CheckpointMismatchError: the config builds another tree than the checkpoint holds.
    RuntimeError: no step could be read and at least one failure may not lie in the files.
  """
  if move_damaged is None:
    move_damaged = not _is_read_only(manager)
  steps = sorted(manager.all_steps(), reverse=True)
  initial_iter_state = data_iter.get_state() if data_iter is not None else None
  failed: list[tuple[int, CheckpointDamagedError]] = []
  for step in steps:
    try:
      result = restore_step(manager, step, abstract_state, data_iter=data_iter)
    except CheckpointDamagedError as error:  # raised on every process alike
      logging.warning("%s; trying the previous one.", error)
      failed.append((step, error))
      continue
    _set_aside(manager, failed, move_damaged, resumed_from=step)
    return result
  if data_iter is not None and failed:
    data_iter.set_state(initial_iter_state)
  if any(not e.certain for _, e in failed):
    reasons = "\n".join(f"  step {s}: {e}" for s, e in failed)
    raise RuntimeError(f"No readable checkpoint in {manager.directory} (tried steps {steps}); nothing was "
                       f"moved, since a read failure may come from the storage system rather than the files:\n"
                       f"{reasons}\nIf the files are damaged, move the step directories aside (e.g. "
                       f"mv {manager.directory}/{steps[0]} {manager.directory}/{steps[0]}{CORRUPT_MARK}manual) "
                       f"and rerun to start afresh.")
  _set_aside(manager, failed, move_damaged, resumed_from=None)
  return None


def restore_step(manager, step: int, abstract_state, *, data_iter=None) -> tuple[int, Any, dict]:
  """Restores and verifies one step; returns (step, state, meta) with ``meta`` as saved.

  Multi-host: every process raises or returns alike. The file checks are agreed on before Orbax's
  collective read starts, so no process enters it alone.

  Raises:
    CheckpointMismatchError: the stored tree differs from ``abstract_state`` (paths or shapes).
    CheckpointDamagedError: the step's files are damaged (see ``CheckpointDamagedError.certain``).
  """
  where = f"Checkpoint step {step} in {manager.directory}"
  error = None
  try:
    check_tree_matches(manager, step, abstract_state)
    if data_iter is not None:
      _check_data_iter_file(_step_path(manager, step) / "data_iter", where)
      _check_data_iter_state(_step_path(manager, step) / "data_iter", data_iter, where)
  except CheckpointDamagedError as e:
    error = e
  _raise_agreed(step, error)
  items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  if data_iter is not None:
    items["data_iter"] = grain_ckpt.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except CheckpointMismatchError:
    raise
  except Exception as e:  # whatever Orbax, TensorStore or grain raise on bad bytes
    error = CheckpointDamagedError(f"{where} is unreadable ({type(e).__name__}: {str(e)[:300]})", certain=False)
    error.__cause__ = e
  _raise_agreed(step, error)
  meta = _meta_paths(dict(restored["meta"] or {}), local_paths, workdir_of(manager))
  # Checksums are computed over the global arrays: every process reaches the same verdict.
  _verify_checksums(restored["state"], meta, where)
  step_value = getattr(restored["state"], "step", None)
  if step_value is not None and int(step_value) != step:
    raise CheckpointDamagedError(f"{where} holds state.step={int(step_value)}")
  return step, restored["state"], meta


def stored_leaf_shapes(manager, step: int) -> dict[str, tuple[int, ...]]:
  """{path: shape} of the state stored at ``step``, read from the step's own tree metadata.

  Raises:
    CheckpointDamagedError: the metadata is missing or unreadable.
  """
  path = _step_path(manager, step) / "state"
  handler = ocp.StandardCheckpointHandler()
  try:
    metadata = handler.metadata(path)
    tree = getattr(metadata, "tree", metadata)
    shapes = trees.leaf_shapes(tree)
  except Exception as e:  # missing or truncated _METADATA or data files: Orbax raises assorted types
    # Only a missing metadata file shows damage for sure; a failed read may come from the storage system.
    raise CheckpointDamagedError(f"Checkpoint step {step} in {manager.directory} is unreadable: its tree "
                                 f"metadata in {path} cannot be read ({type(e).__name__}: {str(e)[:300]})",
                                 certain=not _exists(path / "_METADATA")) from e
  finally:
    handler.close()
  if not shapes:
    raise CheckpointDamagedError(f"Checkpoint step {step} in {manager.directory} is unreadable: its tree "
                                 f"metadata in {path} lists no arrays")
  return shapes


def check_tree_matches(manager, step: int, abstract_state) -> None:
  """Compares the stored tree (paths and shapes) with what the config builds; one error lists all.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected or differently shaped leaf by path.
    CheckpointDamagedError: the stored metadata is unreadable.
  """
  have = stored_leaf_shapes(manager, step)
  want = {trees.path_str(p): _stored_shape(x) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  lines = trees.mismatch_lines(want, have)
  if lines:
    raise CheckpointMismatchError("\n".join(
        [f"Checkpoint {manager.directory}/{step} does not match the model the config builds:"] + lines))


def _stored_shape(leaf) -> tuple[int, ...]:
  """The shape Orbax stores for a leaf: PRNG keys as their key data (e.g. ``()`` -> ``(2,)``)."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)).shape)
  return tuple(leaf.shape)


def _check_data_iter_file(directory: epath.Path, where: str) -> None:
  """This process's grain state file must exist; one written by another process count is a mismatch."""
  index, count = jax.process_index(), jax.process_count()
  if (directory / f"process_{index}-of-{count}.json").exists():
    return
  others = sorted(p.name for p in directory.glob("process_*-of-*.json")) if directory.exists() else []
  if any(not name.endswith(f"-of-{count}.json") for name in others):
    raise CheckpointMismatchError(f"{where} holds the data iterator of another number of processes "
                                  f"({', '.join(others)}); this run has {count}")
  raise CheckpointDamagedError(f"{where} is unreadable: its data iterator file "
                               f"{directory}/process_{index}-of-{count}.json is missing")


def _check_data_iter_state(directory: epath.Path, data_iter, where: str) -> None:
  """Whether this process's saved iterator state fits ``data_iter`` (when the iterator can tell).

  Raises:
    CheckpointMismatchError: naming the settings that differ (the files are fine: nothing is moved).
  """
  differences = getattr(data_iter, "state_differences", None)
  if differences is None:
    return
  try:
    state = json.loads((directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json").read_text())
  except (OSError, ValueError):
    return  # unreadable: the restore itself reports it as damage
  lines = differences(state) if isinstance(state, dict) else []
  if lines:
    raise CheckpointMismatchError(
        f"{where} was written by a run with other data settings than this one (its files are intact; nothing was "
        f"moved):\n  - " + "\n  - ".join(lines) + "\nRerun with the checkpoint's settings to resume it, or start "
        "afresh in another --workdir.")


def _raise_agreed(step: int, error: CheckpointDamagedError | None) -> None:
  """Raises on every process if ``error`` happened on any (one verdict for all); None: all went well."""
  if jax.process_count() > 1:
    code = 0 if error is None else (1 if error.certain else 2)
    codes = np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)
    if codes.any() and error is None:
      failing = [int(i) for i in np.flatnonzero(codes)]
      error = CheckpointDamagedError(f"Checkpoint step {step} is damaged as seen from process(es) {failing}",
                                     certain=bool((codes[codes > 0] == 1).all()))
  if error is not None:
    raise error


def _set_aside(manager, failed: list[tuple[int, CheckpointDamagedError]], move: bool, *,
               resumed_from: int | None) -> None:
  """Moves damaged steps to ``<step>.corrupt-<UTC time>`` (process 0 renames, all wait) and reloads."""
  if not failed:
    return
  if not move:
    for _, error in failed:
      logging.warning("%s; left in place (read-only).", error)
    return
  for step, error in failed:
    if jax.process_index() == 0:
      src = _step_path(manager, step)
      stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
      dest = src.parent / f"{src.name}{CORRUPT_MARK}{stamp}"
      n = 1
      while dest.exists():
        dest, n = src.parent / f"{src.name}{CORRUPT_MARK}{stamp}-{n}", n + 1
      src.rename(dest)
      then = f"resuming from step {resumed_from}" if resumed_from is not None else "no intact step is left"
      message = f"{error}. Moved step {step} aside to {dest} (nothing deleted); {then}."
      logging.warning(message)
      progress.print_line(f"[checkpoint] {message}")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"erclap_checkpoints_set_aside_{failed[-1][0]}")
  manager.reload()


def _exists(path: epath.Path) -> bool:
  try:
    return path.exists()
  except Exception:  # an unreachable store: no evidence either way, so count the file as present
    return True


def _step_path(manager, step: int) -> epath.Path:
  return epath.Path(manager.directory) / str(step)


def _is_read_only(manager) -> bool:
  # CheckpointManager has no public accessor for its options.
  return bool(getattr(getattr(manager, "_options", None), "read_only", False))
