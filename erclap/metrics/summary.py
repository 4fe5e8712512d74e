"""Every metric of one split at once (``summarize``): ordinality, modality gap, retrieval and emotion recognition
from embeddings, as one flat dict[str, float] with stable names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from erclap.metrics.arrays import _as_2d, _attribute_column, l2_normalize
from erclap.metrics.distribution import _unit_rows_gap
from erclap.metrics.ranking import anchor_kendall_tau, prompt_ordinal_consistency, retrieval_kendall_tau
from erclap.metrics.regression import ccc, ridge_probe, zero_shot_attribute_prediction
from erclap.metrics.retrieval import ndcg_at_k, recall_at_k
from erclap.schema import LABEL_NAMES, ORDINAL_CONSISTENCY_NAMES

# The gap measures ``_unit_rows_gap`` returns, and those it adds with descriptions.
_GAP_NAMES = ("mmd", "wasserstein", "wasserstein_num_points", "wasserstein_sliced", "mmd_fixed", "mmd_linear",
              "centroid_distance", "paired_cosine", "wasserstein_centered")
_DESCRIPTION_GAP_NAMES = ("description_centroid_distance", "description_centroid_cosine", "num_descriptions")
_PROMPT_NAMES = ("ccc_zero_shot", "prompt_tau", "prompt_distance_tau", "prompt_order_tau", "prompt_monotone")
_RECALL_KS = (1, 5, 10)


def _prompt_metrics(speech, labels, prompt_embeddings, prompt_levels, temperature,
                    tag: str = "") -> dict[str, float]:
  """Zero-shot CCC and prompt ordinality per attribute with level prompts (see ``summarize``); ``tag`` goes
  between the metric's name and the attribute (``ccc_zero_shot_fixed_arousal``)."""
  out = {}
  for attribute, emb in prompt_embeddings.items():
    column = _attribute_column(attribute)
    if prompt_levels is None or attribute not in prompt_levels:
      raise ValueError(f"prompt_levels: missing the levels of the {attribute!r} prompts")
    prompt_sim = l2_normalize(_as_2d(f"prompt_embeddings[{attribute!r}]", emb, np.float32)) @ speech.T
    levels = prompt_levels[attribute]
    name = f"{tag}{attribute}"
    pred = zero_shot_attribute_prediction(prompt_sim, levels, temperature=temperature)
    out[f"ccc_zero_shot_{name}"] = ccc(pred, labels[:, column])
    p = prompt_ordinal_consistency(prompt_sim, levels, labels[:, column])
    out[f"prompt_tau_{name}"] = p["signed_tau"]
    out[f"prompt_distance_tau_{name}"] = p["distance_tau"]
    out[f"prompt_order_tau_{name}"] = p["order_tau"]
    out[f"prompt_monotone_{name}"] = float(p["monotone"])
  return out


def _retrieval_metrics(speech, labels, query_embeddings, query_values, retrieval_levels, retrieval_draws,
                       retrieval_top_k, retrieval_bootstrap, seed) -> dict[str, float]:
  """The paper's ordinal consistency (``aoc``, ``voc``: the retrieval Kendall tau) per attribute with a query
  pool, its 95 % bootstrap interval, and ``aoc_voc_mean`` when both are there (see ``summarize``)."""
  out = {}
  for attribute, emb in query_embeddings.items():
    column = _attribute_column(attribute)
    if query_values is None or attribute not in query_values:
      raise ValueError(f"query_values: missing the values of the {attribute!r} queries")
    query_sim = l2_normalize(_as_2d(f"query_embeddings[{attribute!r}]", emb, np.float32)) @ speech.T
    num_levels = min(retrieval_levels, len(np.unique(query_values[attribute])))
    r = retrieval_kendall_tau(query_sim, query_values[attribute], labels[:, column], num_levels=num_levels,
                              num_draws=retrieval_draws, top_k=min(retrieval_top_k, len(speech)), seed=seed,
                              num_bootstrap=retrieval_bootstrap, confidence=0.95)
    name = ORDINAL_CONSISTENCY_NAMES[attribute]
    out[name] = r["tau"]
    out[f"{name}_std"] = r["tau_std"]
    if retrieval_bootstrap:
      out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = r["ci_low"], r["ci_high"]
      out["aoc_voc_num_bootstrap"] = float(retrieval_bootstrap)
    out["aoc_voc_num_levels"] = float(r["num_levels"])
    out["aoc_voc_num_draws"] = float(r["num_draws"])
    out["aoc_voc_top_k"] = float(r["top_k"])
  if "aoc" in out and "voc" in out:
    out["aoc_voc_mean"] = 0.5 * (out["aoc"] + out["voc"])
  return out


def summarize(speech, text, labels, *, prompt_embeddings: Mapping[str, np.ndarray] | None = None,
              prompt_levels: Mapping[str, np.ndarray] | None = None,
              fixed_prompt_embeddings: Mapping[str, np.ndarray] | None = None,
              fixed_prompt_levels: Mapping[str, np.ndarray] | None = None,
              paraphrase_prompt_embeddings: Mapping[str, np.ndarray] | None = None,
              paraphrase_prompt_levels: Mapping[str, np.ndarray] | None = None,
              query_embeddings: Mapping[str, np.ndarray] | None = None,
              query_values: Mapping[str, np.ndarray] | None = None,
              train_speech=None, train_labels=None, retrieval_levels: int = 5, retrieval_draws: int = 200,
              retrieval_top_k: int = 1, retrieval_bootstrap: int = 1000, seed: int = 0, ndcg_k: int = 10,
              ndcg_sigma: float = 1.0,
              probe_alpha: float = 1.0, zero_shot_temperature: float = 0.05,
              exact_wasserstein_max_n: int = 2048, descriptions: Sequence[str] | None = None) -> dict[str, float]:
  """Every metric of one split as a flat dict[str, float] with stable names.

  Args:
    speech, text: (N, D) paired embeddings (normalised here again, defensively).
    labels: (N, 3) arousal, valence, dominance.
    prompt_embeddings / prompt_levels: {attribute: (K, D)} level-prompt embeddings (one per level: the
      ``mean_by_level`` of the template descriptions of ``descriptions.level_descriptions``) and
      {attribute: (K,)} their levels -> prompt ordinality and zero-shot CCC.
    fixed_prompt_embeddings / fixed_prompt_levels: the same for the fixed out-of-template prompts
      ("very low arousal" ...) -> the same metrics with ``fixed_`` before the attribute.
    paraphrase_prompt_embeddings / paraphrase_prompt_levels: the same for the free-form paraphrased prompts
      (``descriptions.paraphrased_level_prompts``) -> the same metrics with ``paraphrase_`` before the attribute.
    query_embeddings / query_values: {attribute: (Q, D)} description pools and {attribute: (Q,)} their
      values -> the retrieval Kendall tau (``aoc`` / ``voc``).
    retrieval_levels, retrieval_draws, retrieval_top_k: its K levels, M draws and top-k
      (``metrics.retrieval_kendall_tau``); retrieval_bootstrap: the resamples of its 95 % interval (0 = none).
    train_speech, train_labels: (M, D), (M, 3) train split for the ridge probe.
    descriptions: N strings, the description of each row -> the per-description centroid gap.
  Keys: anchor_tau_A_s2t, anchor_tau_A_t2s, anchor_tau_A for A = arousal, valence (the anchor-wise Kendall
    tau, ``anchor_kendall_tau``; not the paper's AOC / VOC); the modality gap (docs/metrics.md): mmd,
    wasserstein (exact W1, on a random subset of exact_wasserstein_max_n pairs for larger splits),
    wasserstein_num_points, wasserstein_sliced (sliced estimate on the whole split), mmd_fixed (Gaussian kernel,
    sigma = FIXED_MMD_BANDWIDTH), mmd_linear, centroid_distance, paired_cosine, wasserstein_centered, and with
    descriptions description_centroid_distance, description_centroid_cosine, num_descriptions; r{1,5,10}_{s2t,t2s},
    ndcg10_s2t, ndcg10_t2s, ndcg10_mean; per attribute A with prompts: ccc_zero_shot_A, prompt_tau_A,
    prompt_distance_tau_A, prompt_order_tau_A, prompt_monotone_A (with fixed prompts also
    ccc_zero_shot_fixed_A, prompt_tau_fixed_A, ...; with paraphrased prompts ccc_zero_shot_paraphrase_A, ...);
    with the train split: ccc_probe_A for the three attributes and ccc_probe_mean; per attribute A with a
    query pool (arousal, valence): the paper's ordinal consistency ``aoc`` / ``voc`` (the retrieval Kendall
    tau) and ``aoc_std`` / ``voc_std``, with ``retrieval_bootstrap`` their 95 % percentile-bootstrap intervals
    ``aoc_ci95_low`` / ``aoc_ci95_high`` / ``voc_ci95_low`` / ``voc_ci95_high`` (test clips and draws resampled)
    and ``aoc_voc_num_bootstrap``, ``aoc_voc_mean``, and the protocol's ``aoc_voc_num_levels`` /
    ``aoc_voc_num_draws`` / ``aoc_voc_top_k``; num_clips.
  """
  speech = l2_normalize(_as_2d("speech", speech, np.float32))
  text = l2_normalize(_as_2d("text", text, np.float32))
  labels = _as_2d("labels", labels, np.float64)
  if speech.shape != text.shape:
    raise ValueError(f"speech, text: shapes differ ({speech.shape} vs {text.shape})")
  if labels.shape != (len(speech), 3):
    raise ValueError(f"labels: expected shape ({len(speech)}, 3), got {labels.shape}")
  if descriptions is not None and len(descriptions) != len(speech):
    raise ValueError(f"descriptions: {len(descriptions)} entries for {len(speech)} embedding rows")
  out: dict[str, float] = {"num_clips": float(len(speech))}
  sim = speech @ text.T
  for attribute in ("arousal", "valence"):
    y = labels[:, _attribute_column(attribute)]
    name = f"anchor_tau_{attribute}"
    out[f"{name}_s2t"] = anchor_kendall_tau(sim, y, y)
    out[f"{name}_t2s"] = anchor_kendall_tau(np.ascontiguousarray(sim.T), y, y)
    out[name] = 0.5 * (out[f"{name}_s2t"] + out[f"{name}_t2s"])
  out.update(_unit_rows_gap(speech, text, descriptions, seed=seed, exact_wasserstein_max_n=exact_wasserstein_max_n))
  out.update(recall_at_k(sim, _RECALL_KS))
  out[f"ndcg{ndcg_k}_s2t"] = ndcg_at_k(sim, labels, labels, k=ndcg_k, sigma=ndcg_sigma)
  out[f"ndcg{ndcg_k}_t2s"] = ndcg_at_k(sim.T, labels, labels, k=ndcg_k, sigma=ndcg_sigma)
  out[f"ndcg{ndcg_k}_mean"] = 0.5 * (out[f"ndcg{ndcg_k}_s2t"] + out[f"ndcg{ndcg_k}_t2s"])
  for tag, embeddings, levels in (("", prompt_embeddings, prompt_levels),
                                  ("fixed_", fixed_prompt_embeddings, fixed_prompt_levels),
                                  ("paraphrase_", paraphrase_prompt_embeddings, paraphrase_prompt_levels)):
    out.update(_prompt_metrics(speech, labels, embeddings or {}, levels, zero_shot_temperature, tag=tag))
  if train_speech is not None and train_labels is not None:
    probe = ridge_probe(l2_normalize(_as_2d("train_speech", train_speech, np.float32)), train_labels, speech,
                        labels, alpha=probe_alpha)
    for column, attribute in enumerate(LABEL_NAMES):
      out[f"ccc_probe_{attribute}"] = float(probe[column])
    out["ccc_probe_mean"] = float(np.mean(probe))
  out.update(_retrieval_metrics(speech, labels, query_embeddings or {}, query_values, retrieval_levels,
                                retrieval_draws, retrieval_top_k, retrieval_bootstrap, seed))
  return {k: float(v) for k, v in out.items()}




def summary_names(*, prompt_attributes: Sequence[str] = (), fixed_prompt_attributes: Sequence[str] = (),
                  paraphrase_prompt_attributes: Sequence[str] = (), query_attributes: Sequence[str] = (),
                  probe: bool = False, bootstrap: bool = False, descriptions: bool = False,
                  ndcg_k: int = 10) -> tuple[str, ...]:
  """The names ``summarize`` returns for such inputs, without computing anything (e.g. to check a
  ``checkpoint.best_metric`` before a run starts).

  Args:
    prompt_attributes, fixed_prompt_attributes, paraphrase_prompt_attributes: the attributes of
      ``prompt_embeddings``, ``fixed_prompt_embeddings``, ``paraphrase_prompt_embeddings``.
    query_attributes: the attributes of ``query_embeddings``.
    probe: ``train_speech`` / ``train_labels`` are given.
    bootstrap: ``retrieval_bootstrap`` > 0.
    descriptions: ``descriptions`` are given.
    ndcg_k: as given to ``summarize``.

  Returns:
    The names, each once.
  """
  names = ["num_clips"]
  for attribute in ("arousal", "valence"):
    names += [f"anchor_tau_{attribute}_s2t", f"anchor_tau_{attribute}_t2s", f"anchor_tau_{attribute}"]
  names += [*_GAP_NAMES, *(_DESCRIPTION_GAP_NAMES if descriptions else ())]
  names += [f"r{k}_{direction}" for direction in ("s2t", "t2s") for k in _RECALL_KS]
  names += [f"ndcg{ndcg_k}_s2t", f"ndcg{ndcg_k}_t2s", f"ndcg{ndcg_k}_mean"]
  for tag, attributes in (("", prompt_attributes), ("fixed_", fixed_prompt_attributes),
                          ("paraphrase_", paraphrase_prompt_attributes)):
    names += [f"{name}_{tag}{attribute}" for attribute in attributes for name in _PROMPT_NAMES]
  if probe:
    names += [*(f"ccc_probe_{attribute}" for attribute in LABEL_NAMES), "ccc_probe_mean"]
  for attribute in query_attributes:
    name = ORDINAL_CONSISTENCY_NAMES[attribute]
    names += [name, f"{name}_std", *((f"{name}_ci95_low", f"{name}_ci95_high") if bootstrap else ())]
  if query_attributes:
    names += [*(("aoc_voc_num_bootstrap",) if bootstrap else ()), "aoc_voc_num_levels", "aoc_voc_num_draws",
              "aoc_voc_top_k"]
  if {"arousal", "valence"} <= set(query_attributes):
    names.append("aoc_voc_mean")
  return tuple(names)
