"""The two objectives ERCLAP trains, as objects: everything that differs between them, in one place.

``config.stage`` names one, ``of(config)`` returns it:

* ``CLAP`` ("clap"), the cross-modal stage: speech and text towers, their projections into the joint space and
  a learned temperature, trained with the contrastive loss ``config.loss`` (Rank-N-Contrast, InfoNCE, SupCon:
  ``losses.LOSSES``) on (speech, description) pairs; evaluated by ``metrics.summarize`` (the paper's AOC / VOC,
  the modality gap, retrieval, zero-shot and probe CCC).
* ``SER`` ("ser"), stage 1, the emotion rank encoder: the speech tower, its pooling and the SER head trained on the
  attributes with CCC + pairwise ranking losses; evaluated by CCC and ranking accuracy per attribute.

A stage holds what the rest of the program asks about the objective: how its model is built and which inputs it
reads besides the speech, which of its outputs the loss reads, the loss, its speech group (what a frozen speech
side holds, ``erclap.trainable``), whether a speech-feature cache can stand for its speech path
(``erclap.speech_source``), what its evaluation needs embedded and the pure function that turns those arrays into
metrics (``erclap.evaluate`` embeds, the stage computes), what an export writes, which SavedModel signatures it
has, which inference class loads it, and which metrics head the tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from erclap import losses, metrics, models, prompts, schema
from erclap.models import LOG_TEMPERATURE, SPEECH_PATH, SPEECH_TOWER
from erclap.schema import LABEL_NAMES


@dataclasses.dataclass(frozen=True)
class EvalInputs:
  """What a stage's metrics of one split are computed from, embedded by ``erclap.evaluate``.

  Attributes:
    with_text: the split's descriptions are embedded too.
    probe_split: another split whose speech outputs the metrics read ("" for none): the ridge probe's train split.
    probe_examples: how many of its first clips (0: all).
    texts: the texts to embed, one tuple per embedding call, in the order the stage's ``metrics`` reads them.
  """
  with_text: bool
  probe_split: str = ""
  probe_examples: int = 0
  texts: tuple[tuple[str, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Stage:
  """One objective.

  Attributes:
    name: its ``config.stage`` value.
    title: a short description for messages.
    text_input_keys: the batch keys its model reads besides the speech inputs (the text tower's, or none).
    speech_group: the top-level parameters of the speech side that a frozen speech model holds, and that a
      ``model.speech_init`` workdir provides: in the cross-modal stage the whole speech path (tower, pooling, SER
      head), in stage 1 the tower alone (its pooling and head are what stage 1 trains).
    reads_speech_cache: a speech-feature cache (its frozen speech representation per clip) can replace its audio.
    output_keys: the model outputs (rows first) the loss reads; gradient caching recomputes exactly these.
    speech_output_method: the model method that maps audio to the per-clip output evaluation keeps.
    speech_output: the ``evaluate.SplitEmbeddings`` field that output fills ("speech" embeddings or
      "attributes").
    build: ``build(model_config, vocab_size, speech_arch, temperature_init) -> flax module``.
    loss: ``loss(config, mesh, params, outputs, batch, options=None) -> (scalar, {name: term})``; ``params``
      with the frozen parts behind ``stop_gradient``; ``options`` the loss options (None: ``config.loss_options``;
      a member's, with its traced loss weights, in a program with members: ``erclap.members.loss_options``).
    loss_params: the top-level parameters the loss reads besides the outputs.
    loss_output_widths: ``loss_output_widths(config) -> {output key: width}`` of the (N, width) outputs the loss
      reads (what ``erclap.plan`` compiles the loss alone on).
    loss_option_names: ``loss_option_names(config) -> the config.loss_options keys`` the loss reads.
    loss_label: ``loss_label(config) -> a short name of the loss`` for tables.
    eval_inputs: ``eval_inputs(config) -> EvalInputs``.
    metrics: ``metrics(config, split, probe, texts) -> {name: float}``, pure: ``split`` / ``probe`` are
      ``evaluate.SplitEmbeddings`` (``probe`` None without a probe split), ``texts`` the embeddings of
      ``EvalInputs.texts``, one array per tuple.
    metric_names: ``metric_names(config) -> the names metrics(config, ...) returns``, known before any run (what
      ``checkpoint.best_metric`` is checked against, ``erclap.validation``).
    export_arrays: the ``SplitEmbeddings`` fields an export writes as ``<split>_<field>.npy``.
    export_plots: the plots an export writes (``<split>_<name>.png``; they need speech and text embeddings).
    export_views: an export also writes the TensorBoard projector files and ``report.html`` of its splits
      (``erclap.results.views``; they need speech and text embeddings).
    export_queries: an export also writes the query pools of AOC / VOC (``erclap.export.QUERIES_FILE``).
    saved_model_signatures: the model methods a TF SavedModel of it serves (none: no SavedModel).
    api: the ``erclap.inference`` class that loads its models.
    headline_metrics: the metrics printed first, in this order.
    parameter_metrics: ``parameter_metrics(params) -> {name: float}``: what the evaluated parameters say of
      themselves, recorded beside the metrics (the cross-modal stage's learned temperature); ``params`` holds the
      ``loss_params`` as numpy arrays.
  """
  name: str
  title: str
  text_input_keys: tuple[str, ...]
  speech_group: tuple[str, ...]
  reads_speech_cache: bool
  output_keys: tuple[str, ...]
  speech_output_method: str
  speech_output: str
  build: Callable[..., Any]
  loss: Callable[..., tuple[jax.Array, dict]]
  loss_params: tuple[str, ...]
  loss_output_widths: Callable[[Any], dict[str, int]]
  loss_option_names: Callable[[Any], tuple[str, ...]]
  loss_label: Callable[[Any], str]
  eval_inputs: Callable[[Any], EvalInputs]
  metrics: Callable[..., dict[str, float]]
  metric_names: Callable[[Any], tuple[str, ...]]
  export_arrays: tuple[str, ...]
  export_plots: tuple[str, ...]
  export_views: bool
  export_queries: bool
  saved_model_signatures: tuple[str, ...]
  api: str
  headline_metrics: tuple[str, ...]
  parameter_metrics: Callable[[dict], dict[str, float]] = lambda params: {}

  @property
  def has_text_tower(self) -> bool:
    return bool(self.text_input_keys)

  def export_files(self, split: str) -> list[str]:
    """The file names an export of ``split`` writes (``erclap.export``), the metrics file last."""
    return [f"{split}.parquet", *(f"{split}_{name}.npy" for name in self.export_arrays),
            *(f"{split}_{name}.png" for name in self.export_plots), f"{split}_metrics.json"]

  def load_problem(self, path: str, api: str) -> str | None:
    """Why the inference class ``api`` cannot load this stage's model at ``path`` (None: it can)."""
    if api == self.api:
      return None
    return (f"{path}: a model of {self.title} ('{self.name}'); {api}.load reads another stage's models (this one: "
            f"erclap.inference.{self.api}.load)")


# --------------------------------------------------------------------------- the cross-modal stage


def _build_clap(model_config, vocab_size, speech_arch, temperature_init):
  model = models.build_clap_model(model_config, vocab_size=vocab_size, speech_arch=speech_arch)
  return model.clone(temperature_init=float(temperature_init))


def clap_loss(config, mesh, params, outputs, batch, options=None) -> tuple[jax.Array, dict]:
  """The contrastive loss ``config.loss`` of the (N, D) speech and text embeddings, at the learned temperature.

  Args:
    config: the run's config (``loss``, ``loss_options``).
    mesh: the device mesh (the loss is sharded over its batch axes).
    params: the parameters (``log_temperature``).
    outputs: {"speech": (N, D), "text": (N, D)}.
    batch: holds ``labels`` (N, 3) and ``class_id`` (N,).
    options: the loss options (None: ``config.loss_options``).

  Returns:
    ``(loss, {})``.
  """
  loss_fn = losses.get_clap_loss(config.loss)
  loss = loss_fn(outputs["speech"], outputs["text"], batch, temperature=jnp.exp(params[LOG_TEMPERATURE]), mesh=mesh,
                 options=config.loss_options if options is None else options)
  return loss, {}


def _clap_eval_inputs(config) -> EvalInputs:
  return EvalInputs(with_text=True, probe_split=config.data.train_split,
                    probe_examples=config.eval.probe_train_examples,
                    texts=tuple(tuple(t) for t in prompts.text_batches(config)))


def clap_metrics(config, split, probe, texts: Sequence[np.ndarray]) -> dict[str, float]:
  """Every metric of ``metrics.summarize`` on a split's embeddings: the ridge probe is fitted on ``probe`` (the
  train split's speech embeddings), the prompt metrics and AOC / VOC use the embedded prompt texts
  (``prompts.prompt_embeddings``)."""
  prompt = prompts.prompt_embeddings(prompts.replay(texts), config)
  result = metrics.summarize(
      split.speech, split.text, split.labels, descriptions=split.descriptions,
      prompt_embeddings=prompt["prompts"], prompt_levels=prompt["prompt_levels"],
      fixed_prompt_embeddings=prompt["fixed_prompts"], fixed_prompt_levels=prompt["fixed_prompt_levels"],
      paraphrase_prompt_embeddings=prompt["paraphrase_prompts"],
      paraphrase_prompt_levels=prompt["paraphrase_prompt_levels"],
      query_embeddings=prompt["queries"], query_values=prompt["query_values"],
      train_speech=probe.speech, train_labels=probe.labels,
      retrieval_levels=config.eval.retrieval_levels, retrieval_draws=config.eval.retrieval_draws,
      retrieval_top_k=config.eval.retrieval_top_k, retrieval_bootstrap=config.eval.retrieval_bootstrap,
      seed=config.seed)
  return {k: float(v) for k, v in result.items()}


def clap_metric_names(config) -> tuple[str, ...]:
  """The names ``clap_metrics`` returns under ``config``: every input of ``metrics.summarize`` it passes (the level,
  fixed and paraphrased prompts of every attribute, the query pools, the probe, the descriptions), and the
  bootstrap interval when ``eval.retrieval_bootstrap`` > 0; and the parameter metrics (the learned temperature)."""
  return metrics.summary_names(
      prompt_attributes=prompts.PROMPT_ATTRIBUTES, fixed_prompt_attributes=prompts.PROMPT_ATTRIBUTES,
      paraphrase_prompt_attributes=prompts.PROMPT_ATTRIBUTES, query_attributes=prompts.QUERY_ATTRIBUTES, probe=True,
      bootstrap=config.eval.retrieval_bootstrap > 0, descriptions=True) + CLAP_PARAMETER_METRICS


TEMPERATURE_METRIC = "temperature"  # the learned temperature, recorded beside the metrics (CLAP.parameter_metrics)
CLAP_PARAMETER_METRICS = (TEMPERATURE_METRIC,)  # the names of CLAP.parameter_metrics


def _clap_parameter_metrics(params) -> dict[str, float]:
  return {TEMPERATURE_METRIC: float(np.exp(np.asarray(params[LOG_TEMPERATURE])))}


CLAP = Stage(
    name="clap", title="the cross-modal stage", text_input_keys=schema.TEXT_INPUT_KEYS, speech_group=SPEECH_PATH,
    reads_speech_cache=True, output_keys=("speech", "text"), speech_output_method="embed_audio",
    speech_output="speech", build=_build_clap, loss=clap_loss, loss_params=(LOG_TEMPERATURE,),
    loss_output_widths=lambda config: dict(speech=config.model.joint_dim, text=config.model.joint_dim),
    loss_option_names=lambda config: (*losses.COMMON_OPTIONS, *losses.LOSSES[config.loss].options),
    loss_label=lambda config: config.loss,
    eval_inputs=_clap_eval_inputs, metrics=clap_metrics, metric_names=clap_metric_names,
    export_arrays=("speech", "text"),
    export_plots=("pca", "sim_vs_distance", "prompt_ordering_arousal", "prompt_ordering_valence"),
    export_views=True, export_queries=True, saved_model_signatures=("embed_audio", "embed_text"), api="ERCLAP",
    headline_metrics=("aoc", "aoc_ci95_low", "aoc_ci95_high", "voc", "voc_ci95_low", "voc_ci95_high",
                      "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein", "r1_s2t", "r1_t2s",
                      "ccc_zero_shot_arousal", "ccc_probe_arousal", "ccc_probe_valence"),
    parameter_metrics=_clap_parameter_metrics)


# --------------------------------------------------------------------------- stage 1: the emotion rank encoder


def _build_ser(model_config, vocab_size, speech_arch, temperature_init):
  del vocab_size, temperature_init  # no text tower, no temperature
  return models.build_ser_model(model_config, speech_arch=speech_arch)


SER_LOSS_OPTIONS = ("ccc_weight", "rank_weight", "rank_margin", "rank_scale")


def ser_loss(config, mesh, params, outputs, batch, options=None) -> tuple[jax.Array, dict]:
  """Stage 1: weighted CCC loss + pairwise ranking loss over in-batch pairs of the predicted attributes.

  Args:
    config: the run's config (``loss_options.ccc_weight``, ``rank_*``).
    mesh: the device mesh (the ranking loss is sharded over its batch axes).
    params: unused (the signature of every stage's loss).
    outputs: {"attributes": (N, A) predictions}.
    batch: holds ``labels`` (N, A) true attributes.
    options: the loss options (None: ``config.loss_options``).

  Returns:
    ``(total, parts)``: the weighted sum and each weighted term's unweighted value by name.
  """
  del params
  o = config.loss_options if options is None else options
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


def ser_metric_names(config) -> tuple[str, ...]:
  """The names ``ser_split_metrics`` returns for the predictions of ``config.model.num_attributes`` attributes."""
  names = LABEL_NAMES[: config.model.num_attributes]
  return (*(f"ser_{m}_{name}" for name in names for m in ("ccc", "rank_accuracy")), "ser_ccc_mean",
          "ser_rank_accuracy")


def _ser_metrics(config, split, probe, texts) -> dict[str, float]:
  del config, probe, texts  # stage 1 reads the split's predictions alone
  return ser_split_metrics(split.attributes, split.labels)


SER = Stage(
    name="ser", title="stage 1 (the speech emotion model)", text_input_keys=(), speech_group=(SPEECH_TOWER,),
    reads_speech_cache=False, output_keys=("attributes",), speech_output_method="predict_attributes",
    speech_output="attributes", build=_build_ser, loss=ser_loss, loss_params=(),
    loss_output_widths=lambda config: dict(attributes=config.model.num_attributes),
    loss_option_names=lambda config: SER_LOSS_OPTIONS, loss_label=lambda config: "ccc+ranking",
    eval_inputs=lambda config: EvalInputs(with_text=False), metrics=_ser_metrics, metric_names=ser_metric_names,
    export_arrays=("attributes",),
    export_plots=(), export_views=False, export_queries=False, saved_model_signatures=(), api="EmotionRankEncoder",
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
