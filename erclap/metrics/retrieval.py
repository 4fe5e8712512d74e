"""Paired cross-modal retrieval: recall@k (``recall_at_k``) and nDCG@k with graded relevance from label distance
(``ndcg_at_k``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from erclap.metrics.arrays import _as_2d, _labels_2d, _row_chunks


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


