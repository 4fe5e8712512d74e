"""Vectorised ordinal consistency vs a per-row scipy.stats.kendalltau loop, side by side in one run.

    .venv/bin/python benchmarks/bench_metrics.py [--n 4096] [--dim 512] [--scipy_rows 256]

Times ``metrics.anchor_kendall_tau`` on an (N, N) similarity matrix of random L2-normalised embeddings with
quarter-step labels (many exact ties, as with averaged ratings), and the scipy loop on the first
``scipy_rows`` anchors, extrapolated linearly to N anchors. Also times the other summary metrics at the same
N once. Prints the ratio; figures are single runs on whatever machine this is (shared machines vary).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from erclap import metrics


def timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--scipy_rows", type=int, default=256)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  n = args.n
  labels = rng.integers(4, 29, (n, 3)) / 4.0
  speech = metrics.l2_normalize(rng.normal(size=(n, args.dim)).astype(np.float32))
  text = metrics.l2_normalize(speech + rng.normal(size=speech.shape).astype(np.float32))
  sim = speech @ text.T
  y = labels[:, 0]

  (ours, per_anchor), t_ours = timed(lambda: metrics.anchor_kendall_tau(sim, y, y, return_per_anchor=True))
  rows = min(args.scipy_rows, n)

  def scipy_loop():
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return np.array([stats.kendalltau(sim[i], -np.round(np.abs(y[i] - y), 6)).statistic for i in range(rows)])

  ref, t_rows = timed(scipy_loop)
  t_scipy = t_rows * n / rows
  print(f"anchor_kendall_tau N={n}: vectorised {t_ours:.2f} s | scipy loop {t_rows:.2f} s for {rows} rows "
        f"-> {t_scipy:.2f} s extrapolated to {n} | speed-up x{t_scipy / t_ours:.2f} "
        f"| max |diff| on the compared rows {np.nanmax(np.abs(per_anchor[:rows] - ref)):.1e} | value {ours:.4f}")

  for name, fn in (("mmd", lambda: metrics.mmd(speech, text)),
                   ("wasserstein (exact, N<=2048)", lambda: metrics.wasserstein(speech[:2048], text[:2048])),
                   ("wasserstein (sliced)", lambda: metrics.wasserstein(speech, text, exact_max_n=0)),
                   ("recall_at_k", lambda: metrics.recall_at_k(sim)),
                   ("ndcg_at_k", lambda: metrics.ndcg_at_k(sim, labels, labels))):
    value, seconds = timed(fn)
    shown = value.value if isinstance(value, metrics.WassersteinResult) else value
    print(f"  {name:<30} {seconds:6.2f} s   {shown if not isinstance(shown, dict) else ''}")


if __name__ == "__main__":
  main()
