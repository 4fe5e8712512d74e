"""Losses of ERCLAP: the cross-modal Rank-N-Contrast loss and its baselines, plus the stage-1 SER losses.

Rank-N-Contrast (RNC, Zha et al. 2023) in the cross-modal form of EmotionRankCLAP: anchors ``a_i`` of one
modality, candidates ``c_j`` of the other, label distances ``d_ij = ||y_i - y_j||``, logits
``z_ij = sim(a_i, c_j) / tau``, and for every pair

    l(i, j) = -z_ij + log sum_{k : d_ik >= d_ij} exp(z_ik)        (ties are in the denominator)

averaged over all pairs. A naive implementation is O(N^3); here it is exact in O(N^2 log N):

* Row i's candidates are sorted by label distance once; the denominator of pair (i, j) is then a suffix
  sum of ``exp(z)`` starting at the first position of j's tie group. The ordering needs no gradient and,
  in the cross-modal case, serves both directions (both use the same labels, so ``d`` is symmetric).
* The sort is a one-operand sort of packed uint32 keys ``(quantised distance << b) | column`` (3-4x faster
  on XLA:CPU than a comparator sort carrying the index). Quantisation can merge distinct distances into one
  bucket; a few odd-even transposition passes on the true distances restore the exact order inside the
  (small) buckets, and if that does not suffice an exact comparator sort is used instead (``lax.cond``).
* Suffix sums use ``cumsum(exp(z - rowmax))`` (40x cheaper than ``cumlogsumexp`` on XLA:CPU). This is exact
  in float32 while every row's logit range is <= ``_FAST_RANGE`` (e.g. cosine similarity with
  tau >= 1/30); otherwise an exact log-space associative scan is used (``lax.cond``), so the loss stays
  finite and exact for tiny temperatures.
* A custom VJP gives the gradient in closed form: d/dz_ik of sum_j log S_ij is
  ``exp(z_ik) * sum_{j : d_ij <= d_ik} 1 / S_ij``, a prefix sum in the same sorted order.
* ``row_block`` processes anchors in blocks with rematerialisation (peak memory O(block * M)); with a
  ``mesh`` the rows are split across the batch axes with ``jax.shard_map`` and the other modality is
  all-gathered.

Label validation: shapes are checked at trace time; NaN labels and a non-positive temperature are checked
when the values are concrete (outside ``jit``). Under ``jit`` the caller (the data pipeline) validates the
labels: a NaN label there yields a NaN loss rather than an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from erclap import sharding
from erclap.schema import LABEL_NAMES

_FAST_RANGE = 60.0       # max logit range of a row for the cumsum path (e^60 * 2^17 << float32 max)
_FIX_PASSES = 3          # odd-even transposition passes that always repair quantisation buckets
_MAX_FIX_PASSES = 32     # ... and at most this many before the exact comparator sort takes over
_BINNED_CLASS_OFFSET = 1 << 20  # supcon: binned class ids live above any categorical id

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


def _label_distance(ya, yc, label_distance: str):
  """(B, L), (M, L) -> (B, M) float32, monotone in the true distance (L2 is left squared: same order)."""
  diff = ya[:, None, :] - yc[None, :, :]
  if label_distance == "l1":
    return jnp.sum(jnp.abs(diff), axis=-1)
  return jnp.sum(diff * diff, axis=-1)


# --------------------------------------------------------------------------- the ordering (no gradient)


def _odd_even_pass(ds, perm, parity: int):
  """One compare-and-swap pass on pairs (p, p+1), p % 2 == parity, ordering ``ds`` ascending (B, M)."""
  b, m = ds.shape
  end = parity + 2 * ((m - parity) // 2)
  if end - parity < 2:
    return ds, perm
  x = ds[:, parity:end].reshape(b, -1, 2)
  i = perm[:, parity:end].reshape(b, -1, 2)
  swap = x[..., 0] > x[..., 1]
  x = jnp.stack([jnp.where(swap, x[..., 1], x[..., 0]), jnp.where(swap, x[..., 0], x[..., 1])], -1)
  i = jnp.stack([jnp.where(swap, i[..., 1], i[..., 0]), jnp.where(swap, i[..., 0], i[..., 1])], -1)
  ds = jnp.concatenate([ds[:, :parity], x.reshape(b, -1), ds[:, end:]], axis=1)
  perm = jnp.concatenate([perm[:, :parity], i.reshape(b, -1), perm[:, end:]], axis=1)
  return ds, perm


def _is_sorted(ds):
  return jnp.all(ds[:, 1:] >= ds[:, :-1])


def _sort_rows_by_distance(d):
  """Exact ascending order of every row of ``d`` (B, M) -> (sorted distances, column permutation)."""
  b, m = d.shape
  idx_bits = max(1, (m - 1).bit_length())
  if idx_bits > 24:
    raise ValueError(f"rows of {m} candidates are too many for the packed-key sort (at most 2^24)")
  levels = float(2 ** (32 - idx_bits) - 1)
  rowmax = jnp.max(d, axis=1, keepdims=True)
  scale = jnp.where(rowmax > 0, levels / jnp.where(rowmax > 0, rowmax, 1.0), 0.0)
  # Monotone non-decreasing fixed-point quantisation: equal distances share a bucket, distinct ones
  # rarely do (a bucket is rowmax / 2^(32 - idx_bits) wide); the index bits make every key unique.
  q = jnp.minimum(jnp.floor(d * scale), levels).astype(jnp.uint32)
  cols = jnp.arange(m, dtype=jnp.uint32)
  keys = jnp.sort((q << idx_bits) | cols[None, :], axis=1)
  perm = (keys & jnp.uint32((1 << idx_bits) - 1)).astype(jnp.int32)
  ds = jnp.take_along_axis(d, perm, axis=1, mode="promise_in_bounds")
  # Inside a bucket the order is by column, not distance: odd-even transposition passes repair it (buckets
  # are tiny: 3 passes order N=4096 continuous labels), more pairs of passes run while needed, and an exact
  # comparator sort takes over if a bucket is still out of order after _MAX_FIX_PASSES.
  for k in range(_FIX_PASSES):
    ds, perm = _odd_even_pass(ds, perm, k % 2)

  def more(state):
    ds, perm, k, _ = state
    ds, perm = _odd_even_pass(ds, perm, _FIX_PASSES % 2)
    ds, perm = _odd_even_pass(ds, perm, (_FIX_PASSES + 1) % 2)
    return ds, perm, k + 2, _is_sorted(ds)

  ds, perm, _, ok = lax.while_loop(lambda st: (st[2] < _MAX_FIX_PASSES) & ~st[3], more,
                                   (ds, perm, jnp.int32(_FIX_PASSES), _is_sorted(ds)))

  def exact(_):
    iota = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (b, m))
    return tuple(lax.sort((d, iota), dimension=1, num_keys=1))

  return lax.cond(ok, lambda _: (ds, perm), exact, None)


def _ordering(d):
  """Integer structure of the tie-aware ranking of each row of ``d`` (B, M), all int32 (B, M):

  perm:      column at each ascending-distance position;
  gstart:    per sorted position, the first position of its tie group;
  gend_orig: per original column, the last sorted position of its tie group.
  """
  d = lax.stop_gradient(d)
  ds, perm = _sort_rows_by_distance(d)
  b, m = d.shape
  pos = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (b, m))
  first = jnp.concatenate([jnp.ones((b, 1), bool), ds[:, 1:] != ds[:, :-1]], axis=1)
  last = jnp.concatenate([ds[:, 1:] != ds[:, :-1], jnp.ones((b, 1), bool)], axis=1)
  gstart = lax.cummax(jnp.where(first, pos, 0), axis=1)
  gend = lax.cummin(jnp.where(last, pos, m), axis=1, reverse=True)
  rows = jnp.arange(b)[:, None]
  # Scatter in float32 (exact below 2^24, and faster than an int32 scatter on XLA:CPU).
  gend_orig = jnp.zeros((b, m), jnp.float32).at[rows, perm].set(
      gend.astype(jnp.float32), unique_indices=True, mode="promise_in_bounds").astype(jnp.int32)
  return perm, gstart, gend_orig


# --------------------------------------------------------------------------- log-denominators (custom VJP)


def _lse_scan(x, reverse: bool):
  """Exact cumulative logsumexp along axis 1 via an associative scan over (max, scaled sum) pairs."""
  def combine(p, q):
    m = jnp.maximum(p[0], q[0])
    return m, p[1] * jnp.exp(p[0] - m) + q[1] * jnp.exp(q[0] - m)
  m, s = lax.associative_scan(combine, (x, jnp.ones_like(x)), axis=1, reverse=reverse)
  return m + jnp.log(s)


def _take(x, idx):
  return jnp.take_along_axis(x, idx, axis=1, mode="promise_in_bounds")


def _masked(x, keep, fill):
  return x if keep is None else jnp.where(keep, x, fill)


def _row_shift(z, keep):
  return jnp.max(_masked(z, keep, -jnp.inf), axis=1, keepdims=True)


def _fast_ok(z, keep):
  lo = jnp.min(_masked(z, keep, jnp.inf), axis=1)
  hi = jnp.max(_masked(z, keep, -jnp.inf), axis=1)
  return jnp.all(hi - lo <= _FAST_RANGE)


def _log_denominators(z, keep, perm, gstart, fast):
  """LS (B, M) in sorted order: log sum_{k kept: d_ik >= d_i,perm[p]} exp(z_ik) (ties included)."""
  zs = _take(z, perm)
  ks = None if keep is None else _take(keep, perm)

  def fast_path(_):
    m = _row_shift(z, keep)
    e = _masked(jnp.exp(zs - m), ks, 0.0)
    r = lax.cumsum(e, axis=1, reverse=True)
    return m + jnp.log(_take(r, gstart))

  def exact_path(_):
    floor = jnp.min(_masked(z, keep, jnp.inf), axis=1, keepdims=True) - 1e4  # exp(floor - max) == 0
    r = _lse_scan(_masked(zs, ks, floor), reverse=True)
    return _take(r, gstart)

  return lax.cond(fast, fast_path, exact_path, None)


def _sorted_weights(keep, row_w, perm):
  ws = row_w[:, None]
  return ws if keep is None else ws * _take(keep, perm)


@jax.custom_vjp
def _sum_log_denominators(z, keep, row_w, perm, gstart, gend_orig):
  """sum_{i, j kept} row_w_i * log sum_{k kept: d_ik >= d_ij} exp(z_ik) for one block of anchor rows.

  z (B, M) float32 logits; keep (B, M) bool or None (= all): pairs and denominator terms that exist;
  row_w (B,) float32 (0 for padding rows); perm/gstart/gend_orig (B, M) int32 from ``_ordering``.
  """
  return _sum_log_denominators_fwd(z, keep, row_w, perm, gstart, gend_orig)[0]


def _sum_log_denominators_fwd(z, keep, row_w, perm, gstart, gend_orig):
  fast = _fast_ok(z, keep)
  ls = _log_denominators(z, keep, perm, gstart, fast)
  ws = _sorted_weights(keep, row_w, perm)
  total = jnp.sum(jnp.where(ws > 0, ws * ls, 0.0))
  return total, (z, keep, row_w, ls, perm, gend_orig, fast)


def _sum_log_denominators_bwd(res, ct):
  z, keep, row_w, ls, perm, gend_orig, fast = res
  ws = _sorted_weights(keep, row_w, perm)

  # d total / d z_ik = exp(z_ik) * sum_{p <= last position of k's tie group} ws_p * exp(-LS_p)
  def fast_path(_):
    m = _row_shift(z, keep)
    # LS_p >= z_p >= m - _FAST_RANGE, so exp(m - LS_p) <= e^60: no overflow, and exp(z - m) >= e^-60.
    c = lax.cumsum(jnp.where(ws > 0, ws * jnp.exp(m - ls), 0.0), axis=1)
    return _masked(jnp.exp(z - m) * _take(c, gend_orig), keep, 0.0)

  def exact_path(_):
    neg = jnp.where(ws > 0, jnp.log(jnp.where(ws > 0, ws, 1.0)) - ls, -1e30)
    p = _lse_scan(neg, reverse=False)
    return _masked(jnp.exp(z + _take(p, gend_orig)), keep, 0.0)

  gz = lax.cond(fast, fast_path, exact_path, None)
  return ct * gz, None, None, None, None, None


_sum_log_denominators.defvjp(_sum_log_denominators_fwd, _sum_log_denominators_bwd)


def _rnc_block_sum(z, keep, row_w, order):
  """sum over the block's weighted pairs of l(i, j) = -z_ij + LS_ij."""
  perm, gstart, gend_orig = order
  linear = jnp.sum(row_w * jnp.sum(_masked(z, keep, 0.0), axis=1))
  return _sum_log_denominators(z, keep, row_w, perm, gstart, gend_orig) - linear


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


# --------------------------------------------------------------------------- RNC (public)


def rnc_loss(anchors, candidates, anchor_labels, candidate_labels, *, temperature, similarity: str = "cosine",
             label_distance: str = "l1", exclude_self: bool = False, row_block: int | None = None):
  """Rank-N-Contrast loss of anchors (N, D) against candidates (M, D), labels (N,)/(N, L) and (M,)/(M, L).

  l(i, j) = -z_ij + log sum_{k : d_ik >= d_ij} exp(z_ik), z = sim / temperature, averaged over pairs.
  ``exclude_self`` (same-modal RNC, needs N == M): pairs and denominator terms with k == i are excluded.
  ``row_block``: anchors per rematerialised block (None/0 = all at once). Returns a float32 scalar.
  """
  _check_choice("similarity", similarity, ("cosine", "neg_l2"))
  _check_choice("label_distance", label_distance, ("l1", "l2"))
  _check_embeddings("anchors", anchors)
  n = anchors.shape[0]
  _check_embeddings("candidates", candidates)
  m = candidates.shape[0]
  if candidates.shape[1] != anchors.shape[1]:
    raise ValueError(f"anchors {anchors.shape} and candidates {candidates.shape} differ in embedding size")
  _check_batch("anchors", n)
  _check_batch("candidates", m)
  if exclude_self and n != m:
    raise ValueError(f"exclude_self needs as many anchors as candidates, got N={n}, M={m}")
  ya = _as_2d_labels("anchor_labels", anchor_labels, n)
  yc = _as_2d_labels("candidate_labels", candidate_labels, m)
  if ya.shape[1] != yc.shape[1]:
    raise ValueError(f"anchor_labels {ya.shape} and candidate_labels {yc.shape} have different label counts")
  _check_temperature(temperature)
  a, c = _prepare(anchors, similarity), _prepare(candidates, similarity)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)

  def block(valid, rows, a_blk, y_blk):
    keep, w = _row_masks(m, rows, valid, exclude_self)
    order = _ordering(_label_distance(y_blk, yc, label_distance))
    z = _similarity(a_blk, c, similarity) * inv_t
    return (_rnc_block_sum(z, keep, w, order),)

  (total,) = _blocked(block, (jnp.arange(n), a, ya), row_block, n)
  return total / float(n * (m - 1) if exclude_self else n * m)  # float: N^2 overflows int32 past 46,340


def _cross_modal_sums(s_loc, t_loc, s_all, t_all, y_loc, y_all, row_ids, *, inv_t, similarity, label_distance,
                      exclude_self, row_block, full):
  """Summed pair losses of both directions for the local anchor rows; ``full``: local rows are all rows."""
  m = s_all.shape[0]
  full = full and not (row_block and row_block < s_loc.shape[0])   # z_ts == z_st.T only for all rows

  def block(valid, rows, s_blk, t_blk, y_blk):
    keep, w = _row_masks(m, rows, valid, exclude_self)
    order = _ordering(_label_distance(y_blk, y_all, label_distance))   # shared by both directions
    z_st = _similarity(s_blk, t_all, similarity) * inv_t
    z_ts = z_st.T if full else _similarity(t_blk, s_all, similarity) * inv_t
    return _rnc_block_sum(z_st, keep, w, order), _rnc_block_sum(z_ts, keep, w, order)

  return _blocked(block, (row_ids, s_loc, t_loc, y_loc), row_block, s_loc.shape[0])


def _check_pair(speech, text):
  _check_embeddings("speech", speech)
  _check_embeddings("text", text, speech.shape[0])
  if speech.shape[1] != text.shape[1]:
    raise ValueError(f"speech {speech.shape} and text {text.shape} differ in embedding size")
  _check_batch("speech", speech.shape[0])


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


def cross_modal_rnc_loss(speech, text, labels, *, temperature, mesh: Mesh | None = None,
                         similarity: str = "cosine", label_distance: str = "l1", exclude_self: bool = False,
                         row_block: int | None = None):
  """Cross-modal RNC: mean of the speech->text and text->speech losses. speech/text (N, D), labels (N,)/(N, L).

  With ``mesh``, the rows are split over ``sharding.batch_axes(mesh)`` with ``jax.shard_map``: each shard
  ranks its own anchors against the all-gathered other modality; the result equals the unsharded loss.
  """
  _check_choice("similarity", similarity, ("cosine", "neg_l2"))
  _check_choice("label_distance", label_distance, ("l1", "l2"))
  _check_pair(speech, text)
  n = speech.shape[0]
  y = _as_2d_labels("labels", labels, n)
  _check_temperature(temperature)
  axes = _mesh_axes(mesh, n)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  s, t = _prepare(speech, similarity), _prepare(text, similarity)
  kw = dict(similarity=similarity, label_distance=label_distance, exclude_self=exclude_self,
            row_block=row_block)

  def local(s_loc, t_loc, y_loc, inv_t):
    s_all, t_all, y_all = _gather(s_loc, axes), _gather(t_loc, axes), _gather(y_loc, axes)
    rows = _row_ids(s_loc.shape[0], axes)
    return _cross_modal_sums(s_loc, t_loc, s_all, t_all, y_loc, y_all, rows, inv_t=inv_t,
                             full=not axes, **kw)

  st, ts = _shard_rows(mesh, axes, local, (s, t, y), (inv_t,))
  count = n * (n - 1) if exclude_self else n * n
  return 0.5 * (st + ts) / float(count)  # float: N^2 overflows int32 past N = 46,340


def _shard_rows(mesh, axes, fn, row_args, rep_args=()):
  """fn(*row_args_local, *rep_args) -> tuple of partial sums; with batch axes, psum'd over them."""
  if not axes:
    return fn(*row_args, *rep_args)

  def local(*xs):
    return tuple(lax.psum(o, axes) for o in fn(*xs))

  specs = tuple(sharding.batch_spec(mesh, jnp.ndim(x)) for x in row_args) + tuple(PartitionSpec()
                                                                                  for _ in rep_args)
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(), check_vma=True)(
      *row_args, *rep_args)


# --------------------------------------------------------------------------- InfoNCE (SCE) and SupCon


def infonce_loss(speech, text, *, temperature, mesh: Mesh | None = None):
  """Symmetric CLAP InfoNCE (SCE): mean of the speech->text and text->speech cross-entropies of the
  paired item among all N candidates, cosine logits / temperature. speech/text (N, D) -> scalar."""
  _check_pair(speech, text)
  n = speech.shape[0]
  _check_temperature(temperature)
  axes = _mesh_axes(mesh, n)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  s, t = _prepare(speech, "cosine"), _prepare(text, "cosine")

  def local(s_loc, t_loc, inv_t):
    s_all, t_all = _gather(s_loc, axes), _gather(t_loc, axes)
    rows = _row_ids(s_loc.shape[0], axes)

    def direction(a, c):
      z = _similarity(a, c, "cosine") * inv_t
      pos = jnp.take_along_axis(z, rows[:, None], axis=1)[:, 0]
      return jnp.sum(jax.nn.logsumexp(z, axis=1) - pos)

    return direction(s_loc, t_all), direction(t_loc, s_all)

  st, ts = _shard_rows(mesh, axes, local, (s, t), (inv_t,))
  return 0.5 * (st + ts) / n


def _check_class_ids(name: str, ids, n: int):
  ids = jnp.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},), got {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{name} must be integers, got {ids.dtype}")
  if _is_concrete(ids) and bool((np.asarray(ids) < 0).any()):
    raise ValueError(f"{name} must be >= 0 (use classes_from_labels for examples without a class)")
  return ids.astype(jnp.int32)


def supcon_loss(speech, text, class_ids, *, temperature, mesh: Mesh | None = None):
  """Cross-modal supervised contrastive loss (Khosla et al. 2020), both directions averaged.

  For anchor i of one modality, the positives are the candidates j of the other modality with
  class_ids[j] == class_ids[i] (always including its own pair); its loss is the mean over positives of
  -log softmax_j(z_i), the denominator running over all N candidates. Mean over anchors.
  speech/text (N, D), class_ids (N,) int >= 0 -> scalar.
  """
  _check_pair(speech, text)
  n = speech.shape[0]
  ids = _check_class_ids("class_ids", class_ids, n)
  _check_temperature(temperature)
  axes = _mesh_axes(mesh, n)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  s, t = _prepare(speech, "cosine"), _prepare(text, "cosine")

  def local(s_loc, t_loc, id_loc, inv_t):
    s_all, t_all, id_all = _gather(s_loc, axes), _gather(t_loc, axes), _gather(id_loc, axes)
    pos = (id_loc[:, None] == id_all[None, :]).astype(jnp.float32)
    n_pos = jnp.sum(pos, axis=1)

    def direction(a, c):
      z = _similarity(a, c, "cosine") * inv_t
      logp = z - jax.nn.logsumexp(z, axis=1, keepdims=True)
      return jnp.sum(-jnp.sum(pos * logp, axis=1) / n_pos)

    return direction(s_loc, t_all), direction(t_loc, s_all)

  st, ts = _shard_rows(mesh, axes, local, (s, t, ids), (inv_t,))
  return 0.5 * (st + ts) / n


def classes_from_labels(labels, bins: int, low: float = 1.0, high: float = 7.0, columns: Sequence[int] = (0, 1)):
  """Class ids (N,) int32 from a grid of ``bins`` equal bins per label column over [low, high].

  labels (N,) or (N, L); ``columns`` (default arousal, valence) picks the binned columns (those present).
  Values outside [low, high] fall into the edge bins. Id = row-major index in the bins^len(columns) grid.
  """
  if int(bins) < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  if not high > low:
    raise ValueError(f"high ({high}) must be greater than low ({low})")
  y = jnp.asarray(labels)
  if y.ndim == 1:
    y = y[:, None]
  if y.ndim != 2:
    raise ValueError(f"labels must have shape (N,) or (N, L), got {jnp.shape(labels)}")
  cols = [c for c in columns if c < y.shape[1]]
  if not cols:
    raise ValueError(f"labels with {y.shape[1]} columns have none of columns {tuple(columns)}")
  ids = jnp.zeros((y.shape[0],), jnp.int32)
  for col in cols:
    b = jnp.floor((y[:, col].astype(jnp.float32) - low) / (high - low) * bins)
    ids = ids * bins + jnp.clip(b, 0, bins - 1).astype(jnp.int32)
  return ids


# --------------------------------------------------------------------------- stage 1 (SER) losses


def ccc(x, y, axis: int = 0):
  """Concordance correlation coefficient 2 cov / (var_x + var_y + (mean_x - mean_y)^2) (population
  moments) along ``axis``; x and y of the same shape."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if x.shape != y.shape:
    raise ValueError(f"ccc: x {x.shape} and y {y.shape} must have the same shape")
  mx, my = jnp.mean(x, axis), jnp.mean(y, axis)
  xc, yc = x - jnp.expand_dims(mx, axis), y - jnp.expand_dims(my, axis)
  cov = jnp.mean(xc * yc, axis)
  denom = jnp.mean(xc * xc, axis) + jnp.mean(yc * yc, axis) + (mx - my) ** 2
  return 2.0 * cov / jnp.maximum(denom, 1e-12)


def ccc_loss(pred, target):
  """Mean over attributes of 1 - CCC (MSP-Podcast challenge convention). pred/target (N, A) or (N,)."""
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f"ccc_loss: pred {pred.shape} and target {target.shape} must have the same shape")
  if pred.ndim not in (1, 2) or pred.shape[0] < 2:
    raise ValueError(f"ccc_loss: pred must be (N,) or (N, A) with N >= 2, got {pred.shape}")
  return jnp.mean(1.0 - ccc(pred, target, axis=0))


def _as_attr_matrix(name: str, x, n: int | None = None):
  x = jnp.asarray(x)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2 or (n is not None and x.shape[0] != n):
    raise ValueError(f"{name} must have shape (N,) or (N, A) with N={n}, got {x.shape}")
  return x.astype(jnp.float32)


def pairwise_ranking_loss(scores, labels, *, margin: float = 0.0, scale: float = 1.0, mesh: Mesh | None = None):
  """RankNet loss over all ordered in-batch pairs, per attribute. scores/labels (N,) or (N, A) -> scalar.

  P(y_i > y_j) = sigmoid((f_i - f_j) / scale), cross-entropy against the label order; pairs with
  |y_i - y_j| <= margin are excluded (ties always). Per attribute the mean over its included pairs, then the
  mean over attributes (an attribute without included pairs contributes 0). With ``mesh`` the rows are split
  over the batch axes like the RNC loss.
  """
  f = _as_attr_matrix("scores", scores)
  n = f.shape[0]
  y = _as_attr_matrix("labels", labels, n)
  if y.shape != f.shape:
    raise ValueError(f"scores {f.shape} and labels {y.shape} must have the same shape")
  _check_batch("scores", n)
  if _is_concrete(y) and bool(np.isnan(np.asarray(y)).any()):
    raise ValueError("labels contains NaN")
  if float(margin) < 0:
    raise ValueError(f"margin must be >= 0, got {margin}")
  if not float(scale) > 0:
    raise ValueError(f"scale must be > 0, got {scale}")
  axes = _mesh_axes(mesh, n)

  def local(f_loc, y_loc):
    f_all, y_all = _gather(f_loc, axes), _gather(y_loc, axes)
    dy = y_loc[:, None, :] - y_all[None, :, :]                      # (n_loc, N, A)
    inc = jnp.abs(dy) > margin
    inc = inc & (dy != 0)
    sign = jnp.sign(dy)
    logits = (f_loc[:, None, :] - f_all[None, :, :]) / scale
    # -log sigmoid(sign * logit) = softplus(-sign * logit), stable for large |logit|
    pair = jnp.where(inc, jax.nn.softplus(-sign * logits), 0.0)
    return jnp.sum(pair, axis=(0, 1)), jnp.sum(inc, axis=(0, 1)).astype(jnp.float32)

  total, count = _shard_rows(mesh, axes, local, (f, y))
  return jnp.mean(jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0))


# --------------------------------------------------------------------------- dispatcher for the training loop


def _option(options, name, default):
  if options is None:
    return default
  if isinstance(options, Mapping):
    return options.get(name, default)
  return getattr(options, name, default)


def _label_columns(names) -> list[int]:
  names = (names,) if isinstance(names, str) else tuple(names)
  if not names:
    raise ValueError("loss_options.rank_labels must name at least one label column")
  bad = [x for x in names if x not in LABEL_NAMES]
  if bad:
    raise ValueError(f"loss_options.rank_labels: unknown columns {bad}; choose from {LABEL_NAMES}")
  return [LABEL_NAMES.index(x) for x in names]


def _batch_labels(batch) -> Any:
  if "labels" not in batch:
    raise ValueError("batch has no 'labels' (N, 3) entry (arousal, valence, dominance)")
  return batch["labels"]


def _clap_rnc(speech, text, batch, *, temperature, mesh=None, options=None):
  labels = _batch_labels(batch)
  cols = _label_columns(_option(options, "rank_labels", ("arousal", "valence")))
  if jnp.ndim(labels) != 2 or max(cols) >= labels.shape[1]:
    raise ValueError(f"batch['labels'] of shape {jnp.shape(labels)} lacks the columns {cols} of rank_labels")
  return cross_modal_rnc_loss(speech, text, labels[:, jnp.asarray(cols)], temperature=temperature, mesh=mesh,
                              similarity=_option(options, "similarity", "cosine"),
                              label_distance=_option(options, "label_distance", "l1"),
                              row_block=int(_option(options, "row_block", 0)) or None)


def _clap_infonce(speech, text, batch, *, temperature, mesh=None, options=None):
  del batch, options
  return infonce_loss(speech, text, temperature=temperature, mesh=mesh)


def _clap_supcon(speech, text, batch, *, temperature, mesh=None, options=None):
  binned = classes_from_labels(_batch_labels(batch), int(_option(options, "supcon_bins", 3)))
  ids = batch.get("class_id") if hasattr(batch, "get") else None
  if ids is None:
    ids = binned
  else:
    ids = jnp.asarray(ids).astype(jnp.int32)
    if ids.shape != binned.shape:
      raise ValueError(f"batch['class_id'] must have shape {binned.shape}, got {ids.shape}")
    # -1 = no categorical label: such examples use their binned class (ids kept apart from categorical ids)
    ids = jnp.where(ids >= 0, ids, _BINNED_CLASS_OFFSET + binned)
  return supcon_loss(speech, text, ids, temperature=temperature, mesh=mesh)


_CLAP_LOSSES = {"rnc": _clap_rnc, "infonce": _clap_infonce, "supcon": _clap_supcon}


def get_clap_loss(name: str) -> Callable[..., jax.Array]:
  """The cross-modal loss ``name`` in {"rnc", "infonce", "supcon"} as
  ``fn(speech, text, batch, *, temperature, mesh, options) -> scalar``; batch has "labels" (N, 3) and
  optionally "class_id" (N,) int32 (-1 = none); options is ``config.loss_options``."""
  if name not in _CLAP_LOSSES:
    raise ValueError(f"loss must be one of {tuple(_CLAP_LOSSES)}, got {name!r}")
  return _CLAP_LOSSES[name]
