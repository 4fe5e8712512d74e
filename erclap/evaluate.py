"""Evaluation: embed a split with a trained model and compute every metric of ``erclap.metrics``.

Used by the training loop (periodic evaluation), by ``--mode=eval`` and by export. Embeddings are computed
batch by batch under ``jax.jit`` with the batch sharded over the mesh and gathered to every host.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from erclap import descriptions, fileio, input_pipeline, metrics, runtime, sharding
from erclap.schema import LABEL_NAMES, uses_speech_cache

# Printed in progress lines and the final table (those present in the result).
HEADLINE_METRICS = (
    "aoc", "voc", "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein",
    "r1_s2t", "r1_t2s", "ccc_zero_shot_arousal", "ccc_probe_arousal", "ccc_probe_valence",
    "ser_ccc_arousal", "ser_ccc_valence", "ser_ccc_dominance", "ser_rank_accuracy",
)


@dataclasses.dataclass
class SplitEmbeddings:
  """Everything export and metrics need about one split (valid rows only, in split order)."""
  speech: np.ndarray | None      # (N, D) float32 L2-normalised speech embeddings (clap) | None (ser)
  text: np.ndarray | None        # (N, D) float32 L2-normalised text embeddings (clap) | None (ser)
  labels: np.ndarray             # (N, 3) arousal, valence, dominance
  class_id: np.ndarray           # (N,) int32
  ids: list[str]
  descriptions: list[str]
  attributes: np.ndarray | None = None  # (N, A) predicted attributes, LABEL_NAMES order (ser) | None (clap)

  def head(self, n: int) -> SplitEmbeddings:
    """The first ``n`` rows."""
    cut = lambda x: None if x is None else x[:n]
    return SplitEmbeddings(speech=cut(self.speech), text=cut(self.text), labels=self.labels[:n],
                           class_id=self.class_id[:n], ids=self.ids[:n], descriptions=self.descriptions[:n],
                           attributes=cut(self.attributes))


class Embedder:
  """Jitted, mesh-sharded embedding functions of one model.

  The speech side reads audio, or with a speech-feature cache (``config.data.speech_features``) the cached
  representation, to which only the projection is applied."""

  def __init__(self, model, config, mesh, tokenizer=None):
    self.model, self.config, self.mesh, self.tokenizer = model, config, mesh, tokenizer
    self.divisor = sharding.batch_size_divisor(mesh)
    ser = config.stage == "ser"

    def audio_fn(params, audio, audio_mask):
      if ser:
        return self.model.apply({"params": params}, audio, audio_mask, train=False)["attributes"]
      return self.model.apply({"params": params}, audio, audio_mask, train=False, method="embed_audio")

    def features_fn(params, features):
      return self.model.apply({"params": params}, features, train=False, method="embed_speech_features")

    def representation_fn(params, audio, audio_mask):
      return self.model.apply({"params": params}, audio, audio_mask, train=False, method="speech_feature")

    def text_fn(params, input_ids, attention_mask):
      return self.model.apply({"params": params}, input_ids, attention_mask, train=False, method="embed_text")

    self._audio = jax.jit(audio_fn)
    self._features = jax.jit(features_fn)
    self._representation = jax.jit(representation_fn)
    self._text = jax.jit(text_fn)

  def _global(self, x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, x.ndim), x)

  def _gather(self, x) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  def audio(self, params, audio, audio_mask) -> np.ndarray:
    """(B, T) host-local waveforms -> (B_global, D) embeddings gathered on every host."""
    with sharding.use_mesh(self.mesh, self.config.mesh.logical_axis_rules):
      return self._gather(self._audio(params, self._global(audio), self._global(audio_mask)))

  def speech(self, params, batch: dict) -> np.ndarray:
    """A host-local eval batch -> (B_global, D) speech embeddings (SER: attributes) gathered on every host,
    from its audio or its cached ``speech_features``."""
    if "speech_features" not in batch:
      return self.audio(params, batch["audio"], batch["audio_mask"])
    with sharding.use_mesh(self.mesh, self.config.mesh.logical_axis_rules):
      return self._gather(self._features(params, self._global(np.asarray(batch["speech_features"], np.float32))))

  def representation(self, params, audio, audio_mask) -> np.ndarray:
    """(B, T) host-local waveforms -> (B_global, F) speech representations (what the projection reads,
    ``CLAPModel.speech_feature``) gathered on every host: the rows of a speech-feature cache."""
    with sharding.use_mesh(self.mesh, self.config.mesh.logical_axis_rules):
      return self._gather(self._representation(params, self._global(audio), self._global(audio_mask)))

  def gather(self, host_rows) -> np.ndarray:
    """Host-local batch rows (numpy) -> the global batch's rows on every host (batch order)."""
    return self._gather(self._global(host_rows))

  def gather_strings(self, strings, width: int = 128) -> list[str]:
    """Host-local batch strings (e.g. clip ids) -> the global batch's strings, in the order of ``gather``."""
    return _gather_strings(self, strings, width)

  def text(self, params, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Embeds a list of strings (identical on every host) -> (len(texts), D)."""
    if not texts:
      raise ValueError("texts: empty list")
    batch_size = max(self.divisor, batch_size // self.divisor * self.divisor)
    out = []
    for start in range(0, len(texts), batch_size):
      chunk = list(texts[start:start + batch_size])
      pad = -len(chunk) % self.divisor
      tokens = self.tokenizer(chunk + [""] * pad)
      ids = np.asarray(tokens["input_ids"])
      mask = np.asarray(tokens["attention_mask"])
      # every process holds all texts: a global array, gathered back
      with sharding.use_mesh(self.mesh, self.config.mesh.logical_axis_rules):
        emb = self._text(params, sharding.put_global(ids, sharding.batch_sharding(self.mesh, 2)),
                         sharding.put_global(mask, sharding.batch_sharding(self.mesh, 2)))
      out.append(self._gather(emb)[: len(chunk)])
    return np.concatenate(out)


def embed_split(embedder: Embedder, params, config, split: str, *, max_examples: int = 0,
                with_text: bool = True) -> SplitEmbeddings:
  """Runs the split once (eval iterator: static shapes, padded last batch) and keeps the valid rows.

  Every process must call it (the gathers are collectives); all get the same result, in split order, so
  that 1 and N processes give the same rows in the same order (each process reads a contiguous slice of
  the split, so a global batch is not a contiguous run of rows).

  Args:
    embedder: the model's embedder.
    params: the model parameters.
    config: the run's config.
    split: the split to embed.
    max_examples: keep the split's first ``max_examples`` rows (0: all).
    with_text: embed the descriptions too (clap stage); False leaves ``text`` None (the ridge probe's train
      split needs only speech, and a pre-trained text tower such as MiniLM costs more than the cached speech).

  Returns:
    The split's embeddings, labels, ids and descriptions.
  """
  divisor = math.lcm(embedder.divisor, jax.process_count())
  if config.eval.batch_size % divisor:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple of {divisor} "
                     f"(the mesh's {embedder.divisor} batch shards and {jax.process_count()} processes)")
  per_process = config.eval.batch_size // jax.process_count()
  if uses_speech_cache(config):  # before any batch: features of other weights are refused, not embedded
    input_pipeline.check_speech_cache(config, params)
  iterator = input_pipeline.create_eval_iterator(config, embedder.tokenizer, split, batch_size=per_process)
  wanted = min(max_examples, len(iterator.source)) if max_examples else 0
  cols = {k: [] for k in ("audio", "text", "labels", "class_id", "valid", "row")}
  ids, texts = [], []
  for b, batch in enumerate(iterator):
    cols["audio"].append(embedder.speech(params, batch))
    if config.stage != "ser" and with_text:
      with sharding.use_mesh(embedder.mesh, config.mesh.logical_axis_rules):
        t = embedder._text(params, embedder._global(batch["input_ids"]), embedder._global(batch["attention_mask"]))
      cols["text"].append(embedder._gather(t))
    for key in ("labels", "class_id", "valid"):
      cols[key].append(embedder.gather(np.asarray(batch[key])))
    # The split row of every batch row: the gathered rows are put back into split order at the end.
    cols["row"].append(embedder.gather(iterator.batch_rows(b)))
    ids.extend(embedder.gather_strings(batch["id"], 128))
    texts.extend(embedder.gather_strings(batch["description"], 1024))
    rows = np.concatenate(cols["row"])[np.concatenate(cols["valid"]).astype(bool)]
    if wanted and np.sum(rows < wanted) >= wanted:  # the same verdict on every process: gathered data
      break
  if not cols["audio"]:
    raise ValueError(f"split {split!r} of {config.data.name!r} is empty")
  keep = np.flatnonzero(np.concatenate(cols["valid"]).astype(bool))
  keep = keep[np.argsort(np.concatenate(cols["row"])[keep], kind="stable")]
  audio_out = np.concatenate(cols["audio"])[keep]
  ser = config.stage == "ser"
  result = SplitEmbeddings(
      speech=None if ser else audio_out, text=np.concatenate(cols["text"])[keep] if cols["text"] else None,
      labels=np.concatenate(cols["labels"])[keep].astype(np.float32), class_id=np.concatenate(cols["class_id"])[keep],
      ids=[ids[i] for i in keep], descriptions=[texts[i] for i in keep], attributes=audio_out if ser else None)
  return result.head(max_examples) if max_examples else result


def _gather_strings(embedder: Embedder, strings, width: int) -> list[str]:
  """Strings of this host's batch rows -> the global batch's strings, in the same order as the arrays.

  Encoded as fixed-width UTF-8 byte rows so they travel like any other batch-sharded array."""
  encoded = np.zeros((len(strings), width), np.uint8)
  for row, text in enumerate(strings):
    raw = str(text).encode("utf-8")[:width]
    encoded[row, : len(raw)] = np.frombuffer(raw, np.uint8)
  gathered = embedder._gather(embedder._global(encoded))
  return [bytes(row).rstrip(b"\0").decode("utf-8", errors="ignore") for row in gathered]


def prompt_embeddings(embedder: Embedder, params, config) -> dict:
  """Text embeddings of the level prompts (prompt-based metrics, zero-shot prediction) and retrieval queries.

  Returns a dict of {attribute: array} dicts:
    prompts / prompt_levels: (7, D) one unit-norm embedding per level 1..7 (the ``metrics.mean_by_level`` of
      ``config.eval.prompt_wordings`` template descriptions per level, ``descriptions.level_descriptions``:
      the words the model was trained on) and (7,) the levels.
    fixed_prompts / fixed_prompt_levels: the fixed prompts "very low arousal" ... "very high arousal" (words
      the training descriptions never contain) and their levels, for the ``*_fixed_*`` metrics.
    paraphrase_prompts / paraphrase_prompt_levels: (7, D) the free-form prompts of
      ``descriptions.paraphrased_level_prompts`` ("a drowsy voice, barely awake" ...) averaged per level, and
      (7,) the levels, for the ``*_paraphrase_*`` metrics.
    queries / query_values (arousal, valence): single-attribute description pools of the retrieval tau.
  """
  out = {k: {} for k in ("prompts", "prompt_levels", "fixed_prompts", "fixed_prompt_levels", "paraphrase_prompts",
                         "paraphrase_prompt_levels", "queries", "query_values")}
  for attribute in LABEL_NAMES:
    levels, texts = descriptions.level_descriptions(attribute, num_wordings=config.eval.prompt_wordings,
                                                    seed=config.seed)
    out["prompt_levels"][attribute], out["prompts"][attribute] = metrics.mean_by_level(
        embedder.text(params, texts), levels)
    fixed = descriptions.level_prompts(attribute)
    out["fixed_prompts"][attribute] = embedder.text(params, fixed)
    out["fixed_prompt_levels"][attribute] = np.linspace(1.0, 7.0, len(fixed))
    levels, texts = descriptions.paraphrased_level_prompts(attribute)
    out["paraphrase_prompt_levels"][attribute], out["paraphrase_prompts"][attribute] = metrics.mean_by_level(
        embedder.text(params, texts), levels)
  for attribute in ("arousal", "valence"):
    values = np.arange(1, 8, dtype=np.float32)
    texts = descriptions.attribute_queries(attribute, values, num_wordings=4, seed=config.seed)
    query_values = np.repeat(values, len(texts) // len(values)) if len(texts) != len(values) else values
    out["queries"][attribute] = embedder.text(params, texts)
    out["query_values"][attribute] = np.asarray(query_values, np.float32)
  return out


def clap_metrics(embedder: Embedder, params, config, split: str) -> tuple[dict[str, float], SplitEmbeddings]:
  """Every metric of ``erclap.metrics.summarize`` on ``split`` (ridge probe fit on the train split)."""
  split_emb = embed_split(embedder, params, config, split, max_examples=config.eval.max_examples)
  train_emb = embed_split(embedder, params, config, config.data.train_split,
                          max_examples=config.eval.probe_train_examples, with_text=False)
  prompts = prompt_embeddings(embedder, params, config)
  result = metrics.summarize(
      split_emb.speech, split_emb.text, split_emb.labels,
      prompt_embeddings=prompts["prompts"], prompt_levels=prompts["prompt_levels"],
      fixed_prompt_embeddings=prompts["fixed_prompts"], fixed_prompt_levels=prompts["fixed_prompt_levels"],
      paraphrase_prompt_embeddings=prompts["paraphrase_prompts"],
      paraphrase_prompt_levels=prompts["paraphrase_prompt_levels"],
      query_embeddings=prompts["queries"], query_values=prompts["query_values"],
      train_speech=train_emb.speech, train_labels=train_emb.labels,
      retrieval_levels=config.eval.retrieval_levels, retrieval_draws=config.eval.retrieval_draws,
      retrieval_top_k=config.eval.retrieval_top_k, seed=config.seed)
  return {k: float(v) for k, v in result.items()}, split_emb


def ser_metrics(embedder: Embedder, params, config, split: str) -> tuple[dict[str, float], SplitEmbeddings]:
  """Stage 1: CCC per attribute and pairwise ranking accuracy of the predicted attributes."""
  split_emb = embed_split(embedder, params, config, split, max_examples=config.eval.max_examples)
  pred, labels = split_emb.attributes, split_emb.labels
  names = LABEL_NAMES[: pred.shape[1]]
  result = {}
  for a, name in enumerate(names):
    result[f"ser_ccc_{name}"] = float(metrics.ccc(pred[:, a], labels[:, a]))
    result[f"ser_rank_accuracy_{name}"] = float(metrics.pairwise_ranking_accuracy(pred[:, a], labels[:, a]))
  result["ser_ccc_mean"] = float(np.mean([result[f"ser_ccc_{n}"] for n in names]))
  result["ser_rank_accuracy"] = float(np.mean([result[f"ser_rank_accuracy_{n}"] for n in names]))
  return result, split_emb


def evaluate_params(model, params, config, tokenizer, mesh, *, split: str) -> dict[str, float]:
  """The metrics of ``config.stage`` (``clap_metrics`` or ``ser_metrics``) of ``params`` on ``split``."""
  embedder = Embedder(model, config, mesh, tokenizer)
  fn = ser_metrics if config.stage == "ser" else clap_metrics
  return fn(embedder, params, config, split)[0]


def format_table(metrics: dict[str, float], title: str = "") -> str:
  rows = [(k, metrics[k]) for k in HEADLINE_METRICS if k in metrics]
  rows += sorted((k, v) for k, v in metrics.items() if k not in HEADLINE_METRICS)
  width = max(len(k) for k, _ in rows) if rows else 10
  lines = [title] if title else []
  lines += [f"  {k:<{width}}  {v: .4f}" for k, v in rows]
  return "\n".join(lines)


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
  """--mode=eval: metrics of a checkpoint (config.export.step, default latest) on the test split.

  Writes ``workdir/eval/<split>_<step>.json`` and prints the table; returns the metrics."""
  mesh, tokenizer, model = runtime.setup(config, workdir)
  step, params, _ = runtime.restore_params(config, workdir, model, mesh, step=config.export.step)
  split = config.data.test_split
  path = os.path.join(workdir, "eval", f"{split}_{step}.json")
  chief = jax.process_index() == 0
  # Checked before the embeddings are computed; every process stops together if process 0 cannot write.
  runtime.agree_or_raise(f"{path}: a directory is in the way of this output file (move it and rerun)"
                         if chief and os.path.isdir(path) else None, IsADirectoryError)
  if chief:
    print(f"[eval] {split}: embedding with the checkpoint of step {step}", flush=True)
  # Every process computes (the embedding gathers are collectives); process 0 alone writes.
  result = evaluate_params(model, params, config, tokenizer, mesh, split=split)
  if chief:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fileio.write_json(path, dict(step=step, split=split, metrics=result))
    print(format_table(result, f"[eval] {config.data.name}/{split} at step {step}:"), flush=True)
  return result
