"""The one timer the benchmarks share: the median wall time of a JAX call after a warm-up (and compile) call."""

from __future__ import annotations

import time


def median_seconds(fn, repeats: int) -> float:
  """Calls ``fn`` once (compile + warm-up), then ``repeats`` times; returns the median seconds of those."""
  import jax  # a child process sets XLA_FLAGS before jax is imported

  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(sorted(times)[len(times) // 2])
