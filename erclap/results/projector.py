"""TensorBoard Embedding Projector files of an export: ``tensorboard --logdir <workdir>/export`` shows them.

For each exported split, one tensor holds the split's speech embeddings (rows 0..N-1, the Parquet's order)
followed by its text embeddings (rows N..2N-1), float32, with one metadata TSV (header: modality, split, id,
arousal, valence, dominance, description) so that the projector can colour and search by any of them. The
config, ``<export>/projector_config.pbtxt`` (tensorboard's ``ProjectorConfig`` proto), names each tensor with
``tensor_shape`` set.

Tensors are raw float32 (``projector/<split>.bytes``), the compact form the plugin reads. The plugin tells a
binary tensor from a TSV one by trying to read it as text first, so a tensor whose bytes happen to be valid
UTF-8 (all zeros, say) is written as TSV instead (``projector/<split>.tsv``), which reads back the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from erclap import fileio
from erclap.schema import LABEL_NAMES

PROJECTOR_DIR = "projector"
CONFIG_NAME = "projector_config.pbtxt"  # the name the projector plugin looks for in a run directory
METADATA_COLUMNS = ("modality", "split", "id", *LABEL_NAMES[:3], "description")


def tensor_name(split: str) -> str:
  return f"{split}: speech + text"


def _paths(out_dir: str, split: str) -> dict[str, str]:
  base = os.path.join(out_dir, PROJECTOR_DIR, split)
  return dict(bytes=base + ".bytes", tsv=base + ".tsv", metadata=base + "_metadata.tsv")


def output_paths(out_dir: str, splits: Sequence[str]) -> list[str]:
  """Every file ``write_projector`` may write for ``splits`` (a tensor is one of .bytes / .tsv)."""
  return [os.path.join(out_dir, CONFIG_NAME)] + [p for s in splits for p in _paths(out_dir, s).values()]


def _clean(text) -> str:
  """A TSV field: tabs and line breaks would split it."""
  return " ".join(str(text).split())


def metadata_tsv(split: str, ids: Sequence[str], labels: np.ndarray, descriptions: Sequence[str]) -> str:
  """The metadata TSV of one split's tensor: a header, then one row per speech row and one per text row."""
  labels = np.asarray(labels, np.float64)
  head = "\t".join(METADATA_COLUMNS)
  rows = [head]
  for modality in ("speech", "text"):
    for i, clip_id in enumerate(ids):
      values = [f"{labels[i, a]:.6g}" if a < labels.shape[1] else "" for a in range(3)]
      rows.append("\t".join([modality, _clean(split), _clean(clip_id), *values, _clean(descriptions[i])]))
  return "\n".join(rows) + "\n"


def _valid_utf8(data: bytes) -> bool:
  try:
    data.decode("utf-8")
  except UnicodeDecodeError:
    return False
  return True


def write_tensor(paths: dict[str, str], tensor: np.ndarray) -> str:
  """Writes ``tensor`` (float32) as .bytes, or as TSV when its bytes would read as text; removes the other
  form's stale file. Returns the path written."""
  data = np.ascontiguousarray(tensor, np.float32)
  raw = data.tobytes()
  path, stale = (paths["tsv"], paths["bytes"]) if _valid_utf8(raw) else (paths["bytes"], paths["tsv"])
  with fileio.atomic_open(path, "wb") as f:
    if path == paths["bytes"]:
      f.write(raw)
    else:  # repr-exact float32 values: the TSV reads back bit for bit
      f.write("".join("\t".join(np.format_float_positional(v, unique=True) for v in row) + "\n"
                      for row in data).encode())
  if os.path.exists(stale):
    os.remove(stale)
  return path


def write_projector(out_dir: str, views: Sequence) -> str:
  """Writes each split's tensor and metadata under ``<out_dir>/projector/`` and ``<out_dir>/projector_config.pbtxt``.

  Args:
    out_dir: the export directory (TensorBoard's ``--logdir``).
    views: ``erclap.results.views.SplitView`` of each split (speech and text embeddings, ids, labels,
      descriptions).

  Returns:
    The config's path.
  """
  from google.protobuf import text_format  # tensorboard's proto and its text form: only the export writes them
  from tensorboard.plugins.projector import projector_config_pb2

  os.makedirs(os.path.join(out_dir, PROJECTOR_DIR), exist_ok=True)
  config = projector_config_pb2.ProjectorConfig()
  for view in views:
    paths = _paths(out_dir, view.split)
    tensor = np.concatenate([np.asarray(view.speech, np.float32), np.asarray(view.text, np.float32)])
    written = write_tensor(paths, tensor)
    with fileio.atomic_open(paths["metadata"], "w") as f:
      f.write(metadata_tsv(view.split, view.ids, view.labels, view.descriptions))
    embedding = config.embeddings.add()
    embedding.tensor_name = tensor_name(view.split)
    embedding.tensor_path = os.path.relpath(written, out_dir)
    embedding.tensor_shape.extend(tensor.shape)
    embedding.metadata_path = os.path.relpath(paths["metadata"], out_dir)
  path = os.path.join(out_dir, CONFIG_NAME)
  with fileio.atomic_open(path, "w") as f:
    f.write(text_format.MessageToString(config))
  return path
