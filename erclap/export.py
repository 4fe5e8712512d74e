"""--mode=export: embeddings, metrics and plots of a checkpoint, under ``workdir/export/``.

Per split, what the stage lists (``Stage.export_files``, ``erclap.stages``): for the cross-modal stage
``<split>.parquet`` (id, split, arousal, valence, dominance, description, speech_embedding and text_embedding as
fixed-size lists), ``<split>_speech.npy`` / ``<split>_text.npy``, ``<split>_metrics.json`` and PNG plots (PCA of
both modalities coloured by arousal and valence, similarity versus label distance, prompt-level ordering). For the
SER stage the parquet holds the predicted attributes (``predicted_arousal``, ...) instead of embeddings, and
``<split>_attributes.npy`` the (N, A) predictions; no plots. Then, where the stage has them
(``Stage.export_views``), TensorBoard projector files of every split and ``report.html``
(``erclap.results.views``); and (``Stage.export_queries``) ``retrieval_queries.npz``, the query pools of AOC / VOC
(``<attribute>_embeddings`` (Q, D), ``<attribute>_values`` (Q,)), so that they and their intervals recompute from
the export alone. Every file is written under a temporary name and renamed when complete (``erclap.fileio``), so
an interrupted export leaves no partial file. Embeddings are gathered from all hosts; process 0 writes. Each
split's metrics table is printed once (``table_title``).

A program with members (``erclap.members``) exports each member as the run it is: member k's files under
``<workdir>/members/<k>/export/``, from its parameters and its config (``evaluate.program_runs``; ``export.member``
picks one), the checkpoint restored once and the embedding functions compiled once for all of them.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from erclap import (
    distributed,
    evaluate,
    fileio,
    members,
    plots,
    progress,
    prompts,
    resolve,
    runtime,
    speech_source,
    stages,
    trainable,
)
from erclap.results import views
from erclap.schema import LABEL_NAMES

QUERIES_FILE = "retrieval_queries.npz"  # the query pools of AOC / VOC (``Stage.export_queries``)


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


def _plot(name: str, path: str, emb: evaluate.SplitEmbeddings, level_prompts: dict) -> None:
  """Writes the export plot ``name`` (one of ``Stage.export_plots``) of a split's speech and text embeddings."""
  if name == "pca":
    plots.plot_embedding_pca(emb.speech, emb.text, emb.labels, path)
  elif name == "sim_vs_distance":
    plots.plot_similarity_vs_distance(emb.speech @ emb.text.T, emb.labels, path)
  elif name.startswith("prompt_ordering_"):
    attribute = name.removeprefix("prompt_ordering_")
    prompt_sim = level_prompts["prompts"][attribute] @ emb.speech.T
    plots.plot_prompt_ordering(prompt_sim, level_prompts["prompt_levels"][attribute],
                               emb.labels[:, LABEL_NAMES.index(attribute)], path)
  else:
    raise ValueError(f"no export plot {name!r}")


def _write_plots(out_dir: str, split: str, emb: evaluate.SplitEmbeddings, level_prompts: dict,
                 stage: stages.Stage) -> None:
  for name in stage.export_plots:
    _plot(name, os.path.join(out_dir, f"{split}_{name}.png"), emb, level_prompts)


def _split_outputs(out_dir: str, split: str, stage: stages.Stage) -> list[str]:
  """Every file the export of ``split`` writes (``Stage.export_files``)."""
  return [os.path.join(out_dir, name) for name in stage.export_files(split)]


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
    stage = stages.of(config)
    paths = [p for split in config.export.splits for p in _split_outputs(out_dir, split, stage)]
    if stage.export_queries:
      paths.append(os.path.join(out_dir, QUERIES_FILE))
    if stage.export_views:
      paths += views.output_paths(out_dir, config.export.splits)
    problems = output_problems(out_dir, paths)
    problem = f"export cannot write its outputs: {'; '.join(problems)}" if problems else None
  distributed.agree_or_raise(problem, OSError)


def _write_queries(out_dir: str, queries: dict) -> None:
  """``QUERIES_FILE``: per attribute the query embeddings and the values they state (``prompts.retrieval_queries``)."""
  arrays = {f"{a}_embeddings": np.asarray(e, np.float32) for a, e in queries["queries"].items()}
  arrays.update({f"{a}_values": np.asarray(v, np.float32) for a, v in queries["query_values"].items()})
  with fileio.atomic_open(os.path.join(out_dir, QUERIES_FILE), "wb") as f:
    np.savez(f, **arrays)


def _write_split(out_dir: str, split: str, step: int, emb: evaluate.SplitEmbeddings, metrics: dict,
                 stage: stages.Stage) -> None:
  write_parquet(os.path.join(out_dir, f"{split}.parquet"), split, emb)
  for name in stage.export_arrays:
    fileio.write_npy(os.path.join(out_dir, f"{split}_{name}.npy"), getattr(emb, name).astype(np.float32))
  # Last: the metrics file marks the split's export as complete.
  fileio.write_json(os.path.join(out_dir, f"{split}_metrics.json"), dict(step=step, split=split, metrics=metrics))


def table_title(config, split: str, num_clips: int, out_dir: str) -> str:
  """The title of a split's metrics table: stage, loss, corpus, split, where the speech model came from (a recipe
  run: its stage 1; a run started from another model, e.g. a sweep's shared stage 1: that model), how it is held
  and read, and where the outputs are."""
  stage = stages.of(config)
  speech = ""
  if config.recipe.stage1:
    speech = (f", speech: {config.recipe.stage1} (stage 1, {trainable.of(config).summary}, "
              f"{speech_source.of(config).name})")
  elif config.model.speech_init:
    speech = f", speech: {config.model.speech_init} ({trainable.of(config).summary}, {speech_source.of(config).name})"
  return (f"ERCLAP {stage.name}/{stage.loss_label(config)} on {config.data.name}/{split}{speech}: {num_clips} clips"
          f" — outputs in {out_dir}")


def export_embeddings(config, workdir: str) -> dict[str, dict[str, float]]:
  """--mode=export: writes the export of ``config.export.splits`` for checkpoint ``config.export.step`` (-1 =
  latest), and prints each split's metrics table.

  Every output path is checked first. Every process computes everything (embedding, gathering, metrics and
  prompts are collectives that all processes must enter); only process 0 writes.

  Args:
    config: resolved for ``export`` (``erclap.resolve``; ``--mode=all`` passes its own).
    workdir: the run's directory; outputs go to ``workdir/export`` (member k's to ``workdir/members/<k>/export``).

  Returns:
    {split: metrics}; with members, {``members/<k>/<split>``: metrics} of each exported member.
  """
  resolve.require(config, "export")
  selected = members.selected(config) if members.count(config) else [None]
  run_dirs = [workdir if k is None else members.directory(workdir, k) for k in selected]
  for run_dir in run_dirs:
    _check_outputs(config, os.path.join(run_dir, "export"))
  mesh, tokenizer, model = runtime.setup(config)
  step, params, _ = runtime.restore_params(config, workdir, model, mesh, step=config.export.step)
  embedder = evaluate.Embedder(model, config, mesh, tokenizer)
  out = {}
  for run in evaluate.program_runs(config, workdir, params):
    metrics = _export_run(run.config, embedder, run.params, step, os.path.join(run.directory, "export"),
                          run.directory)
    out.update(metrics if run.member is None else {f"{members.MEMBERS_DIR}/{run.member}/{split}": m
                                                   for split, m in metrics.items()})
  return out


def _export_run(config, embedder: evaluate.Embedder, params, step: int, out_dir: str,
                run_dir: str) -> dict[str, dict[str, float]]:
  """The export of one run (``export_embeddings``): ``config`` and ``params`` its own, ``run_dir`` its directory."""
  chief = jax.process_index() == 0
  if chief:
    os.makedirs(out_dir, exist_ok=True)
    fileio.remove_stale_temps(out_dir)  # debris of an export killed mid-write (never a visible output)
  stage = stages.of(config)
  # The plots' level prompts: embedding them is a collective, so every process does it.
  level_prompts = prompts.level_prompts(lambda texts: embedder.text(params, texts), config) \
      if stage.export_plots or stage.export_views else None
  if stage.export_queries:
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
      _write_split(out_dir, split, step, emb, metrics, stage)
      _write_plots(out_dir, split, emb, level_prompts, stage)
      if stage.export_views:
        split_views.append(views.SplitView(split, emb.ids, emb.labels, emb.descriptions, emb.speech, emb.text,
                                           metrics, level_prompts))
      progress.print_line("\n" + evaluate.format_table(metrics, table_title(config, split, len(emb.ids), out_dir),
                                                       stage.headline_metrics))
  if split_views:  # the projector files and report.html of the exported splits
    views.write_views(out_dir, split_views, config, run_dir, step)
  return all_metrics
