"""The contrastive baselines of the cross-modal loss: symmetric InfoNCE (CLAP's SCE) and supervised contrastive
(SupCon), each in the two-direction cross-modal form or the joint 2N form, and ``classes_from_labels`` (SupCon
classes from a grid over the attribute labels).

Two-direction form: anchors of one modality against the N candidates of the other, both directions averaged.
Joint form (``joint=True``): the 2N rows [speech; text] form one set; each row's candidates are the other
2N - 1 rows of both modalities (itself excluded), as SimCLR's NT-Xent and the original SupCon define it.
With a ``mesh`` each shard holds its anchor rows and all-gathers the candidates; the result equals the
unsharded loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from erclap.losses._core import (
    SIMILARITIES,
    _check_choice,
    _check_pair,
    _check_same_modality_weight,
    _check_temperature,
    _gather,
    _is_concrete,
    _is_weighted,
    _joint_ids,
    _mesh_axes,
    _prepare,
    _row_ids,
    _row_masks,
    _shard_rows,
    _similarity,
)


def _joint_logits(s_loc, t_loc, s_all, t_all, rows, inv_t, similarity: str):
  """The local anchors [s_loc; t_loc] of the joint set [s_all; t_all]: logits (2B, 2N) with -inf at each
  anchor's own column, the mask of the other columns (2B, 2N) and the anchors' partner ids (2B,)."""
  n = s_all.shape[0]
  ids, partners = _joint_ids(rows, n)
  others, _ = _row_masks(2 * n, ids, jnp.ones(ids.shape, bool), True)
  z = _similarity(jnp.concatenate([s_loc, t_loc], axis=0), jnp.concatenate([s_all, t_all], axis=0), similarity)
  return jnp.where(others, z * inv_t, -jnp.inf), others, partners


def _same_modality_weights(rows, n: int, others, lam):
  """Pair weights (2B, 2N) of the local anchors in the joint set: lambda for the other rows of the anchor's
  modality, 1 for the other modality's rows, 0 for the anchor itself; and their logs (-inf where 0). ``lam``: a
  float, or a traced scalar (``_check_same_modality_weight``)."""
  ids, _ = _joint_ids(rows, n)
  same = (ids[:, None] < n) == (jnp.arange(2 * n)[None, :] < n)
  w = jnp.where(others, jnp.where(same, jnp.asarray(lam, jnp.float32), 1.0), 0.0)
  if isinstance(lam, jax.Array):
    log_lam = jnp.log(lam)  # -inf at 0, as below
  else:
    log_lam = math.log(lam) if lam > 0 else -jnp.inf
  return w, jnp.where(others, jnp.where(same, jnp.asarray(log_lam, jnp.float32), 0.0), -jnp.inf)


def infonce_loss(speech, text, *, temperature, mesh: Mesh | None = None, similarity: str = "cosine",
                 joint: bool = False, same_modality_weight: float = 1.0):
  """Symmetric InfoNCE of paired speech/text (N, D) -> float32 scalar; logits z = sim / temperature.

  Default (CLAP's SCE): the mean of the speech->text and text->speech cross-entropies of the paired item among
  all N candidates of the other modality. ``joint=True`` (NT-Xent): each of the 2N rows [speech; text] is an
  anchor, its positive is its partner in the other modality, and the softmax runs over the other 2N - 1 rows
  of both modalities; mean over the 2N rows. ``same_modality_weight`` lambda weighs the same-modality rows in
  the softmax's denominator (sum_k w_ik exp(z_ik), w = lambda within the anchor's modality, 1 across): lambda = 1
  is NT-Xent, lambda = 0 the two-direction form.

  Args:
    speech: (N, D) speech embeddings.
    text: (N, D) text embeddings, row i paired with speech row i.
    temperature: positive scalar.
    mesh: split the rows over its batch axes (``jax.shard_map``); None = unsharded.
    similarity: "cosine" (of the L2-normalised embeddings) or "neg_l2" (-||a - c|| of the raw embeddings).
    joint: the joint 2N form instead of the two-direction one.
    same_modality_weight: lambda >= 0, the weight of the same-modality rows in the joint form (1 unless joint).

  Returns:
    The mean loss, a float32 scalar.

  Raises:
    ValueError: bad shapes, ``similarity``, temperature or ``same_modality_weight``, or a batch the mesh does not
      divide.
  """
  _check_choice("similarity", similarity, SIMILARITIES)
  lam = _check_same_modality_weight(same_modality_weight, joint)
  _check_pair(speech, text)
  n = speech.shape[0]
  _check_temperature(temperature)
  axes = _mesh_axes(mesh, n)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  s, t = _prepare(speech, similarity), _prepare(text, similarity)

  traced = (lam,) if isinstance(lam, jax.Array) else ()  # a traced value enters as an argument, not a closure

  def local(s_loc, t_loc, inv_t, *given):
    lam_ = given[0] if given else lam
    s_all, t_all = _gather(s_loc, axes), _gather(t_loc, axes)
    rows = _row_ids(s_loc.shape[0], axes)
    if joint:
      z, others, partners = _joint_logits(s_loc, t_loc, s_all, t_all, rows, inv_t, similarity)
      pos = jnp.take_along_axis(z, partners[:, None], axis=1)[:, 0]  # the partner: the other modality, weight 1
      if _is_weighted(lam_):
        z = z + _same_modality_weights(rows, s_all.shape[0], others, lam_)[1]
      return (jnp.sum(jax.nn.logsumexp(z, axis=1) - pos),)

    def direction(a, c):
      z = _similarity(a, c, similarity) * inv_t
      pos = jnp.take_along_axis(z, rows[:, None], axis=1)[:, 0]
      return jnp.sum(jax.nn.logsumexp(z, axis=1) - pos)

    return direction(s_loc, t_all), direction(t_loc, s_all)

  sums = _shard_rows(mesh, axes, local, (s, t), (inv_t, *traced))
  if joint:
    return sums[0] / (2 * n)
  return 0.5 * (sums[0] + sums[1]) / n


def _check_class_ids(name: str, ids, n: int):
  ids = jnp.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},), got {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{name} must be integers, got {ids.dtype}")
  if _is_concrete(ids) and bool((np.asarray(ids) < 0).any()):
    raise ValueError(f"{name} must be >= 0 (use classes_from_labels for examples without a class)")
  return ids.astype(jnp.int32)


def supcon_loss(speech, text, class_ids, *, temperature, mesh: Mesh | None = None, similarity: str = "cosine",
                joint: bool = False, same_modality_weight: float = 1.0):
  """Cross-modal supervised contrastive loss (Khosla et al. 2020) -> float32 scalar; z = sim / temperature.

  Default: for anchor i of one modality, the positives are the candidates j of the other modality with
  class_ids[j] == class_ids[i] (always including its own pair); its loss is the mean over positives of
  -log softmax_j(z_i), the denominator running over all N candidates. Mean over anchors, then over the two
  directions. ``joint=True`` (the original single-set SupCon on both modalities): each of the 2N rows
  [speech; text] is an anchor, its positives are all other rows of either modality with its class id (its
  partner among them), and the softmax runs over the other 2N - 1 rows; mean over positives, then over the 2N
  rows. ``same_modality_weight`` lambda weighs the same-modality rows, as positives and in the denominator: row
  i's loss is sum_j w_ij p_ij (-z_ij + log sum_k w_ik exp(z_ik)) / sum_j w_ij p_ij over its positives p, with
  w = lambda within the anchor's modality and 1 across: lambda = 1 is the joint form, lambda = 0 the
  two-direction one.

  Args:
    speech: (N, D) speech embeddings.
    text: (N, D) text embeddings, row i paired with speech row i.
    class_ids: (N,) int >= 0, the class of pair i.
    temperature: positive scalar.
    mesh: split the rows over its batch axes (``jax.shard_map``); None = unsharded.
    similarity: "cosine" (of the L2-normalised embeddings) or "neg_l2" (-||a - c|| of the raw embeddings).
    joint: the joint 2N form instead of the two-direction one.
    same_modality_weight: lambda >= 0, the weight of the same-modality rows in the joint form (1 unless joint).

  Returns:
    The mean loss, a float32 scalar.

  Raises:
    ValueError: bad shapes, ``class_ids``, ``similarity``, temperature or ``same_modality_weight``, or a batch the
      mesh does not divide.
  """
  _check_choice("similarity", similarity, SIMILARITIES)
  lam = _check_same_modality_weight(same_modality_weight, joint)
  _check_pair(speech, text)
  n = speech.shape[0]
  ids = _check_class_ids("class_ids", class_ids, n)
  _check_temperature(temperature)
  axes = _mesh_axes(mesh, n)
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  s, t = _prepare(speech, similarity), _prepare(text, similarity)

  traced = (lam,) if isinstance(lam, jax.Array) else ()  # a traced value enters as an argument, not a closure

  def local(s_loc, t_loc, id_loc, inv_t, *given):
    lam_ = given[0] if given else lam
    s_all, t_all, id_all = _gather(s_loc, axes), _gather(t_loc, axes), _gather(id_loc, axes)
    if joint:
      rows = _row_ids(s_loc.shape[0], axes)
      z, others, _ = _joint_logits(s_loc, t_loc, s_all, t_all, rows, inv_t, similarity)
      pos = others & (jnp.concatenate([id_loc, id_loc])[:, None] == jnp.concatenate([id_all, id_all])[None, :])
      if _is_weighted(lam_):
        w, log_w = _same_modality_weights(rows, s_all.shape[0], others, lam_)
        logp = z - jax.nn.logsumexp(z + log_w, axis=1, keepdims=True)
        w_pos = jnp.where(pos, w, 0.0)  # the partner is a positive of weight 1: the row's weights never sum to 0
        per_row = -jnp.sum(jnp.where(w_pos > 0, w_pos * logp, 0.0), axis=1) / jnp.sum(w_pos, axis=1)
        return (jnp.sum(per_row),)
      logp = z - jax.nn.logsumexp(z, axis=1, keepdims=True)
      # the own column's logp is -inf and never a positive: select, do not multiply (0 * -inf is NaN)
      per_row = -jnp.sum(jnp.where(pos, logp, 0.0), axis=1) / jnp.sum(pos, axis=1)
      return (jnp.sum(per_row),)

    pos = (id_loc[:, None] == id_all[None, :]).astype(jnp.float32)
    n_pos = jnp.sum(pos, axis=1)

    def direction(a, c):
      z = _similarity(a, c, similarity) * inv_t
      logp = z - jax.nn.logsumexp(z, axis=1, keepdims=True)
      return jnp.sum(-jnp.sum(pos * logp, axis=1) / n_pos)

    return direction(s_loc, t_all), direction(t_loc, s_all)

  sums = _shard_rows(mesh, axes, local, (s, t, ids), (inv_t, *traced))
  if joint:
    return sums[0] / (2 * n)
  return 0.5 * (sums[0] + sums[1]) / n


def classes_from_labels(labels, bins: int, low: float = 1.0, high: float = 7.0, columns: Sequence[int] = (0, 1)):
  """Class ids (N,) int32 from a grid of ``bins`` equal bins per label column over [low, high].

  labels (N,) or (N, L); ``columns`` (default arousal, valence) picks the binned columns (those present).
  Values outside [low, high] fall into the edge bins. Id = row-major index in the bins^len(columns) grid.
  """
  if int(bins) < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  if not high > low:
    raise ValueError(f"high ({high}) must be greater than low ({low})")
  y = jnp.asarray(labels)
  if y.ndim == 1:
    y = y[:, None]
  if y.ndim != 2:
    raise ValueError(f"labels must have shape (N,) or (N, L), got {jnp.shape(labels)}")
  cols = [c for c in columns if c < y.shape[1]]
  if not cols:
    raise ValueError(f"labels with {y.shape[1]} columns have none of columns {tuple(columns)}")
  ids = jnp.zeros((y.shape[0],), jnp.int32)
  for col in cols:
    b = jnp.floor((y[:, col].astype(jnp.float32) - low) / (high - low) * bins)
    ids = ids * bins + jnp.clip(b, 0, bins - 1).astype(jnp.int32)
  return ids
