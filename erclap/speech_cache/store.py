"""The speech-feature cache's on-disk format: one directory, written atomically, read by random access.

``--mode=cache_speech`` (``erclap.speech_cache_mode``) writes it; training, evaluation and export with
``--config.data.speech_features=<dir>`` read it instead of the corpus records (``erclap.speech_source.CACHED``),
and the model applies only the projection (``CLAPModel.embed_speech_features``).

Layout of a cache directory (row i of every per-split file is record i of the corpus split)::

  fingerprint.json       what the features were computed from (``fingerprint.make_fingerprint``)
  <split>.npy            float32 (N, D) features, one row per clip (memory-mapped on read)
  <split>_columns.npy    (N,) structured array, one field per column: the per-clip values the pipelines read
                         besides the audio (labels, class), so they never read the corpus (memory-mapped)
  <split>_ids.json       the N clip ids, row by row
  <split>.json           the split's manifest (fingerprint digest, N, D, columns and their dtypes, digest of
                         the ids): written last

Every file is written under a temporary name and renamed when complete (``erclap.fileio``); a split counts as
cached only when its manifest exists and names the directory's fingerprint, so an interrupted run leaves
nothing a later run would trust, and a rerun skips the finished splits.

What the cache gives up (augmentation): every clip has one fixed crop, the evaluation crop (centre crop of
``data.eval_max_seconds``, or of ``data.max_seconds`` when that is 0), computed in inference mode. Training on
the cache therefore loses the random training crops of the uncached pipeline (and the tower's dropout noise
when ``model.dropout > 0``); the text side (description sampling, text dropout) is unchanged.

What a fingerprint holds, and how two are compared, is ``erclap.speech_cache.fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

import numpy as np

from erclap import fileio
from erclap.speech_cache.fingerprint import FORMAT_VERSION, fingerprint_differences, fingerprint_digest

FINGERPRINT_FILE = "fingerprint.json"


class SpeechCacheError(ValueError):
  """A speech-feature cache is missing, incomplete, or does not match the current model / config."""


# ----------------------------------------------------------------------------- the directory


def read_fingerprint(directory: str) -> dict | None:
  path = os.path.join(directory, FINGERPRINT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def prepare_directory(directory: str, fingerprint: Mapping) -> None:
  """Creates ``directory`` for ``fingerprint`` (or checks that it holds that one); clears write debris.

  A directory made for another fingerprint is refused (SpeechCacheError naming what differs): features of
  other weights or another crop are never mixed into one cache, nor silently replaced."""
  os.makedirs(directory, exist_ok=True)
  fileio.remove_stale_temps(directory)
  recorded = read_fingerprint(directory)
  if recorded is None:
    fileio.write_json(os.path.join(directory, FINGERPRINT_FILE), dict(fingerprint))
    return
  differences = fingerprint_differences(recorded, fingerprint)
  if differences:
    raise SpeechCacheError(f"{directory} holds speech features of another model or config:\n  "
                           + "\n  ".join(differences)
                           + "\nUse another --config.data.speech_features directory, or delete this one.")


# ----------------------------------------------------------------------------- splits


def _paths(directory: str, split: str) -> tuple[str, str, str, str]:
  """(features, columns, ids, manifest) paths of ``split``."""
  if not split or os.sep in split or split.startswith("."):
    raise SpeechCacheError(f"split name {split!r} cannot name a cache file")
  base = os.path.join(directory, split)
  return base + ".npy", base + "_columns.npy", base + "_ids.json", base + ".json"


def _ids_digest(ids: list[str]) -> str:
  return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _columns_dtype(columns: Mapping) -> np.dtype:
  """{name: dtype} -> the structured dtype of the columns file (one field per column, in that order)."""
  if not columns:
    raise SpeechCacheError("a cached split needs at least one column")
  try:
    fields = [(str(name), np.dtype(dtype)) for name, dtype in columns.items()]
  except TypeError as e:
    raise SpeechCacheError(f"columns {dict(columns)!r}: {e}") from None
  for name, dtype in fields:
    if dtype.kind not in "biuf" or dtype.shape:
      raise SpeechCacheError(f"column {name!r}: dtype {dtype} is not a numeric scalar type")
  return np.dtype(fields)


def split_is_cached(directory: str, split: str, fingerprint: Mapping) -> bool:
  """Whether ``split`` is complete in ``directory`` for ``fingerprint`` (its manifest names it)."""
  manifest_path = _paths(directory, split)[3]
  if not os.path.isfile(manifest_path):
    return False
  with open(manifest_path) as f:
    manifest = json.load(f)
  return manifest.get("fingerprint_digest") == fingerprint_digest(fingerprint)


class SplitWriter:
  """Writes one split: ``write(rows, ids, columns)`` batch by batch, then ``close()`` puts the files in place.

  ``columns``: {name: dtype} of the per-clip values stored beside the features (numeric scalars, e.g. labels).
  The features go to a memory-mapped temporary ``.npy`` (the split never has to fit in memory); nothing
  appears under the final names unless every one of the ``num_examples`` rows was written. Use as a context
  manager: an exception inside removes the temporary file.
  """

  def __init__(self, directory: str, split: str, fingerprint: Mapping, num_examples: int, columns: Mapping):
    self.features_path, self.columns_path, self.ids_path, self.manifest_path = _paths(directory, split)
    self.split, self.fingerprint = split, dict(fingerprint)
    self.num_examples, self.width = int(num_examples), int(fingerprint["width"])
    self.columns = np.zeros(self.num_examples, _columns_dtype(columns))  # N x a few bytes: in memory
    self.tmp = fileio.temp_path(self.features_path)
    self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                           shape=(self.num_examples, self.width))
    self.ids: list[str | None] = [None] * self.num_examples
    self.written = 0

  def write(self, rows: np.ndarray, ids: list[str], columns: Mapping, *, at=None) -> None:
    """Writes ``rows`` (n, D), their ``ids`` and ``columns`` ({name: (n,) values}, every column).

    ``at``: the (n,) row numbers to write (any order, each row once); None: the next n rows."""
    rows = np.asarray(rows, np.float32)
    n = len(ids)
    if rows.ndim != 2 or rows.shape[1] != self.width or rows.shape[0] != n:
      raise SpeechCacheError(f"split {self.split!r}: rows of shape {rows.shape} for {n} ids; expected "
                             f"(n, {self.width})")
    names = self.columns.dtype.names
    if set(columns) != set(names):
      raise SpeechCacheError(f"split {self.split!r}: columns {sorted(columns)}, expected {sorted(names)}")
    at = np.arange(self.written, self.written + n) if at is None else np.asarray(at, np.int64).reshape(-1)
    if at.shape != (n,) or (n and (at.min() < 0 or at.max() >= self.num_examples)):
      raise SpeechCacheError(f"split {self.split!r}: row numbers {at.tolist()[:8]} for {n} ids; expected {n} "
                             f"in [0, {self.num_examples})")
    if len(set(at.tolist())) != n or any(self.ids[i] is not None for i in at):
      raise SpeechCacheError(f"split {self.split!r}: a row is written twice")
    values = {}
    for name in names:
      value = np.asarray(columns[name])
      if value.shape != (n,) or not np.can_cast(value.dtype, self.columns.dtype[name], "same_kind"):
        raise SpeechCacheError(f"split {self.split!r}: column {name!r} of shape {value.shape}, dtype {value.dtype}; "
                               f"expected ({n},) {self.columns.dtype[name]}")
      values[name] = value
    self.array[at] = rows
    for name, value in values.items():
      self.columns[name][at] = value
    for i, clip in zip(at.tolist(), ids, strict=True):
      self.ids[i] = str(clip)
    self.written += n

  def close(self) -> None:
    if self.written != self.num_examples:
      raise SpeechCacheError(f"split {self.split!r}: {self.written} of {self.num_examples} clips written")
    if len(set(self.ids)) != len(self.ids):
      raise SpeechCacheError(f"split {self.split!r}: duplicate clip ids")
    self.array.flush()
    del self.array
    os.replace(self.tmp, self.features_path)
    fileio.write_npy(self.columns_path, self.columns)
    with fileio.atomic_open(self.ids_path, "w") as f:
      json.dump(self.ids, f)
    # Last: the manifest marks the split complete.
    fileio.write_json(self.manifest_path, dict(
        split=self.split, num_examples=self.num_examples, width=self.width,
        columns=[[name, self.columns.dtype[name].str] for name in self.columns.dtype.names],  # in field order
        fingerprint_digest=fingerprint_digest(self.fingerprint), ids_digest=_ids_digest(self.ids)))

  def abort(self) -> None:
    self.__dict__.pop("array", None)
    if os.path.exists(self.tmp):
      os.remove(self.tmp)

  def __enter__(self) -> SplitWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      try:
        self.close()
      except BaseException:
        self.abort()
        raise
    else:
      self.abort()


class CachedSplit:
  """One cached split, by row: ``ids``, ``features`` (N, D), ``columns`` (N,) structured, ``record(row)``.

  Pickles without its arrays (Grain worker processes reopen them, memory-mapped, on first use)."""

  def __init__(self, directory: str, split: str, fingerprint: Mapping | None = None):
    """``fingerprint`` None: checks only the format version (the caller compares the rest)."""
    self.directory, self.split = os.path.abspath(directory), split
    features_path, columns_path, ids_path, manifest_path = _paths(self.directory, split)
    recorded = read_fingerprint(self.directory)
    if recorded is None or not os.path.isfile(manifest_path):
      raise SpeechCacheError(f"split {split!r} is not cached in {self.directory} (data.speech_features): run "
                             f"--mode=cache_speech with the same config first")
    current = {**recorded, "format_version": FORMAT_VERSION} if fingerprint is None else fingerprint
    differences = fingerprint_differences(recorded, current)
    if differences:
      raise SpeechCacheError(f"the speech-feature cache {self.directory} (data.speech_features) does not match "
                             f"the current model / config:\n  " + "\n  ".join(differences)
                             + "\nRebuild it with --mode=cache_speech into a fresh directory.")
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest.get("fingerprint_digest") != fingerprint_digest(recorded):
      raise SpeechCacheError(f"split {split!r} in {self.directory} was written for another fingerprint than the "
                             f"directory's {FINGERPRINT_FILE}: rebuild the cache")
    self.fingerprint, self.width, self.num_examples = recorded, int(manifest["width"]), int(manifest["num_examples"])
    columns = dict(manifest["columns"])
    self.column_names = tuple(columns)
    with open(ids_path) as f:
      self.ids = json.load(f)
    if len(self.ids) != self.num_examples or _ids_digest(self.ids) != manifest["ids_digest"]:
      raise SpeechCacheError(f"{ids_path} does not match its manifest {manifest_path}: rebuild the cache")
    self._features_path, self._columns_path = features_path, columns_path
    self._features = self._columns = None
    if self.features.shape != (self.num_examples, self.width):
      raise SpeechCacheError(f"{features_path}: shape {self.features.shape}, manifest says "
                             f"({self.num_examples}, {self.width})")
    if self.columns.shape != (self.num_examples,) or self.columns.dtype != _columns_dtype(columns):
      raise SpeechCacheError(f"{columns_path}: {self.columns.shape} rows of {self.columns.dtype}, manifest says "
                             f"{self.num_examples} of {columns}: rebuild the cache")

  @property
  def features(self) -> np.ndarray:
    """The (N, D) float32 features, memory-mapped (opened on first use, also in Grain worker processes)."""
    if self._features is None:
      self._features = np.load(self._features_path, mmap_mode="r")
    return self._features

  @property
  def columns(self) -> np.ndarray:
    """The (N,) structured array of the per-clip columns (``column_names``), memory-mapped like ``features``."""
    if self._columns is None:
      self._columns = np.load(self._columns_path, mmap_mode="r")
    return self._columns

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_features"] = state["_columns"] = None
    return state

  def __len__(self) -> int:
    return self.num_examples

  def record(self, row: int) -> dict:
    """Row ``row`` as a record: "id", one numpy scalar per column, "speech_features" (D,) float32."""
    row = int(row)
    if not 0 <= row < self.num_examples:
      raise IndexError(f"row {row} out of range for split {self.split!r} of {self.num_examples} cached clips")
    values = self.columns[row]
    return {"id": self.ids[row], **{name: values[name] for name in self.column_names},
            "speech_features": np.array(self.features[row], np.float32)}


class CachedSpeechSource:
  """A Grain random-access source of ``source``'s records served from the cache alone: record i is row i of
  ``cached`` (a ``CachedSplit``: id, its columns, ``speech_features``), the corpus is never read per record.

  ``source``: the corpus split the cache was written from (``len``, ``__getitem__`` -> dict with "id"), in the
  same order. Construction reads a handful of its records (``spot_checks`` indices from first to last) and
  refuses the cache when the length or one of those ids differs. Picklable when ``source`` is (Grain workers).
  """

  def __init__(self, source, cached: CachedSplit, *, spot_checks: int = 8):
    stale = (f"the corpus changed since --mode=cache_speech; rebuild the cache (split {cached.split!r}, "
             f"{cached.directory})")
    if len(source) != len(cached):
      raise SpeechCacheError(f"split {cached.split!r} has {len(source)} clips, but {cached.directory} caches "
                             f"{len(cached)}: {stale}")
    n = len(cached)
    for index in sorted(set(np.linspace(0, n - 1, min(n, max(2, spot_checks))).round().astype(int).tolist())):
      clip = str(source[index]["id"])
      if clip != cached.ids[index]:
        raise SpeechCacheError(f"record {index} of split {cached.split!r} is clip {clip!r}, but row {index} of the "
                               f"cache is {cached.ids[index]!r}: {stale}")
    self.source, self.cached = source, cached

  def __len__(self) -> int:
    return len(self.cached)

  def __getitem__(self, index) -> dict:
    return self.cached.record(index)

  def ids(self) -> list[str]:
    """Every record id, from the cache (``erclap.input_pipeline.source_ids``)."""
    return list(self.cached.ids)

  def __repr__(self) -> str:
    # Part of the data iterator's checkpoint (Grain compares it on restore): what is read, in which order (the
    # corpus split and the cache's row ids), never where the cache lives, so a moved or copied workdir resumes.
    return f"CachedSpeechSource({self.source!r}, ids sha256 {_ids_digest(self.cached.ids)[:16]})"

  def is_recorded_as(self, recorded: str) -> bool:
    """Whether ``recorded`` (a checkpoint's record of its data source) names this source: its ``repr``, or the
    earlier form that named the cache by its absolute directory instead of its row ids. That directory is not
    compared: the cache's fit to the model and the corpus is checked on its own (``CachedSplit``, and the
    cache fingerprint against the restored parameters)."""
    if recorded == repr(self):
      return True
    prefix = f"CachedSpeechSource({self.source!r}, "
    return recorded.startswith(prefix) and recorded.endswith(")") and os.path.isabs(recorded[len(prefix):-1])
