"""Evaluation: embed a split with a trained model and compute the metrics of its stage (``erclap.stages``).

Used by the training loop (periodic evaluation), by ``--mode=eval`` and by export. Embeddings are computed
batch by batch under ``jax.jit`` with the batch sharded over the mesh and gathered to every host, from the run's
speech source (``erclap.speech_source``: audio, or a speech-feature cache checked against the parameters first).
``split_metrics`` embeds what the stage declares it needs (``Stage.eval_inputs``: the split with or without its
descriptions, the probe's split, the prompt texts) and hands the arrays to the stage's pure ``metrics``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from erclap import (
  distributed,
  fileio,
  input_pipeline,
  members,
  progress,
  resolve,
  runtime,
  sharding,
  speech_source,
  stages,
  state,
)
from erclap.speech_source import SpeechSource


@dataclasses.dataclass
class SplitEmbeddings:
  """Everything export and metrics need about one split (valid rows only, in split order)."""
  speech: np.ndarray | None      # (N, D) float32 L2-normalised speech embeddings (cross-modal) | None (ser)
  text: np.ndarray | None        # (N, D) float32 L2-normalised text embeddings (cross-modal) | None
  labels: np.ndarray             # (N, 3) arousal, valence, dominance
  class_id: np.ndarray           # (N,) int32
  ids: list[str]
  descriptions: list[str]
  attributes: np.ndarray | None = None  # (N, A) predicted attributes, LABEL_NAMES order (ser) | None

  def head(self, n: int) -> SplitEmbeddings:
    """The first ``n`` rows."""
    cut = lambda x: None if x is None else x[:n]
    return SplitEmbeddings(speech=cut(self.speech), text=cut(self.text), labels=self.labels[:n],
                           class_id=self.class_id[:n], ids=self.ids[:n], descriptions=self.descriptions[:n],
                           attributes=cut(self.attributes))


class Embedder:
  """Jitted, mesh-sharded embedding functions of one model.

  The speech side reads the inputs of ``source`` (the config's speech source when not given): audio, or the
  cached representation, to which only the projection is applied. ``speech`` gives the stage's per-clip output
  (``Stage.speech_output``: joint-space embeddings or predicted attributes), ``representation`` (audio only)
  what a speech-feature cache holds."""

  def __init__(self, model, config, mesh, tokenizer=None, source: SpeechSource | None = None):
    self.model, self.config, self.mesh, self.tokenizer = model, config, mesh, tokenizer
    self.source = speech_source.of(config) if source is None else source
    self.divisor = sharding.batch_size_divisor(mesh)

    def apply(method):
      return jax.jit(lambda params, *inputs: self.model.apply({"params": params}, *inputs, train=False,
                                                              method=method))

    self._speech = apply(self.source.output_method(stages.of(config)))
    method = self.source.representation_method
    self._representation = apply(method) if method is not None else None
    self._text = apply("embed_text")

  def _global(self, x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, x.ndim), x)

  def _gather(self, x) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  def _run(self, fn, params, batch: dict) -> np.ndarray:
    inputs = [self._global(batch[k]) for k in self.source.input_keys]
    with sharding.use_mesh(self.mesh, self.config.mesh.logical_axis_rules):
      return self._gather(fn(params, *inputs))

  def speech(self, params, batch: dict) -> np.ndarray:
    """A host-local batch (the source's ``input_keys``) -> (B_global, D) speech outputs (embeddings, or
    attributes) gathered on every host."""
    return self._run(self._speech, params, batch)

  def representation(self, params, batch: dict) -> np.ndarray:
    """A host-local audio batch -> (B_global, F) speech representations (what the projection reads,
    ``CLAPModel.speech_feature``) gathered on every host: the rows of a speech-feature cache."""
    if self._representation is None:
      raise ValueError(f"the {self.source.name} speech source holds the representation already")
    return self._run(self._representation, params, batch)

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
    embedder: the model's embedder (its speech source is the one read).
    params: the model parameters.
    config: the run's config.
    split: the split to embed.
    max_examples: keep the split's first ``max_examples`` rows (0: all).
    with_text: embed the descriptions too (a stage with a text tower); False leaves ``text`` None (the ridge
      probe's train split needs only speech, and a pre-trained text tower such as MiniLM costs more than cached
      speech).

  Returns:
    The split's outputs (in the stage's ``speech_output`` field), labels, ids and descriptions.
  """
  divisor = math.lcm(embedder.divisor, jax.process_count())
  if config.eval.batch_size % divisor:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple of {divisor} "
                     f"(the mesh's {embedder.divisor} batch shards and {jax.process_count()} processes)")
  per_process = config.eval.batch_size // jax.process_count()
  embedder.source.check(config, params)  # before any batch: features of other weights are refused, not embedded
  iterator = input_pipeline.create_eval_iterator(config, embedder.tokenizer, split, batch_size=per_process,
                                                 source=embedder.source)
  wanted = min(max_examples, len(iterator.source)) if max_examples else 0
  stage = stages.of(config)
  with_text = with_text and stage.has_text_tower
  cols = {k: [] for k in ("speech", "text", "labels", "class_id", "valid", "row")}
  ids, texts = [], []
  for b, batch in enumerate(iterator):
    cols["speech"].append(embedder.speech(params, batch))
    if with_text:
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
  if not cols["speech"]:
    raise ValueError(f"split {split!r} of {config.data.name!r} is empty")
  keep = np.flatnonzero(np.concatenate(cols["valid"]).astype(bool))
  keep = keep[np.argsort(np.concatenate(cols["row"])[keep], kind="stable")]
  outputs = dict(speech=None, attributes=None)
  outputs[stage.speech_output] = np.concatenate(cols["speech"])[keep]
  result = SplitEmbeddings(
      text=np.concatenate(cols["text"])[keep] if cols["text"] else None,
      labels=np.concatenate(cols["labels"])[keep].astype(np.float32), class_id=np.concatenate(cols["class_id"])[keep],
      ids=[ids[i] for i in keep], descriptions=[texts[i] for i in keep], **outputs)
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


def split_metrics(embedder: Embedder, params, config, split: str) -> tuple[dict[str, float], SplitEmbeddings]:
  """The stage's metrics of ``params`` on ``split``, and the split's outputs.

  Embeds what the stage's ``eval_inputs`` lists (the split, with its descriptions where the stage reads them; the
  probe's split, speech only; the texts, one embedding call per tuple) and returns ``Stage.metrics`` of those
  arrays, with what the parameters the loss reads say of themselves (``Stage.parameter_metrics``: the learned
  temperature). Every process must call it (the embeddings are gathered)."""
  stage = stages.of(config)
  needs = stage.eval_inputs(config)
  emb = embed_split(embedder, params, config, split, max_examples=config.eval.max_examples,
                    with_text=needs.with_text)
  probe = embed_split(embedder, params, config, needs.probe_split, max_examples=needs.probe_examples,
                      with_text=False) if needs.probe_split else None
  texts = [embedder.text(params, list(batch)) for batch in needs.texts]
  result = stage.metrics(config, emb, probe, texts)
  result.update(stage.parameter_metrics(sharding.to_host({k: params[k] for k in stage.loss_params if k in params})))
  return result, emb


@dataclasses.dataclass(frozen=True)
class ProgramRun:
  """One run a program's checkpoint holds: the program itself, or one of its members (``erclap.members``).

  Attributes:
    config: its config (a member's: ``members.member_config``).
    directory: where its outputs go: the workdir, or ``<workdir>/members/<k>``.
    params: its parameters (a member's: ``state.member_params``).
    member: k, or None for an ordinary run.
  """
  config: object
  directory: str
  params: object
  member: int | None = None


def program_runs(config, workdir: str, params) -> list[ProgramRun]:
  """The runs ``--mode=eval`` / ``export`` write: the run itself, or the members ``export.member`` selects
  (``members.selected``: one, or every one), each with its config, directory and parameters.

  Args:
    config: the program's resolved config.
    workdir: the program's directory.
    params: the checkpoint's parameters (stacked, for a program with members).
  """
  if not members.count(config):
    return [ProgramRun(config, workdir, params)]
  return [ProgramRun(members.member_config(config, k), members.directory(workdir, k),
                     state.member_params(config, params, k), k) for k in members.selected(config)]


def evaluate_params(model, params, config, tokenizer, mesh, *, split: str) -> dict[str, float]:
  """The metrics of the config's stage of ``params`` on ``split``."""
  return split_metrics(Embedder(model, config, mesh, tokenizer), params, config, split)[0]


def format_table(metrics: dict[str, float], title: str = "", headline: tuple[str, ...] = ()) -> str:
  """The metrics as a text table: ``headline`` first in its order (those present), then the rest by name."""
  rows = [(k, metrics[k]) for k in headline if k in metrics]
  rows += sorted((k, v) for k, v in metrics.items() if k not in headline)
  width = max(len(k) for k, _ in rows) if rows else 10
  lines = [title] if title else []
  lines += [f"  {k:<{width}}  {v: .4f}" for k, v in rows]
  return "\n".join(lines)


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
  """--mode=eval: metrics of a checkpoint (config.export.step, default latest) on the test split.

  Args:
    config: resolved for ``eval`` (``erclap.resolve``).
    workdir: the run's directory.

  Writes ``workdir/eval/<split>_<step>.json`` (a program with members: each selected member's under
  ``members/<k>/``, ``program_runs``) and prints the table; returns the metrics (member k's under
  ``members/<k>/<metric>``)."""
  resolve.require(config, "eval")
  mesh, tokenizer, model = runtime.setup(config)
  step, params, _ = runtime.restore_params(config, workdir, model, mesh, step=config.export.step)
  split = config.data.test_split
  runs = program_runs(config, workdir, params)
  paths = [os.path.join(run.directory, "eval", f"{split}_{step}.json") for run in runs]
  chief = jax.process_index() == 0
  # Checked before the embeddings are computed; every process stops together if process 0 cannot write.
  blocked = [p for p in paths if os.path.isdir(p)] if chief else []
  distributed.agree_or_raise(f"{blocked[0]}: a directory is in the way of this output file (move it and rerun)"
                             if blocked else None, IsADirectoryError)
  embedder = Embedder(model, config, mesh, tokenizer)
  out = {}
  for run, path in zip(runs, paths, strict=True):
    who = f" member {run.member}" if run.member is not None else ""
    if chief:
      progress.print_line(f"[eval] {split}{who}: embedding with the checkpoint of step {step}")
    # Every process computes (the embedding gathers are collectives); process 0 alone writes.
    result = split_metrics(embedder, run.params, run.config, split)[0]
    if chief:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      fileio.write_json(path, dict(step=step, split=split, metrics=result))
      progress.print_line(format_table(result, f"[eval] {config.data.name}/{split}{who} at step {step}:",
                                       stages.of(config).headline_metrics))
    out.update(result if run.member is None else {f"{members.MEMBERS_DIR}/{run.member}/{k}": v
                                                  for k, v in result.items()})
  return out
