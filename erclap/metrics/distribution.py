"""The modality gap: how far apart the speech and the text embeddings lie in the joint space, measured several
ways (definitions and formulas: docs/metrics.md, section "Modality gap").

Distribution distances: the unbiased squared MMD with a Gaussian kernel (``mmd``; median-heuristic or fixed
bandwidth) or a linear kernel (``mmd_linear``), the W1 (earth mover's) distance (``wasserstein``: exact, or a
sliced estimate; ``wasserstein_centered``: exact, after removing each modality's mean). Paired and grouped
measures: the distance between the two centroids (``centroid_distance``), the mean cosine of paired rows
(``mean_paired_cosine``), and per description the distance between its clips' speech centroid and its text
embedding (``description_centroid_gap``). ``modality_gap_metrics`` computes them all under the names of the
metrics dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import optimize, special

from erclap.metrics.arrays import _as_2d, _row_chunks, l2_normalize

# The Gaussian kernel bandwidth of ``mmd_fixed``. Distances between unit vectors lie in [0, 2], and sigma = 1
# keeps exp(-d^2 / (2 sigma^2)) informative over that whole range. One value for every model makes the values
# comparable across models; the median heuristic of ``mmd`` adapts sigma to each model's spread instead.
FIXED_MMD_BANDWIDTH = 1.0

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




def _unit_pair(x, y, *, paired: bool) -> tuple[np.ndarray, np.ndarray]:
  """Both point clouds as float64 with L2-normalised rows, after checking them."""
  x, y = _as_2d("x", x, np.float64), _as_2d("y", y, np.float64)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x, y: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
  if paired and len(x) != len(y):
    raise ValueError(f"x, y: need paired rows (the same count), got {len(x)} and {len(y)}")
  if len(x) == 0 or len(y) == 0:
    raise ValueError(f"x, y: empty point clouds (shapes {x.shape} and {y.shape})")
  return l2_normalize(x), l2_normalize(y)


def centroid_distance(x, y) -> float:
  """Euclidean distance between the two modalities' centroids (``centroid_distance``; docs/metrics.md).

  || mean_i x^_i - mean_j y^_j ||_2, where x^_i = x_i / ||x_i|| (rows L2-normalised first).

  Args:
    x: (m, D) embeddings of one modality. y: (n, D) of the other (m and n may differ).
  Returns:
    The distance, in [0, 2]; its square is the biased linear-kernel MMD (see ``mmd_linear``).
  """
  x, y = _unit_pair(x, y, paired=False)
  return float(np.linalg.norm(x.mean(0) - y.mean(0)))


def mean_paired_cosine(x, y) -> float:
  """Mean cosine similarity of paired rows (``paired_cosine``; docs/metrics.md): mean_i <x^_i, y^_i>.

  Args:
    x, y: (N, D) embeddings of the same N clips, row i of x paired with row i of y.
  Returns:
    The mean cosine, in [-1, 1] (1: every pair coincides).
  """
  x, y = _unit_pair(x, y, paired=True)
  return float(np.mean(np.sum(x * y, axis=1)))


def mmd_linear(x, y) -> float:
  """Unbiased squared MMD with the linear kernel k(a, b) = <a, b> on L2-normalised rows (``mmd_linear``).

  MMD_u^2 = sum_{i!=j} <x^_i, x^_j> / (m(m-1)) + sum_{i!=j} <y^_i, y^_j> / (n(n-1))
            - 2 sum_{i,j} <x^_i, y^_j> / (mn),
  computed in O((m + n) D) from the sums of the rows: sum_{i!=j} <x^_i, x^_j> = ||sum_i x^_i||^2 -
  sum_i ||x^_i||^2. The biased version (the i = j terms kept, divided by m^2 and n^2) equals
  ``centroid_distance(x, y) ** 2``; the unbiased one can be slightly negative when the means are equal.

  Args:
    x: (m, D), y: (n, D) embeddings (m, n >= 2; they may differ).
  Returns:
    The estimate (a float; docs/metrics.md).
  """
  x, y = _unit_pair(x, y, paired=False)
  m, n = len(x), len(y)
  if m < 2 or n < 2:
    raise ValueError(f"x, y: need at least 2 samples each for the unbiased MMD, got {m} and {n}")
  sx, sy = x.sum(0), y.sum(0)
  kxx = (sx @ sx - np.sum(x * x)) / (m * (m - 1))
  kyy = (sy @ sy - np.sum(y * y)) / (n * (n - 1))
  return float(kxx + kyy - 2.0 * (sx @ sy) / (m * n))


def _exact_subset(num_points: int, max_points: int, seed: int, name: str) -> np.ndarray:
  """Indices of the rows the exact W1 uses: all, or a seeded random sorted subset of max_points of them."""
  if max_points < 1:
    raise ValueError(f"{name}: must be >= 1, got {max_points}")
  if num_points <= max_points:
    return np.arange(num_points)
  return np.sort(np.random.default_rng(seed).choice(num_points, max_points, replace=False))


def wasserstein_centered(x, y, *, max_points: int = 2048, seed: int = 0) -> WassersteinResult:
  """Exact W1 between the two point clouds after centring each (``wasserstein_centered``; docs/metrics.md).

  Rows are L2-normalised, then each modality's mean is subtracted (x^_i - mean x^, y^_i - mean y^, means over
  all N rows; no re-normalisation), then W1 is the mean cost of the optimal assignment (Euclidean ground
  cost), as ``wasserstein``. What remains is the difference in shape, the gap with the offset between the
  centroids taken out.

  Args:
    x, y: (N, D) equal-size point clouds.
    max_points: above this many rows, W1 is taken on a seeded random subset of max_points row indices (the
      same rows of x and y), the subset rule of ``wasserstein`` in ``summarize``.
    seed: numpy seed of the subset.
  Returns:
    WassersteinResult(value, "exact", num_points, 0).
  """
  x, y = _unit_pair(x, y, paired=True)
  subset = _exact_subset(len(x), max_points, seed, "max_points")
  x, y = x - x.mean(0), y - y.mean(0)
  return wasserstein(x[subset], y[subset], exact_max_n=len(subset), normalize=False)


def description_centroid_gap(x, y, descriptions: Sequence[str]) -> dict:
  """Per description, the distance between its clips' speech centroid and its text embedding.

  Rows are grouped by their description string. For group g with clips C_g: c_g = mean_{i in C_g} x^_i (the
  speech centroid, not re-normalised) and t_g = normalize(mean_{i in C_g} y^_i) (the group's text embedding:
  identical texts give identical y^_i when the text tower is deterministic, and t_g is then that row). With N
  clips (docs/metrics.md):

    distance = sum_g |C_g| ||c_g - t_g||_2 / N        cosine = sum_g |C_g| cos(c_g, t_g) / N

  (clip-weighted means; cos(c_g, t_g) = 0 where c_g = 0). With every description unique they are the mean
  paired distance mean_i ||x^_i - y^_i|| and ``mean_paired_cosine``.

  Args:
    x: (N, D) speech embeddings. y: (N, D) text embeddings of the same clips.
    descriptions: N strings, the description of each row.
  Returns:
    {"distance": float, "cosine": float, "num_descriptions": int (the number of distinct descriptions)}.
  """
  x, y = _unit_pair(x, y, paired=True)
  descriptions = list(descriptions)
  if len(descriptions) != len(x):
    raise ValueError(f"descriptions: {len(descriptions)} entries for {len(x)} embedding rows")
  bad = next((i for i, d in enumerate(descriptions) if not isinstance(d, str)), None)
  if bad is not None:
    raise ValueError(f"descriptions: expected strings, got {descriptions[bad]!r} at row {bad}")
  _, group = np.unique(np.asarray(descriptions, dtype=object), return_inverse=True)
  group = group.reshape(-1)
  counts = np.bincount(group)
  order = np.argsort(group, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  centroid = np.add.reduceat(x[order], starts, axis=0) / counts[:, None]
  text = l2_normalize(np.add.reduceat(y[order], starts, axis=0))
  weight = counts / len(x)
  distance = np.linalg.norm(centroid - text, axis=1)
  cosine = np.sum(l2_normalize(centroid) * text, axis=1)
  return dict(distance=float(weight @ distance), cosine=float(weight @ cosine), num_descriptions=len(counts))


def modality_gap_metrics(speech, text, descriptions: Sequence[str] | None = None, *, seed: int = 0,
                         exact_wasserstein_max_n: int = 2048) -> dict[str, float]:
  """Every modality-gap measure of paired speech and text embeddings, under the names of the metrics dict.

  Args:
    speech, text: (N, D) embeddings of the same clips (row i paired); rows are L2-normalised here (float32).
    descriptions: N strings (one per row) -> also the per-description centroid gap.
    seed: seed of the median-heuristic subset, the exact-W1 subset and the sliced projections.
    exact_wasserstein_max_n: the exact W1 (``wasserstein``, ``wasserstein_centered``) uses a seeded random
      subset of this many pairs on larger splits.
  Returns:
    {mmd, wasserstein, wasserstein_num_points, wasserstein_sliced, mmd_fixed, mmd_linear, centroid_distance,
    paired_cosine, wasserstein_centered} and, with descriptions, description_centroid_distance,
    description_centroid_cosine and num_descriptions; all floats. Definitions: docs/metrics.md.
  """
  speech = l2_normalize(_as_2d("speech", speech, np.float32))
  text = l2_normalize(_as_2d("text", text, np.float32))
  if speech.shape != text.shape:
    raise ValueError(f"speech, text: shapes differ ({speech.shape} vs {text.shape})")
  return _unit_rows_gap(speech, text, descriptions, seed=seed, exact_wasserstein_max_n=exact_wasserstein_max_n)


def _unit_rows_gap(speech: np.ndarray, text: np.ndarray, descriptions: Sequence[str] | None, *, seed: int,
                   exact_wasserstein_max_n: int) -> dict[str, float]:
  """``modality_gap_metrics`` of checked, equal-shape, L2-normalised float32 embeddings."""
  out = {"mmd": mmd(speech, text, seed=seed)}
  # "wasserstein" is always the exact W1, so that it means the same at every split size: above
  # exact_wasserstein_max_n clips, on a seeded random subset of that many pairs. The sliced estimate of the
  # whole split is a second, different quantity (a lower bound, see `wasserstein`).
  subset = _exact_subset(len(speech), exact_wasserstein_max_n, seed, "exact_wasserstein_max_n")
  out["wasserstein"] = wasserstein(speech[subset], text[subset], exact_max_n=len(subset)).value
  out["wasserstein_num_points"] = float(len(subset))
  out["wasserstein_sliced"] = wasserstein(speech, text, exact_max_n=0, seed=seed).value
  out["mmd_fixed"] = mmd(speech, text, bandwidth=FIXED_MMD_BANDWIDTH)
  out["mmd_linear"] = mmd_linear(speech, text)
  out["centroid_distance"] = centroid_distance(speech, text)
  out["paired_cosine"] = mean_paired_cosine(speech, text)
  out["wasserstein_centered"] = wasserstein_centered(speech, text, max_points=exact_wasserstein_max_n,
                                                     seed=seed).value
  if descriptions is not None:
    gap = description_centroid_gap(speech, text, descriptions)
    out["description_centroid_distance"] = gap["distance"]
    out["description_centroid_cosine"] = gap["cosine"]
    out["num_descriptions"] = float(gap["num_descriptions"])
  return {k: float(v) for k, v in out.items()}
