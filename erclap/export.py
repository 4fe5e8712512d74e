"""--mode=export: embeddings, metrics and plots of a checkpoint, under ``workdir/export/``.

Per split of the cross-modal stage (``erclap.stages``): ``<split>.parquet`` (id, split, arousal, valence, dominance,
description, speech_embedding and text_embedding as fixed-size lists), ``<split>_speech.npy`` /
``<split>_text.npy``, ``<split>_metrics.json`` and PNG plots (PCA of both modalities coloured by arousal and
valence, similarity versus label distance, prompt-level ordering); then TensorBoard projector files of every split
and ``report.html`` (``erclap.results.views``). For the SER stage the parquet holds the
predicted attributes (``predicted_arousal``, ...) instead of embeddings, and ``<split>_attributes.npy``
the (N, A) predictions. A cross-modal export also writes ``retrieval_queries.npz``, the query pools of AOC / VOC
(``<attribute>_embeddings`` (Q, D), ``<attribute>_values`` (Q,)), so that they and their intervals recompute from
the export alone. Every file is written under a temporary name and renamed when complete (``erclap.fileio``), so
an interrupted export leaves no partial file. Embeddings are gathered from all hosts; process 0 writes.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from erclap import evaluate, fileio, plots, progress, prompts, resolve, runtime, stages
from erclap.results import views
from erclap.schema import LABEL_NAMES

QUERIES_FILE = "retrieval_queries.npz"  # the query pools of AOC / VOC (cross-modal exports)


def write_parquet(path: str, split: str, emb: evaluate.SplitEmbeddings) -> None:
  """One row per clip; embeddings as Arrow fixed-size lists (pandas reads them as arrays)."""
  import pyarrow as pa  # heavy; only export writes Parquet
  import pyarrow.parquet as pq

  def fixed_list(x: np.ndarray):
    x = np.ascontiguousarray(x, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])

  columns = {
      "id": pa.array(emb.ids, pa.string()),
      "split": pa.array([split] * len(emb.ids), pa.string()),
      **{name: pa.array(emb.labels[:, a]) for a, name in enumerate(LABEL_NAMES)},
      "description": pa.array(emb.descriptions, pa.string()),
  }
  if emb.speech is not None:
    columns["speech_embedding"] = fixed_list(emb.speech)
  if emb.text is not None:
    columns["text_embedding"] = fixed_list(emb.text)
  if emb.attributes is not None:
    for a, name in enumerate(LABEL_NAMES[: emb.attributes.shape[1]]):
      columns[f"predicted_{name}"] = pa.array(np.asarray(emb.attributes[:, a], np.float32))
  with fileio.atomic_path(path) as tmp:
    pq.write_table(pa.table(columns), tmp)


def _write_plots(out_dir: str, split: str, emb: evaluate.SplitEmbeddings, level_prompts: dict) -> None:
  plots.plot_embedding_pca(emb.speech, emb.text, emb.labels, os.path.join(out_dir, f"{split}_pca.png"))
  sim = emb.speech @ emb.text.T
  plots.plot_similarity_vs_distance(sim, emb.labels, os.path.join(out_dir, f"{split}_sim_vs_distance.png"))
  for a, attribute in enumerate(("arousal", "valence")):
    prompt_sim = level_prompts["prompts"][attribute] @ emb.speech.T
    plots.plot_prompt_ordering(prompt_sim, level_prompts["prompt_levels"][attribute], emb.labels[:, a],
                               os.path.join(out_dir, f"{split}_prompt_ordering_{attribute}.png"))


def _split_outputs(out_dir: str, split: str, stage: stages.Stage) -> list[str]:
  """Every file the export of ``split`` writes (``_write_split`` and, cross-modal, ``_write_plots``)."""
  names = [f"{split}.parquet", f"{split}_metrics.json"]
  if not stage.cross_modal:
    names += [f"{split}_attributes.npy"]
  else:
    names += [f"{split}_speech.npy", f"{split}_text.npy", f"{split}_pca.png", f"{split}_sim_vs_distance.png",
              *(f"{split}_prompt_ordering_{a}.png" for a in ("arousal", "valence"))]
  return [os.path.join(out_dir, name) for name in names]


def output_problems(out_dir: str, paths: list[str]) -> list[str]:
  """Why the export could not write ``paths`` into ``out_dir`` (empty: it can), found before any work.

  A directory where a file goes, a file where the directory goes, or a directory that cannot be written
  would otherwise fail the export only after every embedding was computed."""
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    return [f"{out_dir}: exists and is not a directory; the export writes its files there (move it and rerun)"]
  existing = out_dir if os.path.isdir(out_dir) else os.path.dirname(out_dir)
  if not os.access(existing, os.W_OK | os.X_OK):
    return [f"{existing}: not writable by this user; the export writes into {out_dir}"]
  return [f"{path}: a directory is in the way of this output file (move it and rerun)"
          for path in paths if os.path.isdir(path)]


def _check_outputs(config, out_dir: str) -> None:
  """Process 0 checks every output path; every process stops if one cannot be written."""
  problem = None
  if jax.process_index() == 0:
    paths = [p for split in config.export.splits for p in _split_outputs(out_dir, split, stages.of(config))]
    if stages.of(config).cross_modal:
      paths += [os.path.join(out_dir, QUERIES_FILE), *views.output_paths(out_dir, config.export.splits)]
    problems = output_problems(out_dir, paths)
    problem = f"export cannot write its outputs: {'; '.join(problems)}" if problems else None
  runtime.agree_or_raise(problem, OSError)


def _write_queries(out_dir: str, queries: dict) -> None:
  """``QUERIES_FILE``: per attribute the query embeddings and the values they state (``prompts.retrieval_queries``)."""
  arrays = {f"{a}_embeddings": np.asarray(e, np.float32) for a, e in queries["queries"].items()}
  arrays.update({f"{a}_values": np.asarray(v, np.float32) for a, v in queries["query_values"].items()})
  with fileio.atomic_open(os.path.join(out_dir, QUERIES_FILE), "wb") as f:
    np.savez(f, **arrays)


def _write_split(out_dir: str, split: str, step: int, emb: evaluate.SplitEmbeddings, metrics: dict) -> None:
  write_parquet(os.path.join(out_dir, f"{split}.parquet"), split, emb)
  arrays = dict(speech=emb.speech, text=emb.text, attributes=emb.attributes)
  for name, array in arrays.items():
    if array is not None:
      fileio.write_npy(os.path.join(out_dir, f"{split}_{name}.npy"), array.astype(np.float32))
  # Last: the metrics file marks the split's export as complete.
  fileio.write_json(os.path.join(out_dir, f"{split}_metrics.json"), dict(step=step, split=split, metrics=metrics))


def export_embeddings(config, workdir: str) -> dict[str, dict[str, float]]:
  """Writes the export of ``config.export.splits`` for checkpoint ``config.export.step`` (-1 = latest).

  Every output path is checked first. Every process computes everything (embedding, gathering, metrics and
  prompts are collectives that all processes must enter); only process 0 writes.

  Args:
    config: the run's config.
    workdir: the run's directory; outputs go to ``workdir/export``.

  Returns:
    {split: metrics}.
  """
  config = resolve.ensure(config, workdir, "export")
  out_dir = os.path.join(workdir, "export")
  _check_outputs(config, out_dir)
  mesh, tokenizer, model = runtime.setup(config, workdir)
  step, params, _ = runtime.restore_params(config, workdir, model, mesh, step=config.export.step)
  embedder = evaluate.Embedder(model, config, mesh, tokenizer)
  chief = jax.process_index() == 0
  if chief:
    os.makedirs(out_dir, exist_ok=True)
    fileio.remove_stale_temps(out_dir)  # debris of an export killed mid-write (never a visible output)
  stage = stages.of(config)
  # The plots' level prompts: embedding them is a collective, so every process does it.
  level_prompts = prompts.level_prompts(lambda texts: embedder.text(params, texts), config) \
      if stage.cross_modal else None
  if stage.cross_modal:
    queries = prompts.retrieval_queries(lambda texts: embedder.text(params, texts), config)
    if chief:
      _write_queries(out_dir, queries)
  all_metrics, split_views = {}, []
  for split in config.export.splits:
    if chief:
      progress.print_line(f"[export] {split}: embedding with the checkpoint of step {step}")
    metrics, emb = evaluate.split_metrics(embedder, params, config, split)
    all_metrics[split] = metrics
    if chief:
      _write_split(out_dir, split, step, emb, metrics)
      if level_prompts is not None:
        _write_plots(out_dir, split, emb, level_prompts)
        split_views.append(views.SplitView(split, emb.ids, emb.labels, emb.descriptions, emb.speech, emb.text,
                                           metrics, level_prompts))
      progress.print_line(evaluate.format_table(metrics, f"[export] {split}: {len(emb.ids)} clips -> {out_dir}",
                                                stage.headline_metrics))
  if split_views:  # the projector files and report.html of the exported splits
    views.write_views(out_dir, split_views, config, workdir, step)
  return all_metrics
