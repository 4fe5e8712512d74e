"""The modality gap: how far apart the speech and the text embeddings lie in the joint space. The unbiased
squared MMD with a Gaussian kernel and median-heuristic bandwidth (``mmd``), and the W1 (earth mover's) distance
(``wasserstein``: exact, or a sliced estimate)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import optimize, special

from erclap.metrics.arrays import _as_2d, _row_chunks, l2_normalize


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


