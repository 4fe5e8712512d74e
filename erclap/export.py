"""--mode=export: embeddings, metrics and plots of a checkpoint, under ``workdir/export/``.

Per split: ``<split>.parquet`` (id, split, arousal, valence, dominance, description, speech_embedding and
text_embedding as fixed-size lists), ``<split>_speech.npy`` / ``<split>_text.npy``, ``<split>_metrics.json``
and PNG plots (PCA of both modalities coloured by arousal and valence, similarity versus label distance,
prompt-level ordering). Every file is written under a temporary name and renamed when complete, so an
interrupted export leaves no partial file. Embeddings are gathered from all hosts; process 0 writes.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from erclap import evaluate


def _atomic_path(path: str) -> str:
  return f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}"


def write_npy(path: str, array: np.ndarray) -> None:
  tmp = _atomic_path(path)
  with open(tmp, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)


def write_json(path: str, payload) -> None:
  tmp = _atomic_path(path)
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_parquet(path: str, split: str, emb: evaluate.SplitEmbeddings) -> None:
  """One row per clip; embeddings as Arrow fixed-size lists (pandas reads them as arrays)."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  def fixed_list(x: np.ndarray):
    x = np.ascontiguousarray(x, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])

  columns = {
      "id": pa.array(emb.ids, pa.string()),
      "split": pa.array([split] * len(emb.ids), pa.string()),
      "arousal": pa.array(emb.labels[:, 0]),
      "valence": pa.array(emb.labels[:, 1]),
      "dominance": pa.array(emb.labels[:, 2]),
      "description": pa.array(emb.descriptions, pa.string()),
      "speech_embedding": fixed_list(emb.speech),
  }
  if emb.text is not None:
    columns["text_embedding"] = fixed_list(emb.text)
  tmp = _atomic_path(path)
  pq.write_table(pa.table(columns), tmp)
  os.replace(tmp, path)


def export_embeddings(config, workdir: str) -> dict[str, dict[str, float]]:
  """Writes the export of ``config.export.splits`` for checkpoint ``config.export.step`` (-1 = latest)."""
  from erclap import plots, train

  mesh, tokenizer, model = train.setup(config, workdir)
  step, params, _ = train.restore_params(config, workdir, model, mesh, step=config.export.step)
  embedder = evaluate.Embedder(model, config, mesh, tokenizer)
  out_dir = os.path.join(workdir, "export")
  chief = jax.process_index() == 0
  if chief:
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):  # debris of an export killed mid-write (never a visible output)
      if name.startswith(".") and ".tmp-" in name:
        os.remove(os.path.join(out_dir, name))
  all_metrics = {}
  for split in config.export.splits:
    if config.stage == "ser":
      metrics, emb = evaluate.ser_metrics(embedder, params, config, split)
    else:
      metrics, emb = evaluate.clap_metrics(embedder, params, config, split)
    all_metrics[split] = metrics
    if not chief:
      continue
    write_parquet(os.path.join(out_dir, f"{split}.parquet"), split, emb)
    write_npy(os.path.join(out_dir, f"{split}_speech.npy"), emb.speech.astype(np.float32))
    if emb.text is not None:
      write_npy(os.path.join(out_dir, f"{split}_text.npy"), emb.text.astype(np.float32))
    write_json(os.path.join(out_dir, f"{split}_metrics.json"), dict(step=step, split=split, metrics=metrics))
    if emb.text is not None:
      plots.plot_embedding_pca(emb.speech, emb.text, emb.labels, os.path.join(out_dir, f"{split}_pca.png"))
      sim = emb.speech @ emb.text.T
      plots.plot_similarity_vs_distance(sim, emb.labels, os.path.join(out_dir, f"{split}_sim_vs_distance.png"))
      prompts = evaluate.prompt_embeddings(embedder, params, config)
      for a, attribute in enumerate(("arousal", "valence")):
        prompt_sim = prompts["prompts"][attribute] @ emb.speech.T
        plots.plot_prompt_ordering(prompt_sim, prompts["prompt_levels"][attribute], emb.labels[:, a],
                                   os.path.join(out_dir, f"{split}_prompt_ordering_{attribute}.png"))
    print(evaluate.format_table(metrics, f"[export] {split}: {len(emb.ids)} clips -> {out_dir}"), flush=True)
  return all_metrics
