"""Stage-1 (SER) losses on predicted attributes: ``ccc_loss`` (mean 1 - CCC, the concordance correlation of
``erclap.metrics.ccc``: the metric and the loss share one definition) and the RankNet ``pairwise_ranking_loss``
over in-batch pairs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from erclap.losses._core import _check_batch, _gather, _is_concrete, _mesh_axes, _shard_rows
from erclap.metrics.regression import ccc


def ccc_loss(pred, target):
  """Mean over attributes of 1 - CCC (MSP-Podcast challenge convention). pred/target (N, A) or (N,)."""
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f"ccc_loss: pred {pred.shape} and target {target.shape} must have the same shape")
  if pred.ndim not in (1, 2) or pred.shape[0] < 2:
    raise ValueError(f"ccc_loss: pred must be (N,) or (N, A) with N >= 2, got {pred.shape}")
  return jnp.mean(1.0 - ccc(pred, target, axis=0))


def _as_attr_matrix(name: str, x, n: int | None = None):
  x = jnp.asarray(x)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2 or (n is not None and x.shape[0] != n):
    raise ValueError(f"{name} must have shape (N,) or (N, A) with N={n}, got {x.shape}")
  return x.astype(jnp.float32)


def pairwise_ranking_loss(scores, labels, *, margin: float = 0.0, scale: float = 1.0, mesh: Mesh | None = None):
  """RankNet loss over all ordered in-batch pairs, per attribute. scores/labels (N,) or (N, A) -> scalar.

  P(y_i > y_j) = sigmoid((f_i - f_j) / scale), cross-entropy against the label order; pairs with
  |y_i - y_j| <= margin are excluded (ties always). Per attribute the mean over its included pairs, then the
  mean over attributes (an attribute without included pairs contributes 0). With ``mesh`` the rows are split
  over the batch axes like the RNC loss.
  """
  f = _as_attr_matrix("scores", scores)
  n = f.shape[0]
  y = _as_attr_matrix("labels", labels, n)
  if y.shape != f.shape:
    raise ValueError(f"scores {f.shape} and labels {y.shape} must have the same shape")
  _check_batch("scores", n)
  if _is_concrete(y) and bool(np.isnan(np.asarray(y)).any()):
    raise ValueError("labels contains NaN")
  if float(margin) < 0:
    raise ValueError(f"margin must be >= 0, got {margin}")
  if not float(scale) > 0:
    raise ValueError(f"scale must be > 0, got {scale}")
  axes = _mesh_axes(mesh, n)

  def local(f_loc, y_loc):
    f_all, y_all = _gather(f_loc, axes), _gather(y_loc, axes)
    dy = y_loc[:, None, :] - y_all[None, :, :]                      # (n_loc, N, A)
    inc = jnp.abs(dy) > margin
    inc = inc & (dy != 0)
    sign = jnp.sign(dy)
    logits = (f_loc[:, None, :] - f_all[None, :, :]) / scale
    # -log sigmoid(sign * logit) = softplus(-sign * logit), stable for large |logit|
    pair = jnp.where(inc, jax.nn.softplus(-sign * logits), 0.0)
    return jnp.sum(pair, axis=(0, 1)), jnp.sum(inc, axis=(0, 1)).astype(jnp.float32)

  total, count = _shard_rows(mesh, axes, local, (f, y))
  return jnp.mean(jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0))
