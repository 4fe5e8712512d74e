"""Emotion recognition from embeddings: the concordance correlation (``ccc``, also stage 1's loss), pairwise
ranking accuracy, zero-shot attribute prediction from level prompts, and a closed-form ridge probe (``ridge_fit`` /
``ridge_probe``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from erclap.metrics.arrays import _as_1d, _as_2d, _labels_2d


def ccc(x, y, axis: int = 0):
  """Lin's concordance correlation coefficient 2 cov(x, y) / (var x + var y + (mean x - mean y)^2).

  The one definition of ERCLAP's CCC: the metrics and stage 1's ``losses.ccc_loss`` (1 - CCC) both use it.
  Population (biased) moments along ``axis``. x, y of the same shape: (N,) -> a scalar, (N, A) -> (A,) with
  ``axis=0``.

  Constant inputs: when one side is constant the covariance is 0, so CCC is 0 (no agreement in how the values
  move), except when both sides are the same constant: the denominator is then 0 and CCC is 1.0 (x == y, perfect
  agreement: the limit of CCC(x, x) = 1). Two different constants give 0 (their squared mean difference is > 0).

  NumPy inputs are computed in float64 and give a Python float (or a float64 array); JAX arrays (also traced,
  inside ``jax.jit`` or ``jax.grad``) in float32, giving a JAX array with a finite gradient everywhere.

  Raises:
    ValueError: the shapes differ, or the inputs are empty.
  """
  traced = isinstance(x, jax.Array) or isinstance(y, jax.Array)
  xp, dtype = (jnp, jnp.float32) if traced else (np, np.float64)
  x, y = xp.asarray(x, dtype), xp.asarray(y, dtype)
  if x.shape != y.shape:
    raise ValueError(f"ccc: x and y shapes differ ({x.shape} vs {y.shape})")
  if x.size == 0:
    raise ValueError("ccc: x and y are empty")
  mx, my = xp.mean(x, axis), xp.mean(y, axis)
  xc, yc = x - xp.expand_dims(mx, axis), y - xp.expand_dims(my, axis)
  cov = xp.mean(xc * yc, axis)
  denominator = xp.mean(xc * xc, axis) + xp.mean(yc * yc, axis) + (mx - my) ** 2
  # 0 only for two equal constants (see above); the clamp keeps the unselected branch (and its gradient) finite.
  value = xp.where(denominator > 0, 2.0 * cov / xp.maximum(denominator, 1e-12), 1.0)
  if traced:
    return value
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


