"""Evaluation metrics of ERCLAP: ordinality, modality gap, retrieval and emotion recognition from embeddings.

Pure numpy / scipy functions (no JAX state, no I/O), vectorised over rows and chunked so that thousands of
anchors x thousands of candidates fit in modest memory. Conventions:

* Similarity is cosine: ``sim = normalize(speech) @ normalize(text).T``, rows = speech (anchors of the
  speech->text direction), columns = text. The text->speech direction is the same matrix transposed.
* Labels are (N, 3) arrays of (arousal, valence, dominance) on the 1-7 scale; functions that act on one
  attribute take a 1-D column.

Definitions (the paper's exact protocol is not published; these are ours, also described in the README):

* AOC / VOC (``aoc``, ``voc``), the paper's arousal / valence ordinal consistency: Kendall's tau of
  cross-modal retrieval order (``retrieval_kendall_tau``, the paper's protocol as far as it is published): K
  descriptions at distinct levels of one attribute each retrieve their top-k clips; Kendall's tau between
  the levels and the retrieved clips' true values, averaged over M random draws of levels and wordings.
* Anchor-wise Kendall tau (``anchor_tau_<attribute>``, a different statistic, not the paper's): for each
  anchor i, Kendall's tau-b between ``sim[i, :]`` and ``-|y_i - y_j|`` over all candidates j, averaged over
  anchors. A model whose similarities fall off with label distance scores 1.

``schema.METRIC_RENAMES`` maps the names metric files used before (``aoc_mean``, ``retrieval_tau_arousal`` ...) to
today's; ``upgrade_metric_names`` / ``read_metrics_file`` read old files under the new names.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import optimize, special

from erclap.schema import LABEL_NAMES, METRIC_RENAMES, ORDINAL_CONSISTENCY_NAMES

# Rows per chunk are chosen so that one chunk holds about this many matrix elements (int64: 32 MB).
_CHUNK_ELEMENTS = 1 << 22
# Label distances are rounded to this many decimals before ranking, so that distances that are equal in
# exact arithmetic (|3.4 - 2.2| and |4.6 - 3.4|) are tied instead of being split by float rounding.
_DISTANCE_DECIMALS = 6
_LITTLE_ENDIAN = sys.byteorder == "little"



# ----------------------------------------------------------------------------------------------------------
# Input checks and small helpers.


def _as_2d(name: str, a, dtype=None) -> np.ndarray:
  a = np.asarray(a, dtype=dtype)
  if a.ndim != 2:
    raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
  if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
    raise ValueError(f"{name}: contains NaN or infinite values")
  return a


def _as_1d(name: str, a, dtype=np.float64) -> np.ndarray:
  a = np.asarray(a, dtype=dtype)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name}: contains NaN or infinite values")
  return a


def _labels_2d(name: str, a) -> np.ndarray:
  """(N,) or (N, L) labels -> (N, L) float64."""
  a = np.asarray(a, np.float64)
  if a.ndim == 1:
    a = a[:, None]
  return _as_2d(name, a)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero). Returns float32 if x is float32, else float64."""
  x = np.asarray(x)
  x = x.astype(np.float32 if x.dtype == np.float32 else np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def normalized_mean(x, axis: int = 0) -> np.ndarray:
  """The mean direction of embeddings: L2-normalise each, average along ``axis``, re-normalise.

  One embedding for several (wordings of a level prompt, windows of a long clip), each counted equally."""
  x = np.asarray(x)
  if x.ndim < 2 or x.shape[axis] == 0:
    raise ValueError(f"normalized_mean: expected a non-empty stack of embeddings, got shape {x.shape}")
  return l2_normalize(l2_normalize(x).mean(axis=axis))


def mean_by_level(embeddings, levels) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings of several texts per level -> one per level (``normalized_mean`` of each level's rows).

  embeddings: (M, D); levels: (M,). Returns (sorted unique levels (K,), (K, D) unit-norm embeddings)."""
  emb = _as_2d("embeddings", embeddings)
  levels = _as_1d("levels", levels)
  if len(levels) != len(emb):
    raise ValueError(f"levels: {len(levels)} entries for {len(emb)} embeddings")
  unique = np.unique(levels)
  return unique, np.stack([normalized_mean(emb[levels == v]) for v in unique])


def _row_chunks(num_rows: int, row_length: int):
  step = max(1, _CHUNK_ELEMENTS // max(row_length, 1))
  for start in range(0, num_rows, step):
    yield slice(start, min(num_rows, start + step))


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


def kendall_tau_b_rows(x, y) -> np.ndarray:
  """Kendall's tau-b between x[r] and y[r] for every row r (ties handled as in scipy.stats.kendalltau).

  Args:
    x, y: (R, n) real arrays (or (n,) for a single row; broadcastable against each other). float32
      inputs are ranked through their bit patterns (fast path); other dtypes through argsort ranks.
  Returns:
    (R,) float64 tau-b; NaN where a row of x or of y is constant (tau-b undefined), as scipy.

  O(n log n) per row (Knight's algorithm): sort each row by (x, y), count the discordant pairs as the
  inversions of y in that order, and correct for ties: tau_b = (n0 - n1 - n2 + n3 - 2 swaps) /
  sqrt((n0 - n1)(n0 - n2)).
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


def retrieval_kendall_tau(query_sim, query_values, clip_values, *, num_levels: int = 5, num_draws: int = 200,
                          top_k: int = 1, seed: int = 0) -> dict:
  """Retrieval Kendall tau: the paper's AOC (arousal) / VOC (valence), as far as its protocol is published.

  Args:
    query_sim: (Q, N) similarities of a pool of Q descriptions of one attribute (several wordings at each
      of several values; the other attributes neutral) to N test clips.
    query_values: (Q,) the attribute value each description states. Its distinct values are the levels.
    clip_values: (N,) the clips' true value of the attribute.
    num_levels: K levels picked per draw (distinct, at most the number of distinct query values).
    num_draws: M random draws.
    top_k: each description's retrieved value is the mean true value of its top_k most similar clips.
    seed: numpy seed of the draws.
  Returns a dict: tau (mean over draws), tau_std, num_levels, num_draws, top_k, num_undefined.
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
  retrieved = _top_k_mean(query_sim, clip_values, top_k)                       # (Q,)
  rng = np.random.default_rng(seed)
  chosen = np.argsort(rng.random((num_draws, len(levels))), axis=1)[:, :num_levels]  # (M, K) level ids
  # One random wording per chosen level: queries grouped by level, a uniform offset inside the group.
  by_level = np.argsort(level_of_query, kind="stable")
  group_size = np.bincount(level_of_query, minlength=len(levels))
  group_start = np.concatenate([[0], np.cumsum(group_size)[:-1]])
  offset = np.floor(rng.random(chosen.shape) * group_size[chosen]).astype(np.int64)
  queries = by_level[group_start[chosen] + offset]                               # (M, K) query ids
  taus = kendall_tau_b_rows(levels[chosen], retrieved[queries])
  undefined = ~np.isfinite(taus)
  taus = np.where(undefined, 0.0, taus)
  return dict(tau=float(taus.mean()), tau_std=float(taus.std()), num_levels=int(num_levels),
              num_draws=int(num_draws), top_k=int(top_k), num_undefined=int(undefined.sum()))


# ----------------------------------------------------------------------------------------------------------
# Modality gap.


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * (a @ b.T)
  return np.maximum(d, 0.0)


def median_heuristic_bandwidth(z, *, max_points: int = 4096, seed: int = 0) -> float:
  """Median Euclidean distance over all pairs i < j of the rows of z (N, D).

  Above max_points rows, the median is taken over a random subset of max_points rows (seeded)."""
  z = _as_2d("z", z, np.float64)
  if len(z) > max_points:
    z = z[np.random.default_rng(seed).choice(len(z), max_points, replace=False)]
  iu = np.triu_indices(len(z), k=1)
  return float(np.median(np.sqrt(_sq_distances(z, z)[iu])))


def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float, exclude_diagonal: bool) -> float:
  total = 0.0
  for sl in _row_chunks(len(a), len(b)):
    k = np.exp(-gamma * _sq_distances(a[sl], b))
    if exclude_diagonal:
      rows = np.arange(sl.start, sl.stop)
      k[rows - sl.start, rows] = 0.0
    total += float(k.sum())
  return total


def mmd(x, y, *, bandwidth: float | None = None, max_median_points: int = 4096, seed: int = 0) -> float:
  """Unbiased estimate of the squared MMD between samples x (m, D) and y (n, D), Gaussian kernel.

  k(a, b) = exp(-||a - b||^2 / (2 sigma^2)), sigma = the median pairwise distance of the pooled set
  (``median_heuristic_bandwidth``) unless ``bandwidth`` is given.
  MMD_u^2 = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum k(x_i, y_j) / (mn);
  it can be slightly negative when the distributions are equal.
  """
  x, y = _as_2d("x", x, np.float64), _as_2d("y", y, np.float64)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x, y: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
  m, n = len(x), len(y)
  if m < 2 or n < 2:
    raise ValueError(f"x, y: need at least 2 samples each for the unbiased MMD, got {m} and {n}")
  if bandwidth is None:
    bandwidth = median_heuristic_bandwidth(np.concatenate([x, y]), max_points=max_median_points, seed=seed)
  if not bandwidth > 0:
    raise ValueError(f"bandwidth: must be > 0, got {bandwidth} (all pooled points identical?)")
  gamma = 1.0 / (2.0 * bandwidth ** 2)
  kxx = _kernel_sum(x, x, gamma, True) / (m * (m - 1))
  kyy = _kernel_sum(y, y, gamma, True) / (n * (n - 1))
  kxy = _kernel_sum(x, y, gamma, False) / (m * n)
  return float(kxx + kyy - 2.0 * kxy)


class WassersteinResult(NamedTuple):
  """value: the W1 estimate; method: "exact" (optimal assignment) or "sliced"."""
  value: float
  method: str
  num_points: int
  num_projections: int  # 0 for the exact method


def sliced_scale(dim: int) -> float:
  """E|theta_1| for theta uniform on the unit sphere in R^dim: E_theta |<theta, v>| = sliced_scale * ||v||."""
  return float(np.exp(special.gammaln(dim / 2) - special.gammaln((dim + 1) / 2)) / np.sqrt(np.pi))


def wasserstein(x, y, *, exact_max_n: int = 2048, num_projections: int = 512, seed: int = 0,
                normalize: bool = True) -> WassersteinResult:
  """W1 (Euclidean ground cost) between two equal-size point clouds x, y (N, D) of embeddings.

  The rows are L2-normalised first (``normalize=True``), as the embeddings of the joint space are.
  N <= exact_max_n: exact, the mean cost of the optimal assignment (scipy linear_sum_assignment; O(N^3)).
  Larger N: a sliced estimate: for num_projections random unit directions theta, the exact 1-D W1 of the
  projections (sorted matching), averaged over directions, divided by ``sliced_scale(D)`` to be in W1's
  units. It is a lower bound on W1 (in expectation) and not equal to it: the result says which it is.
  """
  x, y = _as_2d("x", x, np.float64), _as_2d("y", y, np.float64)
  if x.shape != y.shape:
    raise ValueError(f"x, y: need equal-size point clouds of the same dimension, got {x.shape} and {y.shape}")
  if len(x) == 0:
    raise ValueError("x, y: empty point clouds")
  if normalize:
    x, y = l2_normalize(x), l2_normalize(y)
  n, dim = x.shape
  if n <= exact_max_n:
    cost = np.sqrt(_sq_distances(x, y))
    rows, cols = optimize.linear_sum_assignment(cost)
    return WassersteinResult(float(cost[rows, cols].mean()), "exact", n, 0)
  if num_projections < 1:
    raise ValueError(f"num_projections: must be >= 1, got {num_projections}")
  theta = l2_normalize(np.random.default_rng(seed).normal(size=(num_projections, dim)))
  total = 0.0
  for sl in _row_chunks(num_projections, n):
    px, py = np.sort(x @ theta[sl].T, axis=0), np.sort(y @ theta[sl].T, axis=0)  # (N, P)
    total += float(np.abs(px - py).mean(axis=0).sum())
  return WassersteinResult(total / num_projections / sliced_scale(dim), "sliced", n, num_projections)


# ----------------------------------------------------------------------------------------------------------
# Retrieval.


def recall_at_k(sim, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Paired retrieval recall: item i of the rows matches item i of the columns.

  Args:
    sim: (N, N) similarities, rows = speech, columns = text.
    ks: cut-offs.
  Returns {"r{k}_s2t": ..., "r{k}_t2s": ...}: share of rows (s2t) / columns (t2s) whose match is among
  the k most similar. Ties with the match are broken uniformly at random, in expectation: with g
  strictly better items and t others tied, the match is found with probability clip((k - g)/(t + 1), 0, 1).
  """
  sim = _as_2d("sim", sim)
  if sim.shape[0] != sim.shape[1]:
    raise ValueError(f"sim: paired retrieval needs a square matrix, got {sim.shape}")
  ks = [int(k) for k in ks]
  if any(k < 1 for k in ks):
    raise ValueError(f"ks: cut-offs must be >= 1, got {ks}")
  out = {}
  for direction, m in (("s2t", sim), ("t2s", sim.T)):
    diag = np.diagonal(m)[:, None]
    better = (m > diag).sum(axis=1)
    tied = (m == diag).sum(axis=1) - 1
    for k in ks:
      out[f"r{k}_{direction}"] = float(np.mean(np.clip((k - better) / (tied + 1), 0.0, 1.0)))
  return out


def ndcg_at_k(sim, anchor_labels, candidate_labels, k: int = 10, sigma: float = 1.0) -> float:
  """Mean nDCG@k with graded relevance from label distance.

  Args:
    sim: (A, C) similarities. anchor_labels: (A,) or (A, L). candidate_labels: (C,) or (C, L).
    k: cut-off (clipped to C). sigma: relevance scale.
  relevance(i, j) = exp(-d_ij / sigma), d_ij = L1 distance between the label rows. DCG@k =
  sum_{r=1..k} rel(i, j_r) / log2(r + 1) over the candidates ranked by similarity (ties by index),
  divided by the DCG of the k most relevant candidates; mean over anchors.
  """
  sim = _as_2d("sim", sim)
  a, c = _labels_2d("anchor_labels", anchor_labels), _labels_2d("candidate_labels", candidate_labels)
  if sim.shape != (len(a), len(c)) or a.shape[1] != c.shape[1]:
    raise ValueError(f"sim: shape {sim.shape} does not match anchor_labels {a.shape} x candidate_labels "
                     f"{c.shape}")
  if k < 1:
    raise ValueError(f"k: must be >= 1, got {k}")
  if not sigma > 0:
    raise ValueError(f"sigma: must be > 0, got {sigma}")
  k = min(int(k), len(c))
  discount = 1.0 / np.log2(np.arange(2, k + 2))
  total = 0.0
  for sl in _row_chunks(len(a), len(c) * a.shape[1]):
    rel = np.exp(-np.abs(a[sl, None, :] - c[None, :, :]).sum(-1) / sigma)   # (rows, C)
    s = sim[sl]
    top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < len(c) else np.tile(np.arange(len(c)), (len(s), 1))
    # Order the k retrieved by similarity (descending), ties by candidate index.
    order = np.lexsort((top, -np.take_along_axis(s, top, 1)), axis=1)
    top = np.take_along_axis(top, order, 1)
    dcg = (np.take_along_axis(rel, top, 1) * discount).sum(1)
    best = -np.partition(-rel, k - 1, axis=1)[:, :k] if k < len(c) else rel
    ideal = -np.sort(-best, axis=1)                                            # descending
    total += float((dcg / (ideal * discount).sum(1)).sum())
  return total / len(a)


# ----------------------------------------------------------------------------------------------------------
# Emotion recognition from embeddings.


def ccc(x, y, axis: int = 0):
  """Concordance correlation coefficient 2 cov(x, y) / (var x + var y + (mean x - mean y)^2).

  Population (biased) moments. x, y: (N,) -> float, or (N, A) -> (A,) along ``axis``. 0/0 (both
  constant and equal) gives 1.0 (perfect agreement)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape:
    raise ValueError(f"x, y: shapes differ ({x.shape} vs {y.shape})")
  if x.size == 0:
    raise ValueError("x, y: empty")
  mx, my = x.mean(axis, keepdims=True), y.mean(axis, keepdims=True)
  cov = ((x - mx) * (y - my)).mean(axis)
  denominator = x.var(axis) + y.var(axis) + np.squeeze((mx - my) ** 2, axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    value = np.where(denominator > 0, 2.0 * cov / np.where(denominator > 0, denominator, 1.0), 1.0)
  return float(value) if value.ndim == 0 else value


def pairwise_ranking_accuracy(scores, labels, margin: float = 0.0, block: int = 1024) -> float:
  """Fraction of ordered pairs with |y_i - y_j| > margin (ties excluded) whose scores order them like the
  labels (score ties count 1/2); mean over attributes. scores/labels (N,) or (N, A). NumPy, row-blocked."""
  f = np.asarray(scores, np.float64)
  y = np.asarray(labels, np.float64)
  if f.ndim == 1:
    f, y = f[:, None], (y[:, None] if y.ndim == 1 else y)
  if f.shape != y.shape or f.ndim != 2:
    raise ValueError(f"scores {np.shape(scores)} and labels {np.shape(labels)} must have the same (N,)/(N, A) shape")
  if np.isnan(y).any():
    raise ValueError("labels contains NaN")
  correct = np.zeros(f.shape[1])
  count = np.zeros(f.shape[1])
  for start in range(0, f.shape[0], block):
    dy = y[start:start + block, None, :] - y[None, :, :]
    df = f[start:start + block, None, :] - f[None, :, :]
    inc = (np.abs(dy) > margin) & (dy != 0)
    agree = np.where(df * dy > 0, 1.0, np.where(df == 0, 0.5, 0.0))
    correct += np.sum(np.where(inc, agree, 0.0), axis=(0, 1))
    count += np.sum(inc, axis=(0, 1))
  acc = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
  return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def zero_shot_attribute_prediction(prompt_sim, prompt_levels, *, temperature: float = 0.05) -> np.ndarray:
  """Predicts each clip's attribute from its similarities to K level prompts.

  Args:
    prompt_sim: (K, N) similarities of the K level prompts to N clips (cosine, in [-1, 1]).
    prompt_levels: (K,) level of each prompt.
    temperature: softmax temperature over the prompts.
  Returns (N,): sum_k softmax_k(prompt_sim[:, n] / temperature) * level_k, a value between the lowest
  and the highest level.
  """
  prompt_sim = _as_2d("prompt_sim", prompt_sim, np.float64)
  levels = _as_1d("prompt_levels", prompt_levels)
  if prompt_sim.shape[0] != len(levels):
    raise ValueError(f"prompt_sim: {prompt_sim.shape[0]} rows but prompt_levels has {len(levels)} entries")
  if not temperature > 0:
    raise ValueError(f"temperature: must be > 0, got {temperature}")
  z = prompt_sim / temperature
  w = np.exp(z - z.max(axis=0, keepdims=True))
  return (levels[:, None] * w).sum(0) / w.sum(0)


def ridge_fit(x, y, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Closed-form ridge regression with an unpenalised intercept.

  x: (N, D), y: (N, A). Returns (w (D, A), b (A,)) minimising ||x w + b - y||^2 + alpha ||w||^2. Uses the
  primal normal equations when D <= N, the dual (kernel) form otherwise."""
  x, y = _as_2d("train_x", x, np.float64), _labels_2d("train_y", y)
  if len(x) != len(y):
    raise ValueError(f"train_x, train_y: row counts differ ({len(x)} vs {len(y)})")
  if not alpha > 0:
    raise ValueError(f"alpha: must be > 0, got {alpha}")
  mx, my = x.mean(0), y.mean(0)
  xc, yc = x - mx, y - my
  n, d = xc.shape
  if d <= n:
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(d), xc.T @ yc)
  else:
    w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(n), yc)
  return w, my - mx @ w


def ridge_probe(train_x, train_y, test_x, test_y, alpha: float = 1.0) -> np.ndarray:
  """Linear probe on frozen embeddings: ridge fit on train, CCC per attribute on test.

  train_x: (N, D), train_y: (N, A) or (N,), test_x: (M, D), test_y: (M, A) or (M,). Returns (A,) CCC."""
  w, b = ridge_fit(train_x, train_y, alpha)
  test_x = _as_2d("test_x", test_x, np.float64)
  test_y = _labels_2d("test_y", test_y)
  if test_x.shape[1] != w.shape[0] or test_y.shape[1] != w.shape[1] or len(test_x) != len(test_y):
    raise ValueError(f"test_x {test_x.shape}, test_y {test_y.shape}: do not match the training data "
                     f"({w.shape[0]} features, {w.shape[1]} targets)")
  return np.atleast_1d(ccc(test_x @ w + b, test_y))


# ----------------------------------------------------------------------------------------------------------
# Everything at once.


def _prompt_metrics(speech, labels, prompt_embeddings, prompt_levels, temperature,
                    tag: str = "") -> dict[str, float]:
  """Zero-shot CCC and prompt ordinality per attribute with level prompts (see ``summarize``); ``tag`` goes
  between the metric's name and the attribute (``ccc_zero_shot_fixed_arousal``)."""
  out = {}
  for attribute, emb in prompt_embeddings.items():
    column = _attribute_column(attribute)
    if prompt_levels is None or attribute not in prompt_levels:
      raise ValueError(f"prompt_levels: missing the levels of the {attribute!r} prompts")
    prompt_sim = l2_normalize(_as_2d(f"prompt_embeddings[{attribute!r}]", emb, np.float32)) @ speech.T
    levels = prompt_levels[attribute]
    name = f"{tag}{attribute}"
    pred = zero_shot_attribute_prediction(prompt_sim, levels, temperature=temperature)
    out[f"ccc_zero_shot_{name}"] = ccc(pred, labels[:, column])
    p = prompt_ordinal_consistency(prompt_sim, levels, labels[:, column])
    out[f"prompt_tau_{name}"] = p["signed_tau"]
    out[f"prompt_distance_tau_{name}"] = p["distance_tau"]
    out[f"prompt_order_tau_{name}"] = p["order_tau"]
    out[f"prompt_monotone_{name}"] = float(p["monotone"])
  return out


def _retrieval_metrics(speech, labels, query_embeddings, query_values, retrieval_levels, retrieval_draws,
                       retrieval_top_k, seed) -> dict[str, float]:
  """The paper's ordinal consistency (``aoc``, ``voc``: the retrieval Kendall tau) per attribute with a query
  pool, and ``aoc_voc_mean`` when both are there (see ``summarize``)."""
  out = {}
  for attribute, emb in query_embeddings.items():
    column = _attribute_column(attribute)
    if query_values is None or attribute not in query_values:
      raise ValueError(f"query_values: missing the values of the {attribute!r} queries")
    query_sim = l2_normalize(_as_2d(f"query_embeddings[{attribute!r}]", emb, np.float32)) @ speech.T
    num_levels = min(retrieval_levels, len(np.unique(query_values[attribute])))
    r = retrieval_kendall_tau(query_sim, query_values[attribute], labels[:, column], num_levels=num_levels,
                              num_draws=retrieval_draws, top_k=min(retrieval_top_k, len(speech)), seed=seed)
    name = ORDINAL_CONSISTENCY_NAMES[attribute]
    out[name] = r["tau"]
    out[f"{name}_std"] = r["tau_std"]
    out["aoc_voc_num_levels"] = float(r["num_levels"])
    out["aoc_voc_num_draws"] = float(r["num_draws"])
    out["aoc_voc_top_k"] = float(r["top_k"])
  if "aoc" in out and "voc" in out:
    out["aoc_voc_mean"] = 0.5 * (out["aoc"] + out["voc"])
  return out


def summarize(speech, text, labels, *, prompt_embeddings: Mapping[str, np.ndarray] | None = None,
              prompt_levels: Mapping[str, np.ndarray] | None = None,
              fixed_prompt_embeddings: Mapping[str, np.ndarray] | None = None,
              fixed_prompt_levels: Mapping[str, np.ndarray] | None = None,
              paraphrase_prompt_embeddings: Mapping[str, np.ndarray] | None = None,
              paraphrase_prompt_levels: Mapping[str, np.ndarray] | None = None,
              query_embeddings: Mapping[str, np.ndarray] | None = None,
              query_values: Mapping[str, np.ndarray] | None = None,
              train_speech=None, train_labels=None, retrieval_levels: int = 5, retrieval_draws: int = 200,
              retrieval_top_k: int = 1, seed: int = 0, ndcg_k: int = 10, ndcg_sigma: float = 1.0,
              probe_alpha: float = 1.0, zero_shot_temperature: float = 0.05,
              exact_wasserstein_max_n: int = 2048) -> dict[str, float]:
  """Every metric of one split as a flat dict[str, float] with stable names.

  Args:
    speech, text: (N, D) paired embeddings (normalised here again, defensively).
    labels: (N, 3) arousal, valence, dominance.
    prompt_embeddings / prompt_levels: {attribute: (K, D)} level-prompt embeddings (one per level: the
      ``mean_by_level`` of the template descriptions of ``descriptions.level_descriptions``) and
      {attribute: (K,)} their levels -> prompt ordinality and zero-shot CCC.
    fixed_prompt_embeddings / fixed_prompt_levels: the same for the fixed out-of-template prompts
      ("very low arousal" ...) -> the same metrics with ``fixed_`` before the attribute.
    paraphrase_prompt_embeddings / paraphrase_prompt_levels: the same for the free-form paraphrased prompts
      (``descriptions.paraphrased_level_prompts``) -> the same metrics with ``paraphrase_`` before the attribute.
    query_embeddings / query_values: {attribute: (Q, D)} description pools and {attribute: (Q,)} their
      values -> the retrieval Kendall tau (``aoc`` / ``voc``).
    train_speech, train_labels: (M, D), (M, 3) train split for the ridge probe.
  Keys: anchor_tau_A_s2t, anchor_tau_A_t2s, anchor_tau_A for A = arousal, valence (the anchor-wise Kendall
    tau, ``anchor_kendall_tau``; not the paper's AOC / VOC), mmd,
    wasserstein (exact W1, on a random subset of exact_wasserstein_max_n pairs for larger splits),
    wasserstein_num_points, wasserstein_sliced (sliced estimate on the whole split), r{1,5,10}_{s2t,t2s},
    ndcg10_s2t, ndcg10_t2s, ndcg10_mean; per attribute A with prompts: ccc_zero_shot_A, prompt_tau_A,
    prompt_distance_tau_A, prompt_order_tau_A, prompt_monotone_A (with fixed prompts also
    ccc_zero_shot_fixed_A, prompt_tau_fixed_A, ...; with paraphrased prompts ccc_zero_shot_paraphrase_A, ...);
    with the train split: ccc_probe_A for the three attributes and ccc_probe_mean; per attribute A with a
    query pool (arousal, valence): the paper's ordinal consistency ``aoc`` / ``voc`` (the retrieval Kendall
    tau) and ``aoc_std`` / ``voc_std``, ``aoc_voc_mean``, and the protocol's ``aoc_voc_num_levels`` /
    ``aoc_voc_num_draws`` / ``aoc_voc_top_k``; num_clips.
  """
  speech = l2_normalize(_as_2d("speech", speech, np.float32))
  text = l2_normalize(_as_2d("text", text, np.float32))
  labels = _as_2d("labels", labels, np.float64)
  if speech.shape != text.shape:
    raise ValueError(f"speech, text: shapes differ ({speech.shape} vs {text.shape})")
  if labels.shape != (len(speech), 3):
    raise ValueError(f"labels: expected shape ({len(speech)}, 3), got {labels.shape}")
  out: dict[str, float] = {"num_clips": float(len(speech))}
  sim = speech @ text.T
  for attribute in ("arousal", "valence"):
    y = labels[:, _attribute_column(attribute)]
    name = f"anchor_tau_{attribute}"
    out[f"{name}_s2t"] = anchor_kendall_tau(sim, y, y)
    out[f"{name}_t2s"] = anchor_kendall_tau(np.ascontiguousarray(sim.T), y, y)
    out[name] = 0.5 * (out[f"{name}_s2t"] + out[f"{name}_t2s"])
  out["mmd"] = mmd(speech, text, seed=seed)
  # "wasserstein" is always the exact W1, so that it means the same at every split size: above
  # exact_wasserstein_max_n clips, on a seeded random subset of that many pairs. The sliced estimate of the
  # whole split is a second, different quantity (a lower bound, see `wasserstein`).
  subset = np.arange(len(speech))
  if len(speech) > exact_wasserstein_max_n:
    subset = np.sort(np.random.default_rng(seed).choice(len(speech), exact_wasserstein_max_n, replace=False))
  out["wasserstein"] = wasserstein(speech[subset], text[subset], exact_max_n=len(subset)).value
  out["wasserstein_num_points"] = float(len(subset))
  out["wasserstein_sliced"] = wasserstein(speech, text, exact_max_n=0, seed=seed).value
  out.update(recall_at_k(sim, (1, 5, 10)))
  out[f"ndcg{ndcg_k}_s2t"] = ndcg_at_k(sim, labels, labels, k=ndcg_k, sigma=ndcg_sigma)
  out[f"ndcg{ndcg_k}_t2s"] = ndcg_at_k(sim.T, labels, labels, k=ndcg_k, sigma=ndcg_sigma)
  out[f"ndcg{ndcg_k}_mean"] = 0.5 * (out[f"ndcg{ndcg_k}_s2t"] + out[f"ndcg{ndcg_k}_t2s"])
  for tag, embeddings, levels in (("", prompt_embeddings, prompt_levels),
                                  ("fixed_", fixed_prompt_embeddings, fixed_prompt_levels),
                                  ("paraphrase_", paraphrase_prompt_embeddings, paraphrase_prompt_levels)):
    out.update(_prompt_metrics(speech, labels, embeddings or {}, levels, zero_shot_temperature, tag=tag))
  if train_speech is not None and train_labels is not None:
    probe = ridge_probe(l2_normalize(_as_2d("train_speech", train_speech, np.float32)), train_labels, speech,
                        labels, alpha=probe_alpha)
    for column, attribute in enumerate(LABEL_NAMES):
      out[f"ccc_probe_{attribute}"] = float(probe[column])
    out["ccc_probe_mean"] = float(np.mean(probe))
  out.update(_retrieval_metrics(speech, labels, query_embeddings or {}, query_values, retrieval_levels,
                                retrieval_draws, retrieval_top_k, seed))
  return {k: float(v) for k, v in out.items()}


def _attribute_column(attribute: str) -> int:
  if attribute not in LABEL_NAMES:
    raise ValueError(f"attribute: expected one of {LABEL_NAMES}, got {attribute!r}")
  return LABEL_NAMES.index(attribute)


# ----------------------------------------------------------------------------------------------------------
# Metric names across releases.


def upgrade_metric_names(values: Mapping[str, float]) -> dict[str, float]:
  """A metrics dict written under earlier names (``schema.METRIC_RENAMES``) with today's names; today's names pass."""
  return {METRIC_RENAMES.get(k, k): v for k, v in values.items()}


def read_metrics_file(path: str) -> dict:
  """A metrics JSON of ``--mode=eval`` / ``--mode=export`` / periodic evaluation (``{"step", "split",
  "metrics"}``), its metrics under today's names whatever release wrote it."""
  with open(path) as f:
    payload = json.load(f)
  if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), dict):
    raise ValueError(f"{path}: not an ERCLAP metrics file (no 'metrics' object)")
  return dict(payload, metrics=upgrade_metric_names(payload["metrics"]))
