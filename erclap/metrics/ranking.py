"""Ordinality metrics: Kendall's tau-b of many rows at once (``kendall_tau_b_rows``), the anchor-wise Kendall tau
(``anchor_kendall_tau``), level prompts ordering the clips (``prompt_ordinal_consistency``) and the paper's AOC /
VOC, Kendall's tau of cross-modal retrieval order (``retrieval_kendall_tau``)."""

from __future__ import annotations

import math
import sys

import numpy as np

from erclap.metrics.arrays import _as_1d, _as_2d, _row_chunks

# Label distances are rounded to this many decimals before ranking, so that distances that are equal in
# exact arithmetic (|3.4 - 2.2| and |4.6 - 3.4|) are tied instead of being split by float rounding.
_DISTANCE_DECIMALS = 6
_LITTLE_ENDIAN = sys.byteorder == "little"

# ----------------------------------------------------------------------------------------------------------
# Kendall's tau-b, many rows at once.


def _order_keys(a: np.ndarray) -> np.ndarray:
  """(R, n) real array -> (R, n) uint32 keys with the same order and the same ties within each row.

  float32 (and narrower) values map through their bit pattern (order-preserving, O(n)); other dtypes get
  per-row dense ranks (one argsort)."""
  if a.dtype.kind == "f" and a.dtype.itemsize <= 4:
    bits = (a.astype(np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0
    # Negative floats: flip all bits (larger magnitude = smaller); non-negative: set the sign bit.
    return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
  if a.dtype.kind in "iub" and a.dtype.itemsize <= 2:
    return (a.astype(np.int64) + (1 << 16)).astype(np.uint32)
  order = np.argsort(a, axis=1)
  s = np.take_along_axis(a, order, axis=1)
  new = np.ones(s.shape, bool)
  new[:, 1:] = s[:, 1:] != s[:, :-1]
  dense = (np.cumsum(new, axis=1) - 1).astype(np.uint32)
  keys = np.empty_like(dense)
  np.put_along_axis(keys, order, dense, axis=1)
  return keys


def _tied_pairs(sorted_rows: np.ndarray) -> np.ndarray:
  """(R, n) row-sorted array -> (R,) number of pairs with equal values, sum over groups of t(t-1)/2."""
  r, n = sorted_rows.shape
  same = np.zeros((r, n), bool)  # element equals its left neighbour; column 0 never, so groups stay in a row
  same[:, 1:] = sorted_rows[:, 1:] == sorted_rows[:, :-1]
  num_same = int(np.count_nonzero(same))
  if num_same == 0:
    return np.zeros(r, np.int64)
  if num_same > same.size // 2:  # many ties (few groups): group sizes from the group starts
    starts = np.flatnonzero(~same)
    size = np.diff(starts, append=same.size)
    row = starts // n
  else:  # few ties: runs of consecutive "same" flags; a run of L flags is a group of L + 1 elements
    where = np.flatnonzero(same)
    run_start = np.ones(where.size, bool)
    run_start[1:] = np.diff(where) != 1
    first = np.flatnonzero(run_start)
    size = np.diff(first, append=where.size) + 1
    row = where[first] // n
  return np.bincount(row, weights=size * (size - 1) // 2, minlength=r).astype(np.int64)  # exact < 2**53


def _count_inversions(keys: np.ndarray, base_log2: int = 3) -> np.ndarray:
  """(R, n) uint32 -> (R,) int64 number of pairs i < j with keys[i] > keys[j] (strict), per row.

  Bottom-up merge sort applied to all rows at once: blocks of 2**base_log2 are counted pairwise, then each
  level merges adjacent sorted blocks with one stable numpy sort (timsort merges two runs in linear
  time). The lowest bit of each int64 key marks "comes from the right half"; right elements with equal
  key sort after left ones, so for a right element at merged position p (the c-th right element),
  p - (c - 1) left elements are <= it and half - p + c - 1 are greater. Summed over the right half,
  c contributes half(half+1)/2, so only the sum of merged positions of right elements is needed."""
  r, n = keys.shape
  size = 1 << max(base_log2, math.ceil(math.log2(max(n, 2))))
  # Padding with a value above every key appended at the end creates no inversion.
  padded = np.full((r, size), 1 << 32, np.int64)
  padded[:, :n] = keys
  b0 = 1 << base_log2
  blocks = padded.reshape(r, size // b0, b0)
  swaps = np.zeros(r, np.int64)
  for i in range(b0 - 1):
    swaps += (blocks[:, :, i:i + 1] > blocks[:, :, i + 1:]).sum(axis=(1, 2))
  work = np.sort(blocks, axis=2).reshape(r, size) << 1
  half = b0
  while half < size:
    num_blocks = size // (2 * half)
    merged = work.reshape(r, num_blocks, 2 * half)
    merged &= -2
    merged[:, :, half:] |= 1
    merged.sort(axis=2, kind="stable")
    if _LITTLE_ENDIAN:  # the flag is bit 0 of each int64's first byte: read it as a strided uint8 view
      flags = merged.view(np.uint8)[..., ::8] & 1
    else:
      flags = merged & 1
    right_position_sum = np.einsum("rbp,p->r", flags, np.arange(2 * half, dtype=np.int64))
    per_block = half * half - half + half * (half + 1) // 2
    swaps += per_block * num_blocks - right_position_sum
    half *= 2
  return swaps


# Rows this short are counted pair by pair (n (n - 1) / 2 vector comparisons): faster than sorting them, e.g. the
# K levels of the retrieval tau's draws, hundreds of thousands of rows in its bootstrap.
_PAIRWISE_MAX_N = 8


def _kendall_pairwise(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(R, n) short rows -> (R,) concordant minus discordant pairs, pairs tied in x, pairs tied in y."""
  xt, yt = np.ascontiguousarray(x.T), np.ascontiguousarray(y.T)  # one contiguous (R,) vector per position
  r, n = x.shape
  score, tied_x, tied_y = (np.zeros(r, np.int32) for _ in range(3))
  for i in range(n - 1):
    for j in range(i + 1, n):
      cx = (xt[i] > xt[j]).astype(np.int8) - (xt[i] < xt[j])
      cy = (yt[i] > yt[j]).astype(np.int8) - (yt[i] < yt[j])
      score += cx * cy
      tied_x += cx == 0
      tied_y += cy == 0
  return score, tied_x, tied_y


def kendall_tau_b_rows(x, y) -> np.ndarray:
  """Kendall's tau-b between x[r] and y[r] for every row r (ties handled as in scipy.stats.kendalltau).

  Args:
    x, y: (R, n) real arrays (or (n,) for a single row; broadcastable against each other). float32
      inputs are ranked through their bit patterns (fast path); other dtypes through argsort ranks.
  Returns:
    (R,) float64 tau-b; NaN where a row of x or of y is constant (tau-b undefined), as scipy.

  O(n log n) per row (Knight's algorithm): sort each row by (x, y), count the discordant pairs as the
  inversions of y in that order, and correct for ties: tau_b = (n0 - n1 - n2 + n3 - 2 swaps) /
  sqrt((n0 - n1)(n0 - n2)). Rows of at most 8 values are counted pair by pair instead (the same integers).
  """
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim == 1 and y.ndim == 1:
    return kendall_tau_b_rows(x[None], y[None])
  try:
    x, y = np.broadcast_arrays(np.atleast_2d(x), np.atleast_2d(y))
  except ValueError as e:
    raise ValueError(f"x, y: shapes {x.shape} and {y.shape} do not broadcast") from e
  x, y = _as_2d("x", x), _as_2d("y", y)
  if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
    raise ValueError(f"x, y: expected real arrays, got {x.dtype} and {y.dtype}")
  rows, n = x.shape
  out = np.full(rows, np.nan)
  if n < 2:
    return out
  if n <= _PAIRWISE_MAX_N:
    score, n1, n2 = _kendall_pairwise(x, y)
    n0 = n * (n - 1) // 2
    denominator = np.sqrt((n0 - n1).astype(np.float64) * (n0 - n2).astype(np.float64))
    valid = denominator > 0
    return np.clip(np.where(valid, score / np.where(valid, denominator, 1.0), np.nan), -1.0, 1.0)
  for sl in _row_chunks(rows, n):
    kx, ky = _order_keys(np.ascontiguousarray(x[sl])), _order_keys(np.ascontiguousarray(y[sl]))
    packed = np.sort((kx.astype(np.uint64) << np.uint64(32)) | ky.astype(np.uint64), axis=1)
    n1 = _tied_pairs(packed >> np.uint64(32))         # tied in x
    n3 = _tied_pairs(packed)                          # tied in both
    y_in_x_order = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    n2 = _tied_pairs(np.sort(y_in_x_order, axis=1))  # tied in y
    swaps = _count_inversions(y_in_x_order)
    n0 = n * (n - 1) // 2
    numerator = (n0 - n1 - n2 + n3 - 2 * swaps).astype(np.float64)
    denominator = np.sqrt((n0 - n1).astype(np.float64) * (n0 - n2).astype(np.float64))
    valid = denominator > 0
    out[sl] = np.where(valid, numerator / np.where(valid, denominator, 1.0), np.nan)
  return np.clip(out, -1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Ordinality.


def _negative_label_distance(anchor_values: np.ndarray, candidate_values: np.ndarray) -> np.ndarray:
  """(A,), (C,) -> (A, C) float32 -|a_i - c_j| with exact ties kept (rounded, see _DISTANCE_DECIMALS)."""
  d = np.round(np.abs(anchor_values[:, None] - candidate_values[None, :]), _DISTANCE_DECIMALS)
  return (-d).astype(np.float32)


def anchor_kendall_tau(sim, anchor_labels, candidate_labels, *, return_per_anchor: bool = False):
  """Anchor-wise Kendall tau of similarity against label distance (``anchor_tau_*``; not the paper's AOC / VOC).

  Args:
    sim: (A, C) similarities of A anchors to C candidates.
    anchor_labels: (A,) one attribute of the anchors. candidate_labels: (C,) of the candidates.
    return_per_anchor: also return the (A,) per-anchor taus.
  Returns:
    mean over anchors of tau-b(sim[i, :], -|y_i - y_j| over j). Anchors whose tau is undefined (constant
    similarity row, or all candidates at the same distance) are left out of the mean; NaN if all are.
  """
  sim = _as_2d("sim", sim)
  a = _as_1d("anchor_labels", anchor_labels)
  c = _as_1d("candidate_labels", candidate_labels)
  if sim.shape != (len(a), len(c)):
    raise ValueError(f"sim: shape {sim.shape} does not match anchor_labels ({len(a)},) x "
                     f"candidate_labels ({len(c)},)")
  if sim.dtype != np.float32 and sim.dtype != np.float64:
    sim = sim.astype(np.float64)
  taus = np.empty(len(a))
  for sl in _row_chunks(len(a), len(c)):
    taus[sl] = kendall_tau_b_rows(sim[sl], _negative_label_distance(a[sl], c))
  mean = float(np.nanmean(taus)) if np.any(np.isfinite(taus)) else float("nan")
  return (mean, taus) if return_per_anchor else mean


def _top_k_mean(sim: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
  """(Q, N) sims, (N,) values -> (Q,) mean value of each row's k most similar items (ties by index)."""
  if k >= sim.shape[1]:
    return np.full(sim.shape[0], values.mean())
  top = np.argpartition(-sim, k - 1, axis=1, kind="introselect")[:, :k]
  return values[top].mean(axis=1)


def prompt_ordinal_consistency(prompt_sim, prompt_levels, clip_values, *, top_fraction: float = 0.1) -> dict:
  """How well level prompts (one text embedding per level) order the clips.

  Args:
    prompt_sim: (K, N) similarities of K level prompts to N clips.
    prompt_levels: (K,) the attribute level each prompt stands for (e.g. linspace(1, 7, K)).
    clip_values: (N,) the clips' true attribute.
    top_fraction: share of clips (at least one) that count as a prompt's "retrieved" clips.
  Returns a dict:
    tau_per_prompt (K,): tau-b between prompt_sim[k] and clip_values. A prompt above the middle level
      should be positive (more similar to higher clips), one below negative.
    expected_sign (K,): sign(level_k - middle), middle = (min level + max level) / 2.
    signed_tau: mean of expected_sign * tau over prompts not at the middle (1 = every prompt orders all
      clips in its direction). The headline scalar.
    distance_tau: mean over prompts of tau-b(prompt_sim[k], -|clip - level_k|): the anchor-wise Kendall
      tau with the prompts as anchors.
    top_clip_values (K,): mean true attribute of each prompt's top ceil(top_fraction * N) clips.
    order_tau: tau-b between the levels and top_clip_values (1 = the prompts' order is fully kept).
    monotone: True if top_clip_values strictly increase with the level.
  """
  prompt_sim = _as_2d("prompt_sim", prompt_sim)
  levels = _as_1d("prompt_levels", prompt_levels)
  values = _as_1d("clip_values", clip_values)
  if prompt_sim.shape != (len(levels), len(values)):
    raise ValueError(f"prompt_sim: shape {prompt_sim.shape} does not match prompt_levels ({len(levels)},) x "
                     f"clip_values ({len(values)},)")
  if len(levels) < 2:
    raise ValueError(f"prompt_levels: need at least 2 prompts, got {len(levels)}")
  if not 0.0 < top_fraction <= 1.0:
    raise ValueError(f"top_fraction: must be in (0, 1], got {top_fraction}")
  tau = kendall_tau_b_rows(prompt_sim, values[None, :])
  middle = 0.5 * (levels.min() + levels.max())
  sign = np.sign(levels - middle)
  use = (sign != 0) & np.isfinite(tau)
  signed = float(np.mean(sign[use] * tau[use])) if np.any(use) else float("nan")
  distance_tau = anchor_kendall_tau(prompt_sim, levels, values)
  top_k = max(1, math.ceil(top_fraction * len(values)))
  top_values = _top_k_mean(prompt_sim, values, top_k)
  order_tau = float(kendall_tau_b_rows(levels, top_values)[0])
  by_level = top_values[np.argsort(levels, kind="stable")]
  return dict(tau_per_prompt=tau, expected_sign=sign, signed_tau=signed, distance_tau=distance_tau,
              top_clip_values=top_values, order_tau=order_tau, monotone=bool(np.all(np.diff(by_level) > 0)))


def _retrieval_draws(level_of_query: np.ndarray, num_distinct: int, num_levels: int, num_draws: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """The draws of ``retrieval_kendall_tau``: (M, K) level ids (K distinct levels per draw) and (M, K) query ids
  (one random wording per chosen level: queries grouped by level, a uniform offset inside the group)."""
  chosen = np.argsort(rng.random((num_draws, num_distinct)), axis=1)[:, :num_levels]
  by_level = np.argsort(level_of_query, kind="stable")
  group_size = np.bincount(level_of_query, minlength=num_distinct)
  group_start = np.concatenate([[0], np.cumsum(group_size)[:-1]])
  offset = np.floor(rng.random(chosen.shape) * group_size[chosen]).astype(np.int64)
  return chosen, by_level[group_start[chosen] + offset]


def _resampled_top_k_means(order: np.ndarray, values: np.ndarray, k: int, counts: np.ndarray) -> np.ndarray:
  """Each query's top-k mean value in resampled clip sets.

  Args:
    order: (Q, N) clip ids of each query, most similar first.
    values: (N,) the clips' values.
    k: how many clips (with their multiplicity) each query retrieves.
    counts: (B, N) how many times each clip is in resample b.
  Returns:
    (B, Q): the mean value of the first k clips of ``order`` counted with their multiplicity in resample b.

  A clip is missing from a resample with probability (1 - 1/N)^N ~ 0.37, so the first k retrieved copies lie
  within a short prefix of ``order``: the prefix is tried first, the full order only for the (b, q) it leaves
  short.
  """
  def take(c, v):  # c, v (..., T): counts and values along the order -> sum of the first k copies, copies seen
    cum = np.cumsum(c, axis=-1)
    used = np.clip(k - (cum - c), 0, c)
    return np.sum(used * v, axis=-1), cum[..., -1]

  prefix = min(order.shape[1], max(32, 4 * k))
  sums, seen = take(counts[:, order[:, :prefix]], values[order[:, :prefix]][None])
  short = np.nonzero(seen < k)
  if short[0].size:
    rows = order[short[1]]
    sums[short] = take(counts[short[0][:, None], rows], values[rows])[0]
  return sums / k


def retrieval_kendall_tau(query_sim, query_values, clip_values, *, num_levels: int = 5, num_draws: int = 200,
                          top_k: int = 1, seed: int = 0, num_bootstrap: int = 0, confidence: float = 0.95) -> dict:
  """Retrieval Kendall tau: the paper's AOC (arousal) / VOC (valence), as far as its protocol is published.

  Args:
    query_sim: (Q, N) similarities of a pool of Q descriptions of one attribute (several wordings at each
      of several values; the other attributes neutral) to N test clips.
    query_values: (Q,) the attribute value each description states. Its distinct values are the levels.
    clip_values: (N,) the clips' true value of the attribute.
    num_levels: K levels picked per draw (distinct, at most the number of distinct query values).
    num_draws: M random draws.
    top_k: each description's retrieved value is the mean true value of its top_k most similar clips.
    seed: numpy seed of the draws (and of the bootstrap).
    num_bootstrap: B > 0 adds a percentile bootstrap interval: each of B replicates resamples the N test clips
      and the M draws with replacement (the queries retrieve from the resampled clips, copies counted in the
      top_k) and recomputes the mean tau; 0 = none.
    confidence: the interval's coverage (0.95: the 2.5 % and 97.5 % quantiles of the B replicates).
  Returns a dict: tau (mean over draws), tau_std, num_levels, num_draws, top_k, num_undefined; with
    ``num_bootstrap`` also ci_low, ci_high (the interval of tau), tau_se (the replicates' sd) and num_bootstrap.
    Each draw picks K distinct levels and one random wording per level, and computes Kendall's tau-b
    between the K levels and the K retrieved values. A draw whose retrieved values are all equal (the same
    clip retrieved every time) has no ordering information and counts as tau = 0; num_undefined says how
    many draws that was.
  """
  query_sim = _as_2d("query_sim", query_sim)
  query_values = _as_1d("query_values", query_values)
  clip_values = _as_1d("clip_values", clip_values)
  if query_sim.shape != (len(query_values), len(clip_values)):
    raise ValueError(f"query_sim: shape {query_sim.shape} does not match query_values ({len(query_values)},) "
                     f"x clip_values ({len(clip_values)},)")
  levels, level_of_query = np.unique(query_values, return_inverse=True)
  if not 2 <= num_levels <= len(levels):
    raise ValueError(f"num_levels: must be in [2, {len(levels)}] (the distinct query_values), got {num_levels}")
  if num_draws < 1:
    raise ValueError(f"num_draws: must be >= 1, got {num_draws}")
  if not 1 <= top_k <= len(clip_values):
    raise ValueError(f"top_k: must be in [1, {len(clip_values)}] (the number of clips), got {top_k}")
  if num_bootstrap < 0:
    raise ValueError(f"num_bootstrap: must be >= 0, got {num_bootstrap}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
  retrieved = _top_k_mean(query_sim, clip_values, top_k)                       # (Q,)
  chosen, queries = _retrieval_draws(level_of_query, len(levels), num_levels, num_draws,
                                     np.random.default_rng(seed))             # (M, K) level ids, query ids
  taus = kendall_tau_b_rows(levels[chosen], retrieved[queries])
  undefined = ~np.isfinite(taus)
  taus = np.where(undefined, 0.0, taus)
  out = dict(tau=float(taus.mean()), tau_std=float(taus.std()), num_levels=int(num_levels),
             num_draws=int(num_draws), top_k=int(top_k), num_undefined=int(undefined.sum()))
  if num_bootstrap:
    replicates = _bootstrap_taus(query_sim, clip_values, levels[chosen], queries, top_k, num_bootstrap,
                                 np.random.default_rng([seed, 1]))
    low, high = np.quantile(replicates, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    out.update(ci_low=float(low), ci_high=float(high), tau_se=float(replicates.std()),
               num_bootstrap=int(num_bootstrap))
  return out


def _bootstrap_taus(query_sim: np.ndarray, clip_values: np.ndarray, draw_levels: np.ndarray, draw_queries: np.ndarray,
                    top_k: int, num_bootstrap: int, rng: np.random.Generator, chunk: int = 250) -> np.ndarray:
  """(B,) bootstrap replicates of the retrieval tau (see ``retrieval_kendall_tau``).

  Replicate b draws N clip ids and M draw ids with replacement (in this order, from ``rng``: clip ids (B, N),
  then draw ids (B, M)); its value is the mean over its draws of tau-b(levels, retrieved values), every query
  retrieving its top_k copies among the resampled clips. Vectorised over replicates, ``chunk`` at a time."""
  n, (m, k) = len(clip_values), draw_levels.shape
  clip_ids = rng.integers(n, size=(num_bootstrap, n))
  draw_ids = rng.integers(m, size=(num_bootstrap, m))
  # The most similar clips first, ties by clip id (the order _top_k_mean's argpartition breaks ties in is not
  # defined; with continuous similarities there are none).
  order = np.argsort(-query_sim, axis=1, kind="stable")
  out = np.empty(num_bootstrap)
  for start in range(0, num_bootstrap, chunk):
    b = min(chunk, num_bootstrap - start)
    counts = _row_counts(clip_ids[start:start + b], n)                             # (b, N)
    retrieved = _resampled_top_k_means(order, clip_values, top_k, counts)         # (b, Q)
    taus = kendall_tau_b_rows(np.broadcast_to(draw_levels, (b, m, k)).reshape(-1, k),
                              retrieved[:, draw_queries].reshape(-1, k)).reshape(b, m)
    taus = np.where(np.isfinite(taus), taus, 0.0)
    out[start:start + b] = np.sum(_row_counts(draw_ids[start:start + b], m) * taus, axis=1) / m
  return out


def _row_counts(ids: np.ndarray, size: int) -> np.ndarray:
  """(B, n) ids in [0, size) -> (B, size) how many times each id occurs in each row."""
  b = ids.shape[0]
  return np.bincount((ids + size * np.arange(b)[:, None]).ravel(), minlength=b * size).reshape(b, size)
