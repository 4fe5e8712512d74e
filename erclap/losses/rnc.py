"""The Rank-N-Contrast loss: ``rnc_loss`` (one anchor set against one candidate set) and
``cross_modal_rnc_loss`` (speech <-> text, both directions, or the joint 2N form), with the ordering and the
log-denominators (custom VJP) they share.

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

The joint form (``cross_modal_rnc_loss(..., joint=True)``) is the single-set RNC of the original paper applied
to both modalities together: the 2N rows [speech; text] with labels [y; y] are anchors and candidates at once,
self excluded. Its candidates' labels are the batch labels twice over, so the ordering over N columns is
sorted once and doubled (``_doubled_ordering``) instead of sorting 2N columns. Its same-modality rows can carry a
weight lambda (``same_modality_weight``: pair weights W in the sum over pairs and inside the denominators,
log W added to the logits there), from 0 (the two-direction form) to 1 (the joint form).

The label distance can weigh its columns (``label_weights``), or the loss can be one RNC term per label column
(``per_label``: one ordering per column, the terms averaged with the weights); every term shares the logits.

Label validation: shapes are checked at trace time; NaN labels and a non-positive temperature are checked
when the values are concrete (outside ``jit``). Under ``jit`` the caller (the data pipeline) validates the
labels: a NaN label there yields a NaN loss rather than an error.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from erclap.losses._core import (
    SIMILARITIES,
    _as_2d_labels,
    _blocked,
    _check_batch,
    _check_choice,
    _check_embeddings,
    _check_pair,
    _check_same_modality_weight,
    _check_temperature,
    _gather,
    _is_weighted,
    _joint_ids,
    _mesh_axes,
    _prepare,
    _row_ids,
    _row_masks,
    _shard_rows,
    _similarity,
)

_FAST_RANGE = 60.0       # max logit range of a row for the cumsum path (e^60 * 2^17 << float32 max)
_FIX_PASSES = 3          # odd-even transposition passes that always repair quantisation buckets
_MAX_FIX_PASSES = 32     # ... and at most this many before the exact comparator sort takes over
_LABEL_DISTANCES = ("l1", "l2")

# --------------------------------------------------------------------------- label distances


def _label_distance(ya, yc, label_distance: str, weights=None):
  """(B, L), (M, L) -> (B, M) float32, monotone in the true distance (L2 is left squared: same order).

  ``weights`` (L,) >= 0 or None (all 1): sum_l w_l |ya_l - yc_l| (l1) or sum_l w_l (ya_l - yc_l)^2 (l2)."""
  diff = ya[:, None, :] - yc[None, :, :]
  per_label = jnp.abs(diff) if label_distance == "l1" else diff * diff
  if weights is not None:
    per_label = per_label * jnp.asarray(weights, jnp.float32)
  return jnp.sum(per_label, axis=-1)


def _rank_terms(num_labels: int, label_weights, per_label: bool) -> tuple[tuple[tuple[int, ...], tuple | None,
                                                                                     float], ...]:
  """The RNC terms of a loss as (label columns, their distance weights or None, the term's weight).

  One term over every label column with the weighted distance (default), or with ``per_label`` one term per
  column with a positive weight, the terms weighted by w_l / sum(w) (a weighted mean). ``label_weights`` may be a
  float32 (L,) array (a traced per-member value of a program with members, ``erclap.members``, validated with the
  config): then every column keeps its term, a weight of 0 giving it weight 0."""
  if isinstance(label_weights, jax.Array):
    if label_weights.shape != (num_labels,):
      raise ValueError(f"label_weights: shape {label_weights.shape} for {num_labels} label columns")
    w = label_weights.astype(jnp.float32)
    if not per_label:
      return ((tuple(range(num_labels)), w, 1.0),)
    return tuple(((col,), None, w[col] / jnp.sum(w)) for col in range(num_labels))
  weights = (1.0,) * num_labels if label_weights is None else tuple(float(w) for w in label_weights)
  if len(weights) != num_labels:
    raise ValueError(f"label_weights: {len(weights)} weights for {num_labels} label columns")
  if any(not (w >= 0 and math.isfinite(w)) for w in weights) or not any(w > 0 for w in weights):
    raise ValueError(f"label_weights: must be finite, >= 0 and not all 0, got {weights}")
  if not per_label:
    return ((tuple(range(num_labels)), None if label_weights is None else weights, 1.0),)
  total = sum(weights)
  return tuple(((col,), None, w / total) for col, w in enumerate(weights) if w > 0)


def _orderings(ya, yc, label_distance: str, terms):
  """One ``_ordering`` of ``ya`` (B, L) against ``yc`` (M, L) per RNC term (``_rank_terms``)."""
  def columns(y, cols):
    return y if len(cols) == y.shape[1] else y[:, list(cols)]
  return [_ordering(_label_distance(columns(ya, cols), columns(yc, cols), label_distance, weights))
          for cols, weights, _ in terms]


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


def _doubled_ordering(order):
  """The ordering against the candidates [c; c] (column M + k a copy of column k) from the ordering against c.

  Sorted position p becomes the adjacent positions 2p, 2p + 1 (columns perm_p and M + perm_p, equal distances),
  so a tie group [s, e] becomes [2s, 2e + 1]: exact, and no sort of 2M columns.
  """
  perm, gstart, gend_orig = order
  b, m = perm.shape
  perm2 = jnp.stack([perm, perm + m], axis=2).reshape(b, 2 * m)
  gstart2 = jnp.repeat(2 * gstart, 2, axis=1)
  gend2 = 2 * gend_orig + 1
  return perm2, gstart2, jnp.concatenate([gend2, gend2], axis=1)


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


def _mask_of(keep):
  """The pairs that exist: ``keep`` is None (all), a bool mask, or float pair weights (> 0 exist)."""
  return keep if keep is None or keep.dtype == jnp.bool_ else keep > 0


def _masked(x, keep, fill):
  return x if keep is None else jnp.where(_mask_of(keep), x, fill)


def _row_shift(z, keep):
  return jnp.max(_masked(z, keep, -jnp.inf), axis=1, keepdims=True)


def _fast_ok(z, keep):
  lo = jnp.min(_masked(z, keep, jnp.inf), axis=1)
  hi = jnp.max(_masked(z, keep, -jnp.inf), axis=1)
  return jnp.all(hi - lo <= _FAST_RANGE)


def _log_denominators(z, keep, perm, gstart, fast):
  """LS (B, M) in sorted order: log sum_{k kept: d_ik >= d_i,perm[p]} exp(z_ik) (ties included)."""
  zs = _take(z, perm)
  ks = None if keep is None else _take(_mask_of(keep), perm)

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
  """sum_{i, j kept} row_w_i * keep_ij * log sum_{k kept: d_ik >= d_ij} exp(z_ik) for one block of anchor rows.

  z (B, M) float32 logits; keep (B, M) bool or None (= all): pairs and denominator terms that exist; or float
  pair weights (0 = the pair does not exist; the caller adds log keep to z for the denominators);
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
  """sum over the block's weighted pairs of l(i, j) = -z_ij + LS_ij.

  ``keep`` as in ``_sum_log_denominators``; with float pair weights W, sum_ij W_ij l(i, j) with the weighted
  denominators LS_ij = log sum_{k: d_ik >= d_ij} W_ik exp(z_ik)."""
  perm, gstart, gend_orig = order
  if keep is not None and keep.dtype != jnp.bool_:
    linear = jnp.sum(row_w * jnp.sum(keep * z, axis=1))
    z = z + jnp.log(jnp.where(keep > 0, keep, 1.0))  # log W_ik inside the denominators' exponentials
    return _sum_log_denominators(z, keep, row_w, perm, gstart, gend_orig) - linear
  linear = jnp.sum(row_w * jnp.sum(_masked(z, keep, 0.0), axis=1))
  return _sum_log_denominators(z, keep, row_w, perm, gstart, gend_orig) - linear


# --------------------------------------------------------------------------- RNC (public)


def rnc_loss(anchors, candidates, anchor_labels, candidate_labels, *, temperature, similarity: str = "cosine",
             label_distance: str = "l1", exclude_self: bool = False, row_block: int | None = None):
  """Rank-N-Contrast loss of anchors (N, D) against candidates (M, D), labels (N,)/(N, L) and (M,)/(M, L).

  l(i, j) = -z_ij + log sum_{k : d_ik >= d_ij} exp(z_ik), z = sim / temperature, averaged over pairs.
  ``exclude_self`` (same-modal RNC, needs N == M): pairs and denominator terms with k == i are excluded.
  ``row_block``: anchors per rematerialised block (None/0 = all at once). Returns a float32 scalar.
  """
  _check_choice("similarity", similarity, SIMILARITIES)
  _check_choice("label_distance", label_distance, _LABEL_DISTANCES)
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
                      exclude_self, row_block, full, terms):
  """Summed pair losses of both directions for the local anchor rows; ``full``: local rows are all rows."""
  m = s_all.shape[0]
  full = full and not (row_block and row_block < s_loc.shape[0])   # z_ts == z_st.T only for all rows

  def block(valid, rows, s_blk, t_blk, y_blk):
    keep, w = _row_masks(m, rows, valid, exclude_self)
    orders = _orderings(y_blk, y_all, label_distance, terms)   # shared by both directions
    z_st = _similarity(s_blk, t_all, similarity) * inv_t
    z_ts = z_st.T if full else _similarity(t_blk, s_all, similarity) * inv_t
    return (sum(tw * _rnc_block_sum(z_st, keep, w, o) for o, (*_, tw) in zip(orders, terms, strict=True)),
            sum(tw * _rnc_block_sum(z_ts, keep, w, o) for o, (*_, tw) in zip(orders, terms, strict=True)))

  return _blocked(block, (row_ids, s_loc, t_loc, y_loc), row_block, s_loc.shape[0])


def _joint_sums(s_loc, t_loc, s_all, t_all, y_loc, y_all, row_ids, *, inv_t, similarity, label_distance,
                row_block, terms, same_modality_weight):
  """Summed (weighted) pair losses of the local anchors [s_loc; t_loc] in the joint 2N set (self excluded)."""
  n = s_all.shape[0]
  c_all = jnp.concatenate([s_all, t_all], axis=0)

  def block(valid, rows, s_blk, t_blk, y_blk):
    ids, _ = _joint_ids(rows, n)
    keep, w = _row_masks(2 * n, ids, jnp.concatenate([valid, valid]), True)
    if _is_weighted(same_modality_weight):  # pair weights: lambda for same-modality columns, 1 across, 0 for self
      same = (ids[:, None] < n) == (jnp.arange(2 * n)[None, :] < n)
      keep = jnp.where(keep, jnp.where(same, jnp.asarray(same_modality_weight, jnp.float32), 1.0), 0.0)
    z = _similarity(jnp.concatenate([s_blk, t_blk], axis=0), c_all, similarity) * inv_t
    total = 0.0
    for order, (*_, tw) in zip(_orderings(y_blk, y_all, label_distance, terms), terms, strict=True):
      # Candidate labels are [y_all; y_all], and a speech row and its text partner share their labels: one
      # ordering of the block's rows against the N batch labels serves all 2B anchors and 2N candidates.
      order = tuple(jnp.concatenate([o, o], axis=0) for o in _doubled_ordering(order))
      total = total + tw * _rnc_block_sum(z, keep, w, order)
    return (total,)

  return _blocked(block, (row_ids, s_loc, t_loc, y_loc), row_block, s_loc.shape[0])


def cross_modal_rnc_loss(speech, text, labels, *, temperature, mesh: Mesh | None = None,
                         similarity: str = "cosine", label_distance: str = "l1", exclude_self: bool = False,
                         row_block: int | None = None, joint: bool = False, label_weights=None,
                         per_label: bool = False, same_modality_weight: float = 1.0):
  """Cross-modal RNC of speech/text (N, D) with labels (N,)/(N, L) -> float32 scalar.

  Default: the mean of the speech->text and text->speech losses (anchors of one modality, the N candidates
  of the other; ``exclude_self`` drops each anchor's own partner from its pairs and denominators).

  ``joint=True``: single-set RNC over the 2N rows [speech; text] with labels [labels; labels]; each row is an
  anchor whose candidates are the other 2N - 1 rows of both modalities (itself excluded, its partner kept).
  l(i, j) = -z_ij + log sum_{k != i : d_ik >= d_ij} exp(z_ik), averaged over all 2N (2N - 1) ordered pairs
  i != j; equal to ``rnc_loss(x, x, y2, y2, exclude_self=True)`` with x = [speech; text], y2 = [labels; labels].
  ``same_modality_weight`` lambda weighs the same-modality rows, as pairs and in the denominators:
  l(i, j) = -z_ij + log sum_{k != i : d_ik >= d_ij} w_ik exp(z_ik), w_ik = lambda for k of i's modality and 1
  across, averaged with the weights w_ij over the pairs (divided by 2N N + lambda 2N (N - 1)). lambda = 1 is the
  joint form above; lambda = 0 leaves only the cross-modal pairs: the two-direction form (``joint=False``),
  which computes it over N columns instead of 2N.

  The label distance d is L1 (or squared L2) over the label columns, weighted by ``label_weights`` (L,) when
  given. ``per_label=True`` instead sums one RNC term per label column (each ordered by that column alone),
  weighted by ``label_weights`` / sum(``label_weights``) (equal weights when None); columns of weight 0 drop out.

  With ``mesh``, the rows are split over ``sharding.batch_axes(mesh)`` with ``jax.shard_map``: each shard
  ranks its own anchors (in the joint form, its speech and text rows) against the all-gathered candidates;
  the result equals the unsharded loss.

  Raises:
    ValueError: bad shapes, a bad option, NaN labels or temperature (outside ``jit``), a batch the mesh does not
      divide, ``exclude_self`` with ``joint`` (the joint form always excludes self and keeps the partner), or
      ``same_modality_weight`` other than 1 without ``joint``.
  """
  _check_choice("similarity", similarity, SIMILARITIES)
  _check_choice("label_distance", label_distance, _LABEL_DISTANCES)
  if joint and exclude_self:
    raise ValueError("exclude_self=True does not apply with joint=True: the joint form always excludes each row "
                     "itself and keeps its partner in the other modality")
  lam = _check_same_modality_weight(same_modality_weight, joint)
  _check_pair(speech, text)
  n = speech.shape[0]
  y = _as_2d_labels("labels", labels, n)
  _rank_terms(y.shape[1], label_weights, per_label)  # bad weights are named before anything is traced
  _check_temperature(temperature)
  axes = _mesh_axes(mesh, n)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  s, t = _prepare(speech, similarity), _prepare(text, similarity)
  kw = dict(similarity=similarity, label_distance=label_distance, row_block=row_block)
  # Traced per-member values enter the sharded function as (replicated) arguments, never as closures.
  traced = {name: value for name, value in (("lam", lam), ("label_weights", label_weights))
            if isinstance(value, jax.Array)}

  def local(s_loc, t_loc, y_loc, inv_t, *values):
    given = dict(zip(traced, values, strict=True))
    terms = _rank_terms(y.shape[1], given.get("label_weights", label_weights), per_label)
    s_all, t_all, y_all = _gather(s_loc, axes), _gather(t_loc, axes), _gather(y_loc, axes)
    rows = _row_ids(s_loc.shape[0], axes)
    if joint:
      return _joint_sums(s_loc, t_loc, s_all, t_all, y_loc, y_all, rows, inv_t=inv_t,
                         same_modality_weight=given.get("lam", lam), terms=terms, **kw)
    return _cross_modal_sums(s_loc, t_loc, s_all, t_all, y_loc, y_all, rows, inv_t=inv_t, full=not axes,
                             exclude_self=exclude_self, terms=terms, **kw)

  sums = _shard_rows(mesh, axes, local, (s, t, y), (inv_t, *traced.values()))
  # float counts: N^2 overflows int32 past N = 46,340
  if joint:
    return sums[0] / (2.0 * n * n + lam * 2.0 * n * (n - 1))
  count = n * (n - 1) if exclude_self else n * n
  return 0.5 * (sums[0] + sums[1]) / float(count)
