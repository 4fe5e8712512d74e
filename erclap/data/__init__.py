"""Corpora: building (TFDS, ArrayRecord) and random-access reading.

``ensure_dataset(data_config)`` builds the configured corpus if it is not built yet and returns the data
dir; ``get_data_source(data_config, split)`` returns a picklable random-access source (``len`` and
``__getitem__``) of records::

  {"id": str, "audio": int16 (T,) at 16 kHz, "arousal" / "valence" / "dominance": float32 on 1–7,
   "class_id": int32 (-1 = no categorical label), "speaker": str}

Split names: "train", "validation", "test" for every corpus (MSP-Podcast also "test2", "test3" where
present). IEMOCAP is stored per session and speaker gender; its folds are leave-one-session-out with
``data_config.iemocap_test_session`` = k: train = the other sessions, validation = session k's female
speaker, test = session k's male speaker ("session<k>" = the whole session, "session<k>_F" one speaker).

A built licensed corpus records what it was built from (``erclap_source.json`` in its TFDS version dir:
the label files' sha256 and the audio files' sizes and modification times); ``ensure_dataset`` never
takes a build for another source (see there and ``data.rebuild``).

TensorFlow is never imported here: TFDS reads ArrayRecord without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time

import numpy as np

from erclap import fileio
from erclap.data import builders, embedded
from erclap.schema import LABEL_NAMES
from erclap.tensorflow_devices import hide_accelerators_from_tensorflow

CORPORA = ("embedded", "msp_podcast", "iemocap")
SOURCE_RECORD = "erclap_source.json"  # beside a built licensed corpus: what it was built from
RECORD_KEYS = ("id", "audio", *LABEL_NAMES, "class_id", "speaker")


def eval_crop_seconds(data_config) -> float:
  """Length of the evaluation (centre) crop: ``data.eval_max_seconds``, or ``data.max_seconds`` when 0."""
  return float(data_config.eval_max_seconds) or float(data_config.max_seconds)


def resolve_data_dir(data_config) -> str:
  """data_config.data_dir, else $ERCLAP_DATA_DIR, else ~/tensorflow_datasets (expanded, absolute)."""
  path = data_config.get("data_dir", "") or os.environ.get("ERCLAP_DATA_DIR", "") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(path))


def _check_name(data_config) -> str:
  name = data_config.name
  if name not in CORPORA:
    raise ValueError(f"data.name={name!r} is not one of {CORPORA}")
  if int(data_config.sample_rate) != 16000:
    raise ValueError(f"data.sample_rate={data_config.sample_rate}: the corpora are stored at 16000 Hz")
  return name


class _QuietCustomConfig:
  """Drops TFDS's "Using custom data configuration" warning: our builder configs are always custom."""

  def filter(self, record) -> bool:
    return "custom data configuration" not in record.getMessage()


def _builder(data_config, data_dir: str):
  name = _check_name(data_config)
  absl_logger, quiet = logging.getLogger("absl"), _QuietCustomConfig()
  absl_logger.addFilter(quiet)
  try:
    if name == "embedded":
      return builders.ErclapEmbedded(spec=embedded.EmbeddedSpec.from_config(data_config), data_dir=data_dir)
    cls = builders.ErclapMspPodcast if name == "msp_podcast" else builders.ErclapIemocap
    return cls(data_dir=data_dir, unreadable_audio_tolerance=float(data_config.unreadable_audio_tolerance))
  finally:
    absl_logger.removeFilter(quiet)


def _is_prepared(builder) -> bool:
  return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


@contextlib.contextmanager
def _file_lock(path: str):
  """An exclusive lock so that concurrent processes never build the same corpus twice."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class SourceChangedError(ValueError):
  """A built licensed corpus was built from other files than ``data.manual_dir`` holds now."""


def read_source_record(builder) -> dict | None:
  """The recorded source of a built corpus (``builders.source_fingerprint`` plus "built_at"), or None."""
  path = os.path.join(builder.data_dir, SOURCE_RECORD)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_source_record(builder, fingerprint: dict) -> None:
  payload = dict(fingerprint, built_at=time.strftime("%Y-%m-%d %H:%M:%S %z"))
  with fileio.atomic_open(os.path.join(builder.data_dir, SOURCE_RECORD), "w") as f:
    json.dump(payload, f, sort_keys=True)  # compact: the listing has one entry per audio file


def _manual_dir(data_config, data_dir: str, built: bool) -> str | None:
  """The absolute manual dir of a licensed corpus; None when unset (fine once built)."""
  manual_dir = data_config.manual_dir
  if not manual_dir and built:
    return None
  if not manual_dir or not os.path.isdir(os.path.expanduser(manual_dir)):
    state = "is built" if built else "is not built"
    raise ValueError(f"{data_config.name} {state} in {data_dir} and data.manual_dir={manual_dir!r} is not a "
                     f"directory: point it at the licensed corpus (see erclap/data/builders.py for the expected "
                     f"layout)" + (", or set data.manual_dir='' to use the build as it is" if built else ""))
  return os.path.abspath(os.path.expanduser(manual_dir))


def _stale_message(data_config, builder, manual_dir: str, differences: list[str]) -> str:
  recorded = read_source_record(builder)
  lines = "\n  ".join(differences)
  return (f"{data_config.name} in {builder.data_dir} was built from {builders.describe_source(recorded)}, "
          f"but data.manual_dir={manual_dir} differs:\n  {lines}\n"
          f"To rebuild it from {manual_dir}: --config.data.rebuild=True (the old build is replaced once the new "
          f"one is complete); to build beside it: another --config.data.data_dir; to use the existing build as "
          f"it is: --config.data.manual_dir=''")


def ensure_dataset(data_config) -> str:
  """Builds the configured corpus unless already built from the same source; returns the TFDS data dir used.

  "embedded" is synthesised on first use (and again only when its spec changes, which changes its builder
  config name). The licensed corpora are built from ``data_config.manual_dir`` and record what they were
  built from (``erclap_source.json`` beside the build). Once built, a run without ``manual_dir`` uses the
  build as it is (the log names its source); a run with ``manual_dir`` compares that dir with the record,
  and on any difference stops with SourceChangedError saying what differs, or with ``data_config.rebuild``
  rebuilds from it: a built corpus is never silently taken for another source.
  """
  name = _check_name(data_config)
  data_dir = resolve_data_dir(data_config)
  builder = _builder(data_config, data_dir)
  built = _is_prepared(builder)
  if name == "embedded":
    if not built:
      _build_locked(data_config, data_dir, None, None)
    return data_dir
  manual_dir = _manual_dir(data_config, data_dir, built)
  if built and manual_dir is None:
    print(f"[data] {name}: using {builder.data_dir}, built from "
          f"{builders.describe_source(read_source_record(builder))}", flush=True)
    return data_dir
  fingerprint = builders.source_fingerprint(type(builder), manual_dir)
  if built:
    differences = builders.source_differences(read_source_record(builder), fingerprint)
    if not differences:
      print(f"[data] {name}: using {builder.data_dir}, built from {manual_dir} (unchanged since)", flush=True)
      return data_dir
    if not data_config.rebuild:
      raise SourceChangedError(_stale_message(data_config, builder, manual_dir, differences))
    print(f"[data] {name}: data.rebuild=True and the source changed:\n  " + "\n  ".join(differences), flush=True)
  _build_locked(data_config, data_dir, manual_dir, fingerprint)
  return data_dir


def _build_locked(data_config, data_dir: str, manual_dir: str | None, fingerprint: dict | None) -> None:
  """Builds under the corpus' file lock, unless another process built it (from this source) meanwhile."""
  hide_accelerators_from_tensorflow(import_tensorflow=False)  # only if clu's writers imported it
  with _file_lock(os.path.join(data_dir, f".erclap-{data_config.name}.lock")):
    builder = _builder(data_config, data_dir)
    if _is_prepared(builder):
      differences = [] if fingerprint is None else builders.source_differences(read_source_record(builder),
                                                                                fingerprint)
      if not differences:
        return
      if not data_config.rebuild:  # another process built it from other files meanwhile
        raise SourceChangedError(_stale_message(data_config, builder, manual_dir, differences))
      previous = _set_aside(builder)
      builder = _builder(data_config, data_dir)  # a fresh builder: the old one has read the old build's info
    else:
      previous = None
    variant = builder.builder_config.name if builder.builder_config else ""
    print(f"[data] building {data_config.name} ({variant}) into {builder.data_dir} ...", flush=True)
    start = time.time()
    try:
      builders.build(builder, manual_dir)
      if fingerprint is not None:
        _write_source_record(builder, fingerprint)
    except BaseException:
      if previous is not None and not os.path.exists(builder.data_dir):
        os.replace(previous, builder.data_dir)  # the new build failed: the old one stays in use
      raise
    if previous is not None:
      shutil.rmtree(previous)
    print(f"[data] built {data_config.name} in {time.time() - start:.1f} s", flush=True)


def _set_aside(builder) -> str:
  """Moves a build out of the way of its rebuild (a hidden sibling, not a TFDS version name); returns it."""
  previous = os.path.join(os.path.dirname(builder.data_dir), f".{os.path.basename(builder.data_dir)}.previous")
  if os.path.exists(previous):  # debris of a rebuild that was killed
    shutil.rmtree(previous)
  os.replace(builder.data_dir, previous)
  return previous


def _split_list(data_config, split: str, available: list[str]) -> list[str]:
  """A requested split name -> the stored TFDS splits it is made of."""
  if data_config.name != "iemocap":
    if split not in available:
      raise ValueError(f"split {split!r} of {data_config.name} does not exist; "
                       f"available: {sorted(available)}")
    return [split]
  k = int(data_config.iemocap_test_session)
  sessions = sorted({int(s.split("_")[0][len("session"):]) for s in available})
  if split in available:
    return [split]
  if split.startswith("session") and split[len("session"):].isdigit():
    parts = [s for s in available if s.split("_")[0] == split]
  elif split == "train":
    if k not in sessions:
      raise ValueError(f"data.iemocap_test_session={k} is not among the built sessions {sessions}")
    parts = sorted(s for s in available if s.split("_")[0] != f"session{k}")
  elif split in ("validation", "test"):
    parts = [f"session{k}_{'F' if split == 'validation' else 'M'}"]
    parts = [s for s in parts if s in available]
  else:
    parts = []
  if not parts:
    raise ValueError(f"split {split!r} of iemocap (test session {k}) matches none of the built splits "
                     f"{sorted(available)}")
  return parts


class DataSource:
  """Random access over one or more stored TFDS splits, records normalised to the common schema.

  Picklable (grain worker processes): it pickles its recipe and reopens the ArrayRecord files lazily."""

  def __init__(self, data_config, split: str):
    self._config = dict(name=data_config.name, data_dir=resolve_data_dir(data_config),
                        sample_rate=int(data_config.sample_rate),
                        unreadable_audio_tolerance=float(data_config.unreadable_audio_tolerance),
                        iemocap_test_session=int(data_config.iemocap_test_session),
                        embedded=dict(data_config.embedded), manual_dir=data_config.manual_dir)
    self.split = split
    builder = self._make_builder()
    if not _is_prepared(builder):
      raise ValueError(f"{data_config.name} is not built in {self._config['data_dir']}: call "
                       f"erclap.data.ensure_dataset(config.data) first")
    available = list(builder.info.splits.keys())
    self.parts = _split_list(_AttrDict(self._config), split, available)
    self._sizes = [builder.info.splits[p].num_examples for p in self.parts]
    self._offsets = np.cumsum([0] + self._sizes)
    self._sources = None

  def _make_builder(self):
    return _builder(_AttrDict(self._config), self._config["data_dir"])

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_sources"] = None
    return state

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def _open(self):
    if self._sources is None:
      builder = self._make_builder()
      self._sources = [builder.as_data_source(split=p) for p in self.parts]
    return self._sources

  def __getitem__(self, index) -> dict:
    index = int(index)
    n = len(self)
    if index < 0:
      index += n
    if not 0 <= index < n:
      raise IndexError(f"index {index} out of range for {self._config['name']}:{self.split} of {n} records")
    part = int(np.searchsorted(self._offsets, index, side="right") - 1)
    return normalize_record(self._open()[part][index - int(self._offsets[part])])

  def __repr__(self):
    return f"DataSource({self._config['name']}:{self.split}, {len(self)} records, parts={self.parts})"


class _AttrDict(dict):
  """The few data-config fields the builders need, readable as attributes like a ConfigDict."""

  def __getattr__(self, key):
    try:
      value = self[key]
    except KeyError:
      raise AttributeError(key) from None
    return _AttrDict(value) if isinstance(value, dict) else value


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def normalize_record(record: dict) -> dict:
  """A stored TFDS record -> the common schema (str ids, int16 audio, float32 labels, int32 class)."""
  return {
      "id": _text(record["id"]),
      "audio": np.asarray(record["audio"]),
      **{name: np.float32(record[name]) for name in LABEL_NAMES},
      "class_id": np.int32(record["class_id"]),
      "speaker": _text(record["speaker"]),
  }


def get_data_source(data_config, split: str) -> DataSource:
  """Random-access source of ``split`` (see the module docstring); the corpus must be built."""
  _check_name(data_config)
  return DataSource(data_config, split)
