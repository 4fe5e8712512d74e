"""The two objectives ERCLAP trains, as objects: everything that differs between them, in one place.

``config.stage`` names one, ``of(config)`` returns it:

* ``CLAP`` ("clap"), the cross-modal stage: speech and text towers, their projections into the joint space and
  a learned temperature, trained with the contrastive loss ``config.loss`` (Rank-N-Contrast, InfoNCE, SupCon) on
  (speech, description) pairs; evaluated by ``metrics.summarize`` (the paper's AOC / VOC, the modality gap,
  retrieval, zero-shot and probe CCC).
* ``SER`` ("ser"), stage 1, the emotion rank encoder: the speech tower, its pooling and the SER head trained on the
  attributes with CCC + pairwise ranking losses; evaluated by CCC and ranking accuracy per attribute.

A stage holds what the rest of the program asks about the objective: how its model is built, which inputs the
model reads and which of its outputs the loss reads, the loss, which parameters ``model.freeze_speech`` freezes,
how a split is evaluated and which metrics head the tables. Evaluation gets the split's outputs and the text
embeddings through a ``reader`` it is handed (``erclap.evaluate``), so that this module stays below the
evaluation machinery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from erclap import losses, metrics, models, prompts, schema
from erclap.schema import LABEL_NAMES

# Top-level parameter names (the model's ``setup`` attribute names).
SPEECH_TOWER, TEXT_TOWER, LOG_TEMPERATURE = "speech_tower", "text_tower", "log_temperature"
SPEECH_POOL, SER_HEAD = "speech_pool", "ser_head"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One objective.

  Attributes:
    name: its ``config.stage`` value.
    title: a short description for messages.
    cross_modal: it has a text tower and a temperature, reads descriptions, and can train on cached speech
      features (``data.speech_features``).
    speech_group: top-level parameters that ``model.freeze_speech`` freezes and ``train.speech_lr_multiplier``
      scales: the speech representation the cross-modal stage reads; in stage 1 the tower alone (its pooling and
      head are what stage 1 trains).
    output_keys: the model outputs (rows first) the loss reads; gradient caching recomputes exactly these.
    speech_output_method: the model method that maps audio to the per-clip output evaluation keeps
      (joint-space embeddings, or predicted attributes).
    build: ``build(model_config, vocab_size, speech_arch, temperature_init) -> flax module``.
    loss: ``loss(config, mesh, params, outputs, batch) -> (scalar, {name: term})``; ``params`` with the frozen
      parts behind ``stop_gradient``.
    evaluate: ``evaluate(reader, config, split) -> (metrics, split outputs)`` (see ``erclap.evaluate``).
    headline_metrics: the metrics printed first, in this order.
  """
  name: str
  title: str
  cross_modal: bool
  speech_group: tuple[str, ...]
  output_keys: tuple[str, ...]
  speech_output_method: str
  build: Callable[..., Any]
  loss: Callable[..., tuple[jax.Array, dict]]
  evaluate: Callable[..., tuple[dict[str, float], Any]]
  headline_metrics: tuple[str, ...]

  def input_keys(self, config) -> tuple[str, ...]:
    """The batch keys the model reads: speech (audio and mask, or cached features), and text when cross-modal."""
    speech = schema.speech_input_keys(config)
    return speech + schema.TEXT_INPUT_KEYS if self.cross_modal else speech

  def model_inputs(self, config, batch: dict) -> dict:
    """The model's keyword inputs of ``batch``."""
    return {k: batch[k] for k in self.input_keys(config)}

  def problems(self, config) -> list[str]:
    """What this objective cannot do with ``config`` (one message per problem, naming the key)."""
    if config.data.speech_features and not self.cross_modal:
      return [f"config.data.speech_features={config.data.speech_features!r}: cached speech features feed the "
              f"cross-modal (clap) stage; {self.title} trains the speech tower on audio"]
    return []


# --------------------------------------------------------------------------- the cross-modal stage


def _build_clap(model_config, vocab_size, speech_arch, temperature_init):
  model = models.build_clap_model(model_config, vocab_size=vocab_size, speech_arch=speech_arch)
  return model.clone(temperature_init=float(temperature_init))


def clap_loss(config, mesh, params, outputs, batch) -> tuple[jax.Array, dict]:
  """The contrastive loss ``config.loss`` of the (N, D) speech and text embeddings, at the learned temperature.

  Args:
    config: the run's config (``loss``, ``loss_options``).
    mesh: the device mesh (the loss is sharded over its batch axes).
    params: the parameters (``log_temperature``).
    outputs: {"speech": (N, D), "text": (N, D)}.
    batch: holds ``labels`` (N, 3) and ``class_id`` (N,).

  Returns:
    ``(loss, {})``.
  """
  loss_fn = losses.get_clap_loss(config.loss)
  loss = loss_fn(outputs["speech"], outputs["text"], batch, temperature=jnp.exp(params[LOG_TEMPERATURE]), mesh=mesh,
                 options=config.loss_options)
  return loss, {}


def _clap_evaluate(reader, config, split: str):
  """Every metric of ``metrics.summarize`` on ``split``: the ridge probe is fitted on the train split's speech
  embeddings, the prompt metrics and AOC / VOC use ``prompts.prompt_embeddings``."""
  emb = reader.split(split, max_examples=config.eval.max_examples)
  train = reader.split(config.data.train_split, max_examples=config.eval.probe_train_examples, with_text=False)
  texts = prompts.prompt_embeddings(reader.texts, config)
  result = metrics.summarize(
      emb.speech, emb.text, emb.labels, descriptions=emb.descriptions,
      prompt_embeddings=texts["prompts"], prompt_levels=texts["prompt_levels"],
      fixed_prompt_embeddings=texts["fixed_prompts"], fixed_prompt_levels=texts["fixed_prompt_levels"],
      paraphrase_prompt_embeddings=texts["paraphrase_prompts"],
      paraphrase_prompt_levels=texts["paraphrase_prompt_levels"],
      query_embeddings=texts["queries"], query_values=texts["query_values"],
      train_speech=train.speech, train_labels=train.labels,
      retrieval_levels=config.eval.retrieval_levels, retrieval_draws=config.eval.retrieval_draws,
      retrieval_top_k=config.eval.retrieval_top_k, retrieval_bootstrap=config.eval.retrieval_bootstrap,
      seed=config.seed)
  return {k: float(v) for k, v in result.items()}, emb


CLAP = Stage(
    name="clap", title="the cross-modal stage", cross_modal=True,
    speech_group=schema.SPEECH_REPRESENTATION, output_keys=("speech", "text"), speech_output_method="embed_audio",
    build=_build_clap, loss=clap_loss, evaluate=_clap_evaluate,
    headline_metrics=("aoc", "aoc_ci95_low", "aoc_ci95_high", "voc", "voc_ci95_low", "voc_ci95_high",
                      "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein", "r1_s2t", "r1_t2s",
                      "ccc_zero_shot_arousal", "ccc_probe_arousal", "ccc_probe_valence"))


# --------------------------------------------------------------------------- stage 1: the emotion rank encoder


def _build_ser(model_config, vocab_size, speech_arch, temperature_init):
  del vocab_size, temperature_init  # no text tower, no temperature
  return models.build_ser_model(model_config, speech_arch=speech_arch)


def ser_loss(config, mesh, params, outputs, batch) -> tuple[jax.Array, dict]:
  """Stage 1: weighted CCC loss + pairwise ranking loss over in-batch pairs of the predicted attributes.

  Args:
    config: the run's config (``loss_options.ccc_weight``, ``rank_*``).
    mesh: the device mesh (the ranking loss is sharded over its batch axes).
    params: unused (the signature of every stage's loss).
    outputs: {"attributes": (N, A) predictions}.
    batch: holds ``labels`` (N, A) true attributes.

  Returns:
    ``(total, parts)``: the weighted sum and each weighted term's unweighted value by name.
  """
  del params
  o = config.loss_options
  predictions, labels = outputs["attributes"], batch["labels"]
  total, parts = 0.0, {}
  if o.ccc_weight:
    parts["ccc_loss"] = losses.ccc_loss(predictions, labels)
    total = total + o.ccc_weight * parts["ccc_loss"]
  if o.rank_weight:
    parts["rank_loss"] = losses.pairwise_ranking_loss(predictions, labels, margin=o.rank_margin,
                                                      scale=o.rank_scale, mesh=mesh)
    total = total + o.rank_weight * parts["rank_loss"]
  return total, parts


def ser_split_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """CCC and pairwise ranking accuracy per attribute of (N, A) predictions against (N, >= A) labels, and their
  means (``ser_ccc_mean``, ``ser_rank_accuracy``)."""
  names = LABEL_NAMES[: predictions.shape[1]]
  result = {}
  for a, name in enumerate(names):
    result[f"ser_ccc_{name}"] = float(metrics.ccc(predictions[:, a], labels[:, a]))
    result[f"ser_rank_accuracy_{name}"] = float(metrics.pairwise_ranking_accuracy(predictions[:, a], labels[:, a]))
  result["ser_ccc_mean"] = float(np.mean([result[f"ser_ccc_{n}"] for n in names]))
  result["ser_rank_accuracy"] = float(np.mean([result[f"ser_rank_accuracy_{n}"] for n in names]))
  return result


def _ser_evaluate(reader, config, split: str):
  emb = reader.split(split, max_examples=config.eval.max_examples, with_text=False)
  return ser_split_metrics(emb.attributes, emb.labels), emb


SER = Stage(
    name="ser", title="stage 1 (the speech emotion model)", cross_modal=False,
    speech_group=(SPEECH_TOWER,), output_keys=("attributes",), speech_output_method="predict_attributes",
    build=_build_ser, loss=ser_loss, evaluate=_ser_evaluate,
    headline_metrics=("ser_ccc_arousal", "ser_ccc_valence", "ser_ccc_dominance", "ser_rank_accuracy"))

STAGES = {stage.name: stage for stage in (CLAP, SER)}


def get(name: str) -> Stage:
  """The stage called ``name``; ValueError naming the known ones."""
  try:
    return STAGES[name]
  except KeyError:
    raise ValueError(f"config.stage={name!r}: must be one of {tuple(STAGES)}") from None


def of(config) -> Stage:
  """The stage of ``config`` (``config.stage``)."""
  return get(config.stage)
