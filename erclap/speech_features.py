"""The speech-feature cache: a frozen speech representation computed once per clip, read by random access.

With ``model.freeze_speech=True`` the speech representation (tower -> pooling -> optional SER head: everything
the CLAP model computes from audio before its projection) never changes during training, yet an uncached step
runs the whole tower forward again for every example of every step. ``--mode=cache_speech``
(``erclap.cache_speech``) computes it once per clip and writes it here; training, evaluation and export with
``--config.data.speech_features=<dir>`` then read it instead of audio, and the model applies only the
projection (``CLAPModel.embed_speech_features``).

Layout of a cache directory::

  fingerprint.json       what the features were computed from (``make_fingerprint``)
  <split>.npy            float32 (N, D) features, one row per clip (memory-mapped on read)
  <split>_ids.json       the N clip ids, row by row
  <split>.json           the split's manifest (fingerprint digest, N, D, digest of the ids): written last

Every file is written under a temporary name and renamed when complete (``erclap.fileio``); a split counts as
cached only when its manifest exists and names the directory's fingerprint, so an interrupted run leaves
nothing a later run would trust, and a rerun skips the finished splits.

What the cache gives up (augmentation): every clip has one fixed crop, the evaluation crop (centre crop of
``data.eval_max_seconds``, or of ``data.max_seconds`` when that is 0), computed in inference mode. Training on
the cache therefore loses the random training crops of the uncached pipeline (and the tower's dropout noise
when ``model.dropout > 0``); the text side (description sampling, text dropout) is unchanged.

Only numpy and ``erclap.fileio`` here: the model-side fingerprint (parameter digest, corpus identity) is
assembled by the callers (``erclap.input_pipeline.speech_cache_fingerprint``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

import numpy as np

from erclap import fileio

FORMAT_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
# Fields of a fingerprint, in the order a difference is reported.
FINGERPRINT_FIELDS = ("format_version", "params_digest", "representation", "speech_pooling", "speech_arch",
                      "speech_input", "dtype", "crop_seconds", "sample_rate", "corpus", "width")


class SpeechCacheError(ValueError):
  """A speech-feature cache is missing, incomplete, or does not match the current model / config."""


# ----------------------------------------------------------------------------- fingerprint


def params_digest(tree) -> str:
  """sha256 of a nested dict of arrays: every leaf's path, dtype, shape and bytes (in sorted path order)."""
  digest = hashlib.sha256()

  def visit(prefix: str, node):
    if isinstance(node, Mapping):
      for key in sorted(node, key=str):
        visit(f"{prefix}/{key}", node[key])
      return
    leaf = np.ascontiguousarray(np.asarray(node))
    digest.update(f"{prefix}|{leaf.dtype.str}|{leaf.shape}\n".encode())
    digest.update(leaf.tobytes())

  visit("", tree)
  return digest.hexdigest()


def make_fingerprint(*, params_digest: str, representation: str, speech_pooling: str, speech_arch: str,
                     speech_input: tuple[float, float], dtype: str, crop_seconds: float, sample_rate: int,
                     corpus: Mapping, width: int) -> dict:
  """Everything the cached features depend on, as a JSON-able dict (``FINGERPRINT_FIELDS``).

  Args:
    params_digest: ``params_digest`` of the representation's parameters (tower, pooling, SER head).
    representation: what the projection reads ("pooled", "ser_hidden", "ser_output").
    speech_pooling: the pooling ("mean", "attentive_stats").
    speech_arch: a description of the tower's architecture (its dataclass repr).
    speech_input: (mean, std) of the waveform standardisation (std 0: off).
    dtype: the compute dtype.
    crop_seconds: length of the centre crop the features were computed on.
    sample_rate: audio sample rate.
    corpus: the corpus identity (name, builder version, builder config).
    width: D, the feature width.
  """
  return dict(format_version=FORMAT_VERSION, params_digest=str(params_digest), representation=str(representation),
              speech_pooling=str(speech_pooling), speech_arch=str(speech_arch),
              speech_input=[float(x) for x in speech_input], dtype=str(dtype), crop_seconds=float(crop_seconds),
              sample_rate=int(sample_rate), corpus={str(k): corpus[k] for k in sorted(corpus)}, width=int(width))


def fingerprint_differences(recorded: Mapping, current: Mapping, *, ignore: tuple[str, ...] = ()) -> list[str]:
  """One line per field that differs between a recorded and a current fingerprint ([] if they match)."""
  lines = []
  for key in FINGERPRINT_FIELDS:
    if key in ignore:
      continue
    old, new = recorded.get(key), current.get(key)
    if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
      what = "the speech representation's parameters (tower / pooling / SER head weights)" \
          if key == "params_digest" else key
      lines.append(f"{what}: cache {_short(old)} vs now {_short(new)}")
  return lines


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= 120 else text[:117] + "..."


def fingerprint_digest(fingerprint: Mapping) -> str:
  return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


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


def _paths(directory: str, split: str) -> tuple[str, str, str]:
  if not split or os.sep in split or split.startswith("."):
    raise SpeechCacheError(f"split name {split!r} cannot name a cache file")
  base = os.path.join(directory, split)
  return base + ".npy", base + "_ids.json", base + ".json"


def _ids_digest(ids: list[str]) -> str:
  return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def split_is_cached(directory: str, split: str, fingerprint: Mapping) -> bool:
  """Whether ``split`` is complete in ``directory`` for ``fingerprint`` (its manifest names it)."""
  manifest_path = _paths(directory, split)[2]
  if not os.path.isfile(manifest_path):
    return False
  with open(manifest_path) as f:
    manifest = json.load(f)
  return manifest.get("fingerprint_digest") == fingerprint_digest(fingerprint)


class SplitWriter:
  """Writes one split: ``write(rows, ids)`` batch by batch, then ``close()`` renames the files into place.

  The features go to a memory-mapped temporary ``.npy`` (the split never has to fit in memory); nothing
  appears under the final names unless every one of the ``num_examples`` rows was written. Use as a context
  manager: an exception inside removes the temporary file.
  """

  def __init__(self, directory: str, split: str, fingerprint: Mapping, num_examples: int):
    self.features_path, self.ids_path, self.manifest_path = _paths(directory, split)
    self.split, self.fingerprint = split, dict(fingerprint)
    self.num_examples, self.width = int(num_examples), int(fingerprint["width"])
    self.tmp = fileio.temp_path(self.features_path)
    self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                           shape=(self.num_examples, self.width))
    self.ids: list[str] = []

  def write(self, rows: np.ndarray, ids: list[str]) -> None:
    rows = np.asarray(rows, np.float32)
    if rows.ndim != 2 or rows.shape[1] != self.width or rows.shape[0] != len(ids):
      raise SpeechCacheError(f"split {self.split!r}: rows of shape {rows.shape} for {len(ids)} ids; expected "
                             f"(n, {self.width})")
    start = len(self.ids)
    if start + len(ids) > self.num_examples:
      raise SpeechCacheError(f"split {self.split!r}: more than the {self.num_examples} expected clips")
    self.array[start:start + len(ids)] = rows
    self.ids.extend(str(i) for i in ids)

  def close(self) -> None:
    if len(self.ids) != self.num_examples:
      raise SpeechCacheError(f"split {self.split!r}: {len(self.ids)} of {self.num_examples} clips written")
    if len(set(self.ids)) != len(self.ids):
      raise SpeechCacheError(f"split {self.split!r}: duplicate clip ids")
    self.array.flush()
    del self.array
    os.replace(self.tmp, self.features_path)
    with fileio.atomic_open(self.ids_path, "w") as f:
      json.dump(self.ids, f)
    # Last: the manifest marks the split complete.
    fileio.write_json(self.manifest_path, dict(split=self.split, num_examples=self.num_examples, width=self.width,
                                               fingerprint_digest=fingerprint_digest(self.fingerprint),
                                               ids_digest=_ids_digest(self.ids)))

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
  """The cached features of one split: ``lookup(id) -> (D,) float32``; pickles without its arrays."""

  def __init__(self, directory: str, split: str, fingerprint: Mapping | None = None):
    self.directory, self.split = os.path.abspath(directory), split
    features_path, ids_path, manifest_path = _paths(self.directory, split)
    recorded = read_fingerprint(self.directory)
    if recorded is None or not os.path.isfile(manifest_path):
      raise SpeechCacheError(f"split {split!r} is not cached in {self.directory} (data.speech_features): run "
                             f"--mode=cache_speech with the same config first")
    if fingerprint is not None:
      differences = fingerprint_differences(recorded, fingerprint)
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
    with open(ids_path) as f:
      ids = json.load(f)
    if len(ids) != self.num_examples or _ids_digest(ids) != manifest["ids_digest"]:
      raise SpeechCacheError(f"{ids_path} does not match its manifest {manifest_path}: rebuild the cache")
    self.row_of = {clip: row for row, clip in enumerate(ids)}
    self._features_path = features_path
    self._features = None
    shape = self.features.shape
    if shape != (self.num_examples, self.width):
      raise SpeechCacheError(f"{features_path}: shape {shape}, manifest says ({self.num_examples}, {self.width})")

  @property
  def features(self) -> np.ndarray:
    """The (N, D) float32 features, memory-mapped (opened on first use, also in Grain worker processes)."""
    if self._features is None:
      self._features = np.load(self._features_path, mmap_mode="r")
    return self._features

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_features"] = None
    return state

  def __len__(self) -> int:
    return self.num_examples

  def lookup(self, clip_id: str) -> np.ndarray:
    row = self.row_of.get(str(clip_id))
    if row is None:
      raise SpeechCacheError(f"clip {clip_id!r} of split {self.split!r} has no cached speech features in "
                             f"{self.directory}: the corpus changed since --mode=cache_speech; rebuild the cache")
    return np.array(self.features[row], np.float32)


class CachedSpeechSource:
  """A Grain random-access source: the records of ``source`` with ``speech_features`` instead of ``audio``.

  ``source``: any random-access record source (``len``, ``__getitem__`` -> dict with "id"); its records are
  looked up by id in ``cached`` (a ``CachedSplit``). Picklable when ``source`` is (Grain worker processes).
  """

  def __init__(self, source, cached: CachedSplit):
    if len(source) != len(cached):
      raise SpeechCacheError(f"split {cached.split!r} has {len(source)} clips, but {cached.directory} caches "
                             f"{len(cached)}: the corpus changed since --mode=cache_speech; rebuild the cache")
    self.source, self.cached = source, cached

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index) -> dict:
    record = dict(self.source[index])
    record.pop("audio", None)
    record["speech_features"] = self.cached.lookup(record["id"])
    return record

  def __repr__(self) -> str:
    return f"CachedSpeechSource({self.source!r}, {self.cached.directory})"
