"""ERCLAP's losses, and ``LOSSES``, the registry of the cross-modal losses ``config.loss`` names.

* ``rnc``: the Rank-N-Contrast loss (``rnc_loss``, ``cross_modal_rnc_loss``);
* ``contrastive``: the baselines ``infonce_loss`` (CLAP's SCE / NT-Xent) and ``supcon_loss``, and
  ``classes_from_labels`` (SupCon classes from the attribute labels);
* ``ser``: the stage-1 losses ``ccc_loss`` (1 - ``metrics.ccc``) and ``pairwise_ranking_loss``;
* ``_core``: validation, similarities and the row sharding they share.

A cross-modal loss is ``fn(speech, text, batch, *, temperature, mesh, options) -> scalar`` (``batch`` holds
"labels" (N, 3) and optionally "class_id" (N,); ``options`` is ``config.loss_options``), registered under its
``config.loss`` name with ``register``; ``LOSSES`` (read only) is what the config is validated against and
``get_clap_loss(name)`` what the training step calls. Every loss reads ``similarity`` (``SIMILARITIES``),
``joint`` (the joint 2N form: speech and text rows form one set of anchors, each against the other 2N - 1
rows) and ``same_modality_weight`` (the joint form's weight lambda of the same-modality rows: 1 = the joint form,
0 = the two-direction form); each entry lists the other options it reads (rnc: ``label_distance``
(``LABEL_DISTANCES``), ``rank_labels``, ``rank_label_weights``, ``rank_terms`` (``RANK_TERMS``), ``row_block``;
supcon: ``supcon_bins``).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from erclap.losses._core import SIMILARITIES
from erclap.losses.contrastive import classes_from_labels, infonce_loss, supcon_loss
from erclap.losses.rnc import _LABEL_DISTANCES as LABEL_DISTANCES
from erclap.losses.rnc import cross_modal_rnc_loss, rnc_loss
from erclap.losses.ser import ccc_loss, pairwise_ranking_loss
from erclap.schema import LABEL_NAMES

__all__ = [
    "COMMON_OPTIONS",
    "LABEL_DISTANCES",
    "LOSSES",
    "RANK_TERMS",
    "SIMILARITIES",
    "ccc_loss",
    "classes_from_labels",
    "cross_modal_rnc_loss",
    "get_clap_loss",
    "infonce_loss",
    "pairwise_ranking_loss",
    "register",
    "rnc_loss",
    "supcon_loss",
]

_BINNED_CLASS_OFFSET = 1 << 20  # supcon: binned class ids live above any categorical id

# --------------------------------------------------------------------------- dispatcher for the training loop


def _option(options, name, default):
  if options is None:
    return default
  if isinstance(options, Mapping):
    return options.get(name, default)
  return getattr(options, name, default)


def _flag(options, name: str) -> bool:
  value = _option(options, name, False)
  if not isinstance(value, bool | np.bool_):
    raise ValueError(f"loss_options.{name} must be True or False, got {value!r}")
  return bool(value)


COMMON_OPTIONS = ("similarity", "joint", "same_modality_weight")  # the loss_options every cross-modal loss reads


def _common(options) -> dict[str, Any]:
  """Keyword arguments every cross-modal loss takes from ``loss_options`` (the weight a float, or a traced
  per-member array as given: ``erclap.members.loss_options``)."""
  lam = _option(options, "same_modality_weight", 1.0)
  return dict(similarity=_option(options, "similarity", "cosine"), joint=_flag(options, "joint"),
              same_modality_weight=lam if isinstance(lam, jax.Array) else float(lam))


RANK_TERMS = ("combined", "per_label")


def _rank_weights(options, num_columns: int) -> dict[str, Any]:
  """``cross_modal_rnc_loss``'s label_weights and per_label from ``loss_options.rank_label_weights`` (one weight
  per ``rank_labels`` entry; () = equal weights) and ``loss_options.rank_terms``."""
  weights = _option(options, "rank_label_weights", ())
  if not isinstance(weights, jax.Array):  # an array: a traced per-member value, its shape checked by the loss
    weights = tuple(weights or ()) or None
    if weights and len(weights) != num_columns:
      raise ValueError(f"loss_options.rank_label_weights={weights}: one weight per loss_options.rank_labels entry "
                       f"({num_columns}), or () for equal weights")
  terms = _option(options, "rank_terms", "combined")
  if terms not in RANK_TERMS:
    raise ValueError(f"loss_options.rank_terms must be one of {RANK_TERMS}, got {terms!r}")
  return dict(label_weights=weights, per_label=terms == "per_label")


def _label_columns(names) -> list[int]:
  names = (names,) if isinstance(names, str) else tuple(names)
  if not names:
    raise ValueError("loss_options.rank_labels must name at least one label column")
  bad = [x for x in names if x not in LABEL_NAMES]
  if bad:
    raise ValueError(f"loss_options.rank_labels: unknown columns {bad}; choose from {LABEL_NAMES}")
  return [LABEL_NAMES.index(x) for x in names]


def _batch_labels(batch) -> Any:
  if "labels" not in batch:
    raise ValueError("batch has no 'labels' (N, 3) entry (arousal, valence, dominance)")
  return batch["labels"]


def _clap_rnc(speech, text, batch, *, temperature, mesh=None, options=None):
  labels = _batch_labels(batch)
  cols = _label_columns(_option(options, "rank_labels", ("arousal", "valence")))
  if jnp.ndim(labels) != 2 or max(cols) >= labels.shape[1]:
    raise ValueError(f"batch['labels'] of shape {jnp.shape(labels)} lacks the columns {cols} of rank_labels")
  return cross_modal_rnc_loss(speech, text, labels[:, jnp.asarray(cols)], temperature=temperature, mesh=mesh,
                              label_distance=_option(options, "label_distance", "l1"),
                              row_block=int(_option(options, "row_block", 0)) or None,
                              **_rank_weights(options, len(cols)), **_common(options))


def _clap_infonce(speech, text, batch, *, temperature, mesh=None, options=None):
  del batch
  return infonce_loss(speech, text, temperature=temperature, mesh=mesh, **_common(options))


def _clap_supcon(speech, text, batch, *, temperature, mesh=None, options=None):
  binned = classes_from_labels(_batch_labels(batch), int(_option(options, "supcon_bins", 3)))
  ids = batch.get("class_id") if hasattr(batch, "get") else None
  if ids is None:
    ids = binned
  else:
    ids = jnp.asarray(ids).astype(jnp.int32)
    if ids.shape != binned.shape:
      raise ValueError(f"batch['class_id'] must have shape {binned.shape}, got {ids.shape}")
    # -1 = no categorical label: such examples use their binned class (ids kept apart from categorical ids)
    ids = jnp.where(ids >= 0, ids, _BINNED_CLASS_OFFSET + binned)
  return supcon_loss(speech, text, ids, temperature=temperature, mesh=mesh, **_common(options))


# --------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class CrossModalLoss:
  """A registered cross-modal loss: its ``config.loss`` name, the function, and the ``config.loss_options`` it
  reads besides ``COMMON_OPTIONS`` (which every loss reads)."""
  name: str
  fn: Callable[..., jax.Array]
  options: tuple[str, ...] = ()


_REGISTRY: dict[str, CrossModalLoss] = {}
LOSSES: Mapping[str, CrossModalLoss] = types.MappingProxyType(_REGISTRY)  # read only: ``register`` adds


def register(name: str, fn: Callable[..., jax.Array], *, options: tuple[str, ...] = ()) -> CrossModalLoss:
  """Registers ``fn`` as the cross-modal loss ``config.loss=name``: all it takes for a config to name it.

  Args:
    name: the ``config.loss`` value.
    fn: ``fn(speech, text, batch, *, temperature, mesh, options) -> scalar`` (see the module docstring).
    options: the ``config.loss_options`` keys it reads besides ``COMMON_OPTIONS``.

  Returns:
    The registry entry.

  Raises:
    ValueError: ``name`` is not an identifier or is registered already.
  """
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"loss name {name!r}: must be an identifier (it is a config value)")
  if name in _REGISTRY:
    raise ValueError(f"loss {name!r} is registered already")
  _REGISTRY[name] = entry = CrossModalLoss(name, fn, tuple(options))
  return entry


register("rnc", _clap_rnc,
         options=("label_distance", "rank_labels", "rank_label_weights", "rank_terms", "row_block"))
register("infonce", _clap_infonce)
register("supcon", _clap_supcon, options=("supcon_bins",))


def get_clap_loss(name: str) -> Callable[..., jax.Array]:
  """The function of the registered cross-modal loss ``name`` (``LOSSES``); ValueError naming the registered
  ones."""
  if name not in _REGISTRY:
    raise ValueError(f"loss must be one of {tuple(_REGISTRY)}, got {name!r}")
  return _REGISTRY[name].fn
