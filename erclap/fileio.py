"""Atomic file writes: a file appears under its final name complete, or not at all.

Every output ERCLAP writes (metrics JSON, Parquet, ``.npy``, plots, description files) goes through
``atomic_path``: the content is written to a hidden temporary name in the same directory
(``.<name>.tmp-<pid>-<random>``) and renamed over the target when complete, so a run killed mid-write
never leaves a partial file under the real name; ``remove_stale_temps`` clears such debris. ``sha256_file`` is the
one content checksum of a file (model-directory manifests, corpus label files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator

import numpy as np

_TMP_MARK = ".tmp-"


def temp_path(path: str) -> str:
  """A hidden, unique temporary name beside ``path``."""
  directory, name = os.path.split(os.path.abspath(path))
  return os.path.join(directory, f".{name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temp_name(name: str) -> bool:
  return name.startswith(".") and _TMP_MARK in name


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path to write; renames it to ``path`` on success, removes it on failure.

  Refuses (before anything is written) a target that exists as a directory, or whose directory is missing.
  """
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{path}: directory {directory} does not exist")
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path}: a directory is in the way of this output file; move it and rerun")
  tmp = temp_path(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **open_kwargs):
  """``open`` for writing, atomically (see ``atomic_path``)."""
  with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
    yield f


def write_json(path: str, payload) -> None:
  with atomic_open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)


def write_npy(path: str, array: np.ndarray) -> None:
  with atomic_open(path, "wb") as f:
    np.save(f, array)


def remove_stale_temps(directory: str) -> int:
  """Removes temporary files that an interrupted write left in ``directory``; returns how many."""
  removed = 0
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if is_temp_name(name) and os.path.isfile(os.path.join(directory, name)):
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(directory, name))
          removed += 1
  return removed


def sha256_file(path: str) -> str:
  """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
