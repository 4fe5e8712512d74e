"""Evaluation metrics of ERCLAP: ordinality, modality gap, retrieval and emotion recognition from embeddings.

Pure numpy / scipy functions (no JAX state, no I/O), vectorised over rows and chunked so that thousands of
anchors x thousands of candidates fit in modest memory. Conventions:

* Similarity is cosine: ``sim = normalize(speech) @ normalize(text).T``, rows = speech (anchors of the
  speech->text direction), columns = text. The text->speech direction is the same matrix transposed.
* Labels are (N, 3) arrays of (arousal, valence, dominance) on the 1-7 scale; functions that act on one
  attribute take a 1-D column.

Definitions (the paper's exact protocol is not published; these are ours, also described in docs/metrics.md):

* AOC / VOC (``aoc``, ``voc``), the paper's arousal / valence ordinal consistency: Kendall's tau of
  cross-modal retrieval order (``retrieval_kendall_tau``, the paper's protocol as far as it is published): K
  descriptions at distinct levels of one attribute each retrieve their top-k clips; Kendall's tau between
  the levels and the retrieved clips' true values, averaged over M random draws of levels and wordings.
* Anchor-wise Kendall tau (``anchor_tau_<attribute>``, a different statistic, not the paper's): for each
  anchor i, Kendall's tau-b between ``sim[i, :]`` and ``-|y_i - y_j|`` over all candidates j, averaged over
  anchors. A model whose similarities fall off with label distance scores 1.

``schema.METRIC_RENAMES`` maps the names metric files used before (``aoc_mean``, ``retrieval_tau_arousal`` ...) to
today's; ``upgrade_metric_names`` / ``read_metrics_file`` read old files under the new names.

The modality-gap measures (``mmd``, ``mmd_fixed``, ``mmd_linear``, ``centroid_distance``, ``paired_cosine``,
``wasserstein``, ``wasserstein_sliced``, ``wasserstein_centered``, ``description_centroid_*``) are defined, with
their formulas, in docs/metrics.md.

Modules, each importing only ``arrays`` (and ``summary`` the four others): ``arrays`` (input checks, L2
normalisation, mean directions), ``ranking`` (Kendall's tau-b, anchor-wise tau, prompt ordinality, AOC / VOC),
``distribution`` (the modality gap), ``retrieval`` (recall@k, nDCG@k), ``regression`` (CCC, ranking
accuracy, zero-shot prediction, ridge probe), ``summary`` (``summarize``: everything at once; ``summary_names``:
the names it returns for given inputs). Every public
name is importable from ``erclap.metrics`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from erclap.metrics.arrays import l2_normalize, mean_by_level, normalized_mean
from erclap.metrics.distribution import (
    FIXED_MMD_BANDWIDTH,
    WassersteinResult,
    centroid_distance,
    description_centroid_gap,
    mean_paired_cosine,
    median_heuristic_bandwidth,
    mmd,
    mmd_linear,
    modality_gap_metrics,
    sliced_scale,
    wasserstein,
    wasserstein_centered,
)
from erclap.metrics.ranking import (
    anchor_kendall_tau,
    kendall_tau_b_rows,
    prompt_ordinal_consistency,
    retrieval_kendall_tau,
)
from erclap.metrics.regression import (
    ccc,
    pairwise_ranking_accuracy,
    ridge_fit,
    ridge_probe,
    zero_shot_attribute_prediction,
)
from erclap.metrics.retrieval import ndcg_at_k, recall_at_k
from erclap.metrics.summary import summarize, summary_names
from erclap.schema import METRIC_RENAMES

__all__ = [
    "FIXED_MMD_BANDWIDTH", "WassersteinResult", "anchor_kendall_tau", "ccc", "centroid_distance",
    "description_centroid_gap", "kendall_tau_b_rows", "l2_normalize", "mean_by_level", "mean_paired_cosine",
    "median_heuristic_bandwidth", "mmd", "mmd_linear", "modality_gap_metrics", "ndcg_at_k", "normalized_mean",
    "pairwise_ranking_accuracy", "prompt_ordinal_consistency", "read_metrics_file", "recall_at_k",
    "retrieval_kendall_tau", "ridge_fit", "ridge_probe", "sliced_scale", "summarize", "summary_names",
    "upgrade_metric_names",
    "wasserstein", "wasserstein_centered", "zero_shot_attribute_prediction",
]


# ----------------------------------------------------------------------------------------------------------
# Metric names across releases.


def upgrade_metric_names(values: Mapping[str, float]) -> dict[str, float]:
  """A metrics dict written under earlier names (``schema.METRIC_RENAMES``) with today's names; today's names pass."""
  return {METRIC_RENAMES.get(k, k): v for k, v in values.items()}


def read_metrics_file(path: str) -> dict:
  """A metrics JSON of ``--mode=eval`` / ``--mode=export`` / periodic evaluation (``{"step", "split",
  "metrics"}``), its metrics under today's names whatever release wrote it."""
  with open(path) as f:
    payload = json.load(f)
  if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), dict):
    raise ValueError(f"{path}: not an ERCLAP metrics file (no 'metrics' object)")
  return dict(payload, metrics=upgrade_metric_names(payload["metrics"]))
