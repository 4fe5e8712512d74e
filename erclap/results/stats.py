"""Summary statistics of repeated runs (seeds): mean, sample standard deviation, Student-t confidence interval.

Pure functions of plain numbers. An interval needs at least two values; with one, ``sd`` and the interval are
None (never 0, which would claim a certainty one run cannot give).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
from scipy import special

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Summary:
  """What ``describe`` reports of n values (``sd``, ``ci_low``, ``ci_high`` are None for n < 2)."""
  n: int
  mean: float | None
  sd: float | None
  ci_low: float | None
  ci_high: float | None


def t_quantile(q: float, df: int) -> float:
  """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom (df >= 1)."""
  if df < 1:
    raise ValueError(f"df={df}: Student's t needs at least one degree of freedom")
  return float(special.stdtrit(df, q))


def describe(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
  """Mean, sample standard deviation (ddof=1) and the two-sided Student-t interval of the mean.

  The interval is mean ± t_{(1+confidence)/2, n-1} · sd / √n: the usual interval for the mean of seeds when their
  spread is estimated from the seeds themselves.

  Args:
    values: finite numbers (None and NaN are refused: a missing metric is not a value).
    confidence: the interval's coverage, in (0, 1).

  Returns:
    A ``Summary``; for no values every field but n is None.
  """
  x = np.asarray(list(values), np.float64)
  if x.ndim != 1 or not np.all(np.isfinite(x)):
    raise ValueError(f"values: expected finite numbers, got {x.tolist()}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence={confidence}: must be in (0, 1)")
  n = len(x)
  if n == 0:
    return Summary(0, None, None, None, None)
  mean = float(np.mean(x))
  if n == 1:
    return Summary(1, mean, None, None, None)
  sd = float(np.std(x, ddof=1))
  half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
  return Summary(n, mean, sd, mean - half, mean + half)
