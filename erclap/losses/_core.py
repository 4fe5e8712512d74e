"""Shared parts of the ERCLAP losses: input validation, the similarity of embeddings, and the row sharding.

Validation: shapes are checked at trace time; NaN labels and a non-positive temperature are checked when the
values are concrete (outside ``jit``). Under ``jit`` the caller (the data pipeline) validates the labels: a NaN
label there yields a NaN loss rather than an error.

Sharding: with a ``mesh``, a loss splits its anchor rows over ``sharding.batch_axes(mesh)`` with
``jax.shard_map`` (``_shard_rows``), all-gathers the candidates (``_gather``) and knows each local row's global
id (``_row_ids``); per-row partial sums are ``psum``'d, so the result equals the unsharded loss. ``_blocked``
processes anchor rows in rematerialised blocks (peak memory O(block * M)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from erclap import sharding, xla_workarounds

SIMILARITIES = ("cosine", "neg_l2")

# --------------------------------------------------------------------------- validation


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_embeddings(name: str, x, n: int | None = None) -> None:
  if jnp.ndim(x) != 2:
    raise ValueError(f"{name} must be 2-D (N, D), got shape {jnp.shape(x)}")
  if n is not None and x.shape[0] != n:
    raise ValueError(f"{name} has {x.shape[0]} rows, expected {n} (mismatched batch sizes)")


def _check_batch(name: str, n: int) -> None:
  if n < 2:
    raise ValueError(f"{name}: a contrastive loss needs at least 2 examples, got N={n}")


def _as_2d_labels(name: str, y, n: int):
  y = jnp.asarray(y)
  if y.ndim == 1:
    y = y[:, None]
  if y.ndim != 2 or y.shape[0] != n:
    raise ValueError(f"{name} must have shape ({n},) or ({n}, L), got {jnp.shape(y)}")
  if not jnp.issubdtype(y.dtype, jnp.floating):
    y = y.astype(jnp.float32)
  if _is_concrete(y) and bool(np.isnan(np.asarray(y, dtype=np.float32)).any()):
    raise ValueError(f"{name} contains NaN")
  return y.astype(jnp.float32)


def _check_temperature(temperature) -> None:
  if jnp.ndim(temperature) != 0:
    raise ValueError(f"temperature must be a scalar, got shape {jnp.shape(temperature)}")
  if _is_concrete(temperature):
    t = float(temperature)
    if not (t > 0.0 and math.isfinite(t)):
      raise ValueError(f"temperature must be a finite value > 0, got {t}")


def _check_same_modality_weight(weight, joint: bool):
  """The joint form's weight lambda of the same-modality rows: a float (a static value, >= 0, 1 unless joint), or
  a float32 scalar array as given (a traced per-member value of a program with members, ``erclap.members``: its
  range was validated with the config, and the loss takes the weighted path for every value)."""
  if isinstance(weight, jax.Array):
    if jnp.ndim(weight) != 0:
      raise ValueError(f"same_modality_weight must be a scalar, got shape {jnp.shape(weight)}")
    return jnp.asarray(weight, jnp.float32)
  if jnp.ndim(weight) != 0:
    raise ValueError(f"same_modality_weight must be a Python number, got {weight!r}")
  lam = float(weight)
  if not (lam >= 0.0 and math.isfinite(lam)):
    raise ValueError(f"same_modality_weight must be a finite value >= 0, got {lam}")
  if lam != 1.0 and not joint:
    raise ValueError(f"same_modality_weight={lam} weighs the same-modality rows of the joint form: it needs "
                     f"joint=True (the two-direction form has no same-modality pairs)")
  return lam


def _is_weighted(lam) -> bool:
  """Whether the joint form weighs its same-modality rows: lambda != 1, or a traced value (any value)."""
  return isinstance(lam, jax.Array) or lam != 1.0


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# --------------------------------------------------------------------------- shared math


def _similarity(a, c, similarity: str):
  """(B, D), (M, D) -> (B, M) float32 similarities (cosine inputs must already be L2-normalised)."""
  dots = jnp.einsum("bd,md->bm", a, c, preferred_element_type=jnp.float32)
  if similarity == "cosine":
    return dots
  # neg_l2: -||a - c||; sqrt'(0) is infinite, so exact zeros get a zero (sub)gradient like torch.norm.
  sq = jnp.sum(a * a, -1)[:, None] + jnp.sum(c * c, -1)[None, :] - 2.0 * dots
  sq = jnp.maximum(sq, 0.0)
  pos = sq > 0
  return -jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _prepare(x, similarity: str):
  x = x.astype(jnp.float32)   # bf16 inputs: all accumulation in float32
  if similarity == "cosine":
    x = x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))
  return x


def _check_pair(speech, text):
  _check_embeddings("speech", speech)
  _check_embeddings("text", text, speech.shape[0])
  if speech.shape[1] != text.shape[1]:
    raise ValueError(f"speech {speech.shape} and text {text.shape} differ in embedding size")
  _check_batch("speech", speech.shape[0])


# --------------------------------------------------------------------------- rows: sharding, joint set, blocks


def _mesh_axes(mesh: Mesh | None, n: int):
  if mesh is None:
    return ()
  axes = sharding.batch_axes(mesh)
  p = sharding.batch_size_divisor(mesh)
  if n % p:
    raise ValueError(f"batch size {n} is not divisible by the {p} batch shards of the mesh {dict(mesh.shape)}")
  return axes


def _gather(x, axes):
  return lax.all_gather(x, axes, axis=0, tiled=True) if axes else x


def _row_ids(n_local: int, axes):
  base = lax.axis_index(axes) * n_local if axes else 0
  return base + jnp.arange(n_local)


def _shard_rows(mesh, axes, fn, row_args, rep_args=()):
  """fn(*row_args_local, *rep_args) -> tuple of partial sums; with batch axes, psum'd over them."""
  if not axes:
    return fn(*row_args, *rep_args)

  def local(*xs):
    return tuple(lax.psum(o, axes) for o in fn(*xs))

  specs = tuple(sharding.batch_spec(mesh, jnp.ndim(x)) for x in row_args) + tuple(PartitionSpec()
                                                                                  for _ in rep_args)
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(),
                       check_vma=xla_workarounds.shard_map_check_vma())(*row_args, *rep_args)


def _joint_ids(rows, n: int):
  """Ids in the joint 2N set (speech rows 0..N-1, text rows N..2N-1) of the anchors [speech rows; text rows]
  whose batch ids are ``rows`` (B,), and of their partners in the other modality: two (2B,) int arrays."""
  return jnp.concatenate([rows, rows + n]), jnp.concatenate([rows + n, rows])


def _row_masks(m: int, row_ids, row_valid, exclude_self: bool):
  """keep (B, M) bool or None, and row weights (B,) float32, for anchors with global ids ``row_ids``."""
  keep = (jnp.arange(m)[None, :] != row_ids[:, None]) if exclude_self else None
  return keep, row_valid.astype(jnp.float32)


def _blocked(fn: Callable, row_arrays: Sequence, row_block: int | None, n_rows: int):
  """sum_b fn(*block_b) over row blocks, each rematerialised; fn returns a tuple of scalars.

  ``row_arrays`` all have ``n_rows`` leading rows; the last block is padded with row 0 and flagged invalid.
  """
  valid = jnp.ones((n_rows,), bool)
  if not row_block or row_block >= n_rows:
    return fn(valid, *row_arrays)
  nb = -(-n_rows // row_block)
  pad = nb * row_block - n_rows

  def padded(x):
    if pad:
      x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])], axis=0)
    return x.reshape((nb, row_block) + x.shape[1:])

  xs = [padded(valid)] + [padded(x) for x in row_arrays]
  if pad:
    xs[0] = xs[0].at[-1, row_block - pad:].set(False)
  outs = lax.map(jax.checkpoint(lambda args: fn(*args)), tuple(xs))
  return tuple(jnp.sum(o) for o in outs)
