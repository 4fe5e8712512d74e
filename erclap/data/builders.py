"""TFDS builders (ArrayRecord output, no TensorFlow needed) for the embedded, espeak, MSP-Podcast and IEMOCAP
corpora.

All four write the same record schema: "id" (text), "audio" (int16 PCM at 16 kHz, stored as raw bytes),
"arousal" / "valence" / "dominance" (float32 on 1–7), "class_id" (int32, -1 = no categorical label) and
"speaker" (text).

* ``ErclapEmbedded``: the synthetic corpus of ``erclap.data.embedded``; its builder config is named after a
  hash of the corpus spec, so a changed spec builds a new corpus beside the old one.
* ``ErclapMspPodcast``: MSP-Podcast v1.10–1.12 layout in the manual dir: ``Audios/*.wav`` and
  ``Labels/labels_consensus.csv`` (FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set).
  Splits: Train -> train, Development -> validation, Test1 -> test, Test2 -> test2, Test3 -> test3 (those
  present). Labels are already on 1–7. EmoClass N H S A U F D C O -> class ids 0..8, X (no agreement) -> -1.
* ``ErclapIemocap``: ``Session1..5/sentences/wav/<dialog>/<utterance>.wav`` and
  ``Session*/dialog/EmoEvaluation/*.txt`` lines ``[start - end]<TAB>utt<TAB>cat<TAB>[V, A, D]`` on 1–5,
  mapped linearly to 1–7 (y = 1.5 x - 0.5, so 1 -> 1, 3 -> 4, 5 -> 7). Written as splits
  ``session<k>_<F|M>`` (speaker gender of the utterance); ``erclap.data.get_data_source`` composes the
  leave-one-session-out folds from them. Categories neu hap sad ang exc fru sur fea dis oth -> 0..9,
  xxx (no agreement) -> -1.

A built licensed corpus records what it was built from (``source_fingerprint``): the sha256 of its label
files and the listing (relative name, size, modification time) of its audio directories, the files the
builder reads (``LABEL_FILES`` and ``AUDIO_DIRS`` of each builder), plus every audio file its labels name
outside those directories (an MSP-Podcast ``FileName`` such as ``../more/x.wav``: ``label_audio_files``).
Listing and stat only, so it stays cheap for 100k files; ``source_differences`` says what changed since.

Unreadable or missing audio files are counted and skipped while their fraction of the corpus stays within
``unreadable_audio_tolerance`` (reported at the end of the build); beyond it the build fails naming the
files. Bad label rows (missing columns, NaN, out-of-range values) always fail, naming file and row.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import os
import re
import time
from concurrent import futures

import numpy as np
import tensorflow_datasets as tfds

from erclap import fileio, progress
from erclap.data import audio as audio_io
from erclap.data import embedded, espeak
from erclap.schema import LABEL_NAMES

SAMPLE_RATE = 16000
MSP_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
MSP_SPLITS = {"Train": "train", "Development": "validation", "Test1": "test", "Test2": "test2",
              "Test3": "test3"}
MSP_CLASSES = ("N", "H", "S", "A", "U", "F", "D", "C", "O")
MSP_NO_CLASS = ("X",)
IEMOCAP_CLASSES = ("neu", "hap", "sad", "ang", "exc", "fru", "sur", "fea", "dis", "oth")
IEMOCAP_NO_CLASS = ("xxx",)
_IEMOCAP_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      # Raw int16 bytes: a variable-length int16 Tensor would otherwise be stored as int64 varints.
      "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES),
      **{name: tfds.features.Scalar(dtype=np.float32) for name in LABEL_NAMES},
      "class_id": tfds.features.Scalar(dtype=np.int32),
      "speaker": tfds.features.Text(),
  })


class ErclapEmbedded(tfds.core.GeneratorBasedBuilder):
  """The synthetic corpus (see ``erclap.data.embedded``)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Source-filter synthesis, SYNTHESIS_VERSION 1."}

  def __init__(self, *, spec: embedded.EmbeddedSpec, **kwargs):
    self._spec = spec
    config = tfds.core.BuilderConfig(name=spec.config_name(), description=repr(spec))
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=features(), description=embedded.__doc__,
                                          metadata=tfds.core.MetadataDict(spec=repr(self._spec)))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in embedded.SPLITS}

  def _generate_examples(self, split):
    spec = self._spec
    speaker_list = embedded.speakers(spec)
    for index in range(spec.split_size(split)):
      example = embedded.generate_example(spec, split, index, speaker_list)
      yield example["id"], example


class ErclapEspeak(tfds.core.GeneratorBasedBuilder):
  """The espeak-ng corpus (see ``erclap.data.espeak``)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "espeak-ng sentences, SYNTHESIS_VERSION 1."}
  _CHUNK = 64  # clips rendered ahead of the writer (two espeak-ng processes at a time)

  def __init__(self, *, spec: espeak.EspeakSpec, **kwargs):
    self._spec = spec
    config = tfds.core.BuilderConfig(name=spec.config_name(), description=repr(spec))
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=features(), description=espeak.__doc__,
                                          metadata=tfds.core.MetadataDict(spec=repr(self._spec)))

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata["engine"] = espeak.engine_version()  # fails naming the package when it is missing
    return {split: self._generate_examples(split) for split in espeak.SPLITS}

  def _generate_examples(self, split):
    spec = self._spec
    speaker_list = espeak.speakers(spec)
    size = spec.split_size(split)
    with futures.ThreadPoolExecutor(2) as pool:  # the work is in espeak-ng subprocesses: threads overlap them
      for start in range(0, size, self._CHUNK):
        indices = range(start, min(size, start + self._CHUNK))
        for example in pool.map(lambda i: espeak.generate_example(spec, split, i, speaker_list), indices):
          yield example["id"], example


class _SkipCounter:
  """Counts unreadable audio; raises once the tolerated fraction of ``total`` is exceeded."""

  def __init__(self, corpus: str, total: int, tolerance: float):
    if not 0.0 <= tolerance <= 1.0:
      raise ValueError(f"data.unreadable_audio_tolerance must be in [0, 1], got {tolerance}")
    self.corpus, self.total, self.tolerance = corpus, max(total, 1), tolerance
    self.skipped: list[str] = []

  def read(self, path: str) -> np.ndarray | None:
    try:
      return audio_io.read_audio(path, SAMPLE_RATE)
    except audio_io.AudioReadError as e:
      self.skipped.append(str(e))
      if len(self.skipped) > math.floor(self.tolerance * self.total):
        shown = "\n  ".join(self.skipped[:10])
        raise ValueError(
            f"{self.corpus}: {len(self.skipped)} unreadable audio file(s) of {self.total} exceed "
            f"data.unreadable_audio_tolerance={self.tolerance}:\n  {shown}") from e
      return None

  def report(self) -> str:
    if not self.skipped:
      return f"{self.corpus}: all {self.total} audio files read."
    shown = "\n  ".join(self.skipped[:10])
    return (f"{self.corpus}: skipped {len(self.skipped)} unreadable audio file(s) of {self.total} "
            f"(tolerance {self.tolerance}):\n  {shown}")


def _label(value: str, *, low: float, high: float, where: str, column: str) -> float:
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: {column}={value!r} is not a number") from None
  if not math.isfinite(x) or not low <= x <= high:
    raise ValueError(f"{where}: {column}={value!r} is NaN or outside {low:g}..{high:g}")
  return x


class _ManualCorpus(tfds.core.GeneratorBasedBuilder):
  """Shared parts of the licensed corpora: manual dir, skip counting."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = "Set data.manual_dir to the directory holding the licensed corpus."
  # What the builder reads, relative to the manual dir (glob patterns): label files (content-hashed) and the
  # directories of audio files (listed recursively). Keep them in step with _split_generators.
  LABEL_FILES: tuple[str, ...] = ()
  AUDIO_DIRS: tuple[str, ...] = ()

  def __init__(self, *, unreadable_audio_tolerance: float = 0.0, **kwargs):
    self._tolerance = float(unreadable_audio_tolerance)
    self.skip_counter: _SkipCounter | None = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=features(), description=self.__doc__)

  @classmethod
  def label_audio_files(cls, root: str) -> list[str]:
    """The audio files the label files of the manual dir ``root`` name, as the builder reads them, where they
    may lie outside ``AUDIO_DIRS`` ([] where the builder's paths cannot leave them)."""
    del root
    return []


class ErclapMspPodcast(_ManualCorpus):
  """MSP-Podcast (v1.10–1.12 layout; users bring the licensed audio)."""

  VERSION = tfds.core.Version("1.0.0")
  LABEL_FILES = ("Labels/labels_consensus.csv",)
  AUDIO_DIRS = ("Audios",)

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    rows = parse_msp_labels(os.path.join(root, "Labels", "labels_consensus.csv"))
    self.skip_counter = _SkipCounter("msp_podcast", len(rows), self._tolerance)
    by_split: dict[str, list[dict]] = {}
    for row in rows:
      by_split.setdefault(row["split"], []).append(row)
    return {split: self._generate_examples(root, split_rows) for split, split_rows in by_split.items()}

  @classmethod
  def label_audio_files(cls, root: str) -> list[str]:
    # FileName is joined to Audios/ as it stands: "../x.wav" or "/abs/x.wav" reach outside it.
    rows = parse_msp_labels(os.path.join(root, "Labels", "labels_consensus.csv"))
    return [os.path.join(root, "Audios", row["file"]) for row in rows]

  def _generate_examples(self, root, rows):
    for row in rows:
      wave = self.skip_counter.read(os.path.join(root, "Audios", row["file"]))
      if wave is None:
        continue
      yield row["id"], {"id": row["id"], "audio": audio_io.to_int16(wave), "arousal": row["arousal"],
                        "valence": row["valence"], "dominance": row["dominance"],
                        "class_id": row["class_id"], "speaker": row["speaker"]}


def parse_msp_labels(path: str) -> list[dict]:
  """labels_consensus.csv -> validated rows (id, file, split, arousal, valence, dominance, class_id,
  speaker)."""
  if not os.path.isfile(path):
    raise ValueError(f"msp_podcast: label file {path} not found (expected <manual_dir>/Labels/"
                     f"labels_consensus.csv)")
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    missing = [c for c in MSP_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
    rows = []
    for line, raw in enumerate(reader, start=2):  # line 1 is the header
      where = f"{path} row {line} ({raw.get('FileName')})"
      if not raw["FileName"]:
        raise ValueError(f"{where}: empty FileName")
      split = MSP_SPLITS.get(raw["Split_Set"].strip())
      if split is None:
        raise ValueError(f"{where}: Split_Set={raw['Split_Set']!r} is not one of {sorted(MSP_SPLITS)}")
      cls = raw["EmoClass"].strip()
      if cls in MSP_CLASSES:
        class_id = MSP_CLASSES.index(cls)
      elif cls in MSP_NO_CLASS:
        class_id = -1
      else:
        raise ValueError(f"{where}: EmoClass={cls!r} is not one of {MSP_CLASSES + MSP_NO_CLASS}")
      labels = [_label(raw[c], low=1.0, high=7.0, where=where, column=c)
                for c in ("EmoAct", "EmoVal", "EmoDom")]
      file = raw["FileName"].strip()
      rows.append(dict(id=os.path.splitext(file)[0], file=file, split=split, arousal=np.float32(labels[0]),
                       valence=np.float32(labels[1]), dominance=np.float32(labels[2]),
                       class_id=np.int32(class_id), speaker=str(raw["SpkrID"]).strip()))
  if not rows:
    raise ValueError(f"{path}: no label rows")
  return rows


def iemocap_to_seven(x: float) -> float:
  """IEMOCAP's 1–5 scale -> 1–7, linearly (1 -> 1, 3 -> 4, 5 -> 7)."""
  return 1.5 * x - 0.5


def parse_iemocap_evaluation(path: str) -> list[dict]:
  """One EmoEvaluation txt -> rows (id, category, arousal, valence, dominance on 1–7)."""
  rows = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.startswith("["):  # annotator lines (C-E1: ..., A-F1: ...) and blank separators
        continue
      m = _IEMOCAP_LINE.match(line.rstrip("\n"))
      if m is None:
        raise ValueError(f"{path} line {line_no}: cannot parse {line.strip()!r} (expected "
                         f"'[start - end]<TAB>utterance<TAB>category<TAB>[V, A, D]')")
      utt, cat, vad = m.group(3), m.group(4), m.group(5)
      parts = [p.strip() for p in vad.split(",")]
      where = f"{path} line {line_no} ({utt})"
      if "/" in utt or "\\" in utt:  # the id names its wav file: it must stay inside sentences/wav
        raise ValueError(f"{where}: an utterance id cannot contain a path separator")
      if len(parts) != 3:
        raise ValueError(f"{where}: expected 3 values [V, A, D], got {vad!r}")
      v, a, d = (_label(p, low=1.0, high=5.0, where=where, column=c)
                 for p, c in zip(parts, "VAD", strict=True))
      if cat in IEMOCAP_CLASSES:
        class_id = IEMOCAP_CLASSES.index(cat)
      elif cat in IEMOCAP_NO_CLASS:
        class_id = -1
      else:
        raise ValueError(f"{where}: category {cat!r} is not one of {IEMOCAP_CLASSES + IEMOCAP_NO_CLASS}")
      rows.append(dict(id=utt, arousal=np.float32(iemocap_to_seven(a)),
                       valence=np.float32(iemocap_to_seven(v)), dominance=np.float32(iemocap_to_seven(d)),
                       class_id=np.int32(class_id)))
  return rows


class ErclapIemocap(_ManualCorpus):
  """IEMOCAP (users bring the licensed audio); splits session<k>_<F|M>."""

  VERSION = tfds.core.Version("1.0.0")
  LABEL_FILES = ("Session[1-9]/dialog/EmoEvaluation/*.txt",)
  AUDIO_DIRS = ("Session[1-9]/sentences/wav",)

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    sessions = sorted(d for d in glob.glob(os.path.join(glob.escape(root), "Session[1-9]")) if os.path.isdir(d))
    if not sessions:
      raise ValueError(f"iemocap: no Session1..Session5 directories in manual dir {root}")
    by_split: dict[str, list[dict]] = {}
    for session_dir in sessions:
      k = int(os.path.basename(session_dir)[len("Session"):])
      txts = sorted(glob.glob(os.path.join(glob.escape(session_dir), "dialog", "EmoEvaluation", "*.txt")))
      if not txts:
        raise ValueError(f"iemocap: no EmoEvaluation/*.txt under {session_dir}/dialog")
      for txt in txts:
        for row in parse_iemocap_evaluation(txt):
          gender = row["id"].split("_")[-1][:1].upper()
          if gender not in ("F", "M"):
            raise ValueError(f"{txt}: utterance {row['id']!r} does not end in _F### or _M###")
          dialog = row["id"].rsplit("_", 1)[0]
          row["path"] = os.path.join(session_dir, "sentences", "wav", dialog, row["id"] + ".wav")
          row["speaker"] = f"Ses{k:02d}{gender}"
          by_split.setdefault(f"session{k}_{gender}", []).append(row)
    total = sum(len(v) for v in by_split.values())
    self.skip_counter = _SkipCounter("iemocap", total, self._tolerance)
    return {split: self._generate_examples(rows) for split, rows in sorted(by_split.items())}

  def _generate_examples(self, rows):
    for row in rows:
      wave = self.skip_counter.read(row["path"])
      if wave is None:
        continue
      yield row["id"], {"id": row["id"], "audio": audio_io.to_int16(wave), "arousal": row["arousal"],
                        "valence": row["valence"], "dominance": row["dominance"],
                        "class_id": row["class_id"], "speaker": row["speaker"]}


def build(builder: tfds.core.DatasetBuilder, manual_dir: str | None = None) -> None:
  """download_and_prepare without statistics (they need TensorFlow) and without downloads."""
  config = tfds.download.DownloadConfig(manual_dir=manual_dir,
                                        compute_stats=tfds.download.ComputeStatsMode.SKIP)
  builder.download_and_prepare(download_config=config, file_format="array_record")
  counter = getattr(builder, "skip_counter", None)
  if counter is not None:
    logging.info("%s", counter.report())
    progress.print_line(counter.report())


# ----------------------------------------------------------------------------- source fingerprint

SOURCE_FORMAT = 1


def _audio_listing(root: str, patterns: tuple[str, ...]) -> dict[str, list[int]]:
  """{relative path: [size, mtime_ns]} of every file under the audio directories (hidden names skipped)."""
  files = {}
  pending = [top for pattern in patterns for top in sorted(glob.glob(os.path.join(glob.escape(root), pattern)))]
  prefix = len(root) + 1
  while pending:  # scandir, not os.walk + relpath: a 100k-file corpus is listed in about a second
    with os.scandir(pending.pop()) as entries:
      for entry in entries:
        if entry.name.startswith("."):
          continue
        try:
          if entry.is_dir():  # follows links, as the builder's reads do
            pending.append(entry.path)
            continue
          st = entry.stat()  # a link's target: that is what the builder reads
        except OSError:  # a dangling link: unreadable, like a missing file
          continue
        files[entry.path[prefix:]] = [int(st.st_size), int(st.st_mtime_ns)]
  return dict(sorted(files.items()))


def source_fingerprint(builder_cls: type[_ManualCorpus], manual_dir: str) -> dict:
  """What a licensed corpus is built from: its manual dir's label files and audio listing.

  Args:
    builder_cls: ErclapMspPodcast or ErclapIemocap (its LABEL_FILES and AUDIO_DIRS).
    manual_dir: the licensed corpus' directory.
  Returns:
    {"format", "builder", "manual_dir" (absolute), "labels": {relative path: {"sha256", "size"}},
    "files": {relative path: [size, mtime_ns]}, "outside_files": the same of the audio files the labels name
    outside the audio directories (relative to the manual dir, ``../`` where they lie outside it)}: a JSON-able
    dict; only the label files are read.
  """
  root = os.path.abspath(os.path.expanduser(manual_dir))
  labels = {}
  for pattern in builder_cls.LABEL_FILES:
    for path in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
      if os.path.isfile(path):
        labels[os.path.relpath(path, root)] = {"sha256": fileio.sha256_file(path), "size": os.path.getsize(path)}
  files = _audio_listing(root, builder_cls.AUDIO_DIRS)
  return {"format": SOURCE_FORMAT, "builder": builder_cls.name, "manual_dir": root, "labels": labels,
          "files": files, "outside_files": _outside_files(builder_cls, root, files)}


def _outside_files(builder_cls: type[_ManualCorpus], root: str, listed: dict) -> dict[str, list[int]]:
  """{relative path: [size, mtime_ns]} of the files the labels name that ``listed`` lacks (missing ones left out:
  the build skips them, and one that appears later shows as added)."""
  try:
    named = builder_cls.label_audio_files(root)
  except ValueError:  # unparsable labels: the build stops on them, and their changed sha256 says so
    return {}
  out = {}
  for path in named:
    rel = os.path.relpath(os.path.normpath(path), root)
    if rel in listed or rel in out:
      continue
    try:
      st = os.stat(path)  # a link's target: what the builder reads
    except OSError:
      continue
    out[rel] = [int(st.st_size), int(st.st_mtime_ns)]
  return dict(sorted(out.items()))


def _listed(names: list[str], shown: int) -> str:
  more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
  return ", ".join(names[:shown]) + more


def _when(mtime_ns: int) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9))


def _file_change(name: str, old: list[int], new: list[int]) -> str:
  if old[0] != new[0]:
    return f"{name} (size {old[0]} -> {new[0]} bytes)"
  return f"{name} (modified {_when(old[1])} -> {_when(new[1])})"


def source_differences(recorded: dict | None, current: dict, shown: int = 5) -> list[str]:
  """What differs between the source a corpus was built from and ``current`` (both ``source_fingerprint``);
  [] when nothing does. The manual dir's own path may differ (a moved corpus is the same corpus)."""
  if recorded is None:
    return ["there is no record of the source it was built from (built before sources were recorded, or "
            "its record was removed)"]
  if recorded.get("format") != SOURCE_FORMAT:
    return [f"its source record has format {recorded.get('format')!r}, this version reads {SOURCE_FORMAT}"]
  out = []
  old_labels, new_labels = recorded["labels"], current["labels"]
  for name in sorted(old_labels.keys() | new_labels.keys()):
    if name not in new_labels:
      out.append(f"label file {name} removed")
    elif name not in old_labels:
      out.append(f"label file {name} added")
    elif old_labels[name]["sha256"] != new_labels[name]["sha256"]:
      out.append(f"label file {name} changed: sha256 {old_labels[name]['sha256'][:16]} -> "
                 f"{new_labels[name]['sha256'][:16]}")
  out += _listing_differences(recorded["files"], current["files"], "audio file(s)", shown)
  outside = current.get("outside_files", {})
  if "outside_files" not in recorded:
    if outside:  # recorded by a version that fingerprinted the audio directories only
      out.append(f"its record does not cover the {len(outside)} audio file(s) its labels name outside the audio "
                 f"directories ({_listed(sorted(outside), shown)}): a rebuild records them")
  else:
    out += _listing_differences(recorded["outside_files"], outside, "audio file(s) outside the audio directories",
                                shown)
  return out


def _listing_differences(old_files: dict, new_files: dict, what: str, shown: int) -> list[str]:
  """Lines naming the files added, removed and changed between two ``{name: [size, mtime_ns]}`` listings."""
  out = []
  for how, names in (("added", sorted(new_files.keys() - old_files.keys())),
                     ("removed", sorted(old_files.keys() - new_files.keys()))):
    if names:
      out.append(f"{len(names)} {what} {how}: {_listed(names, shown)}")
  changed = sorted(k for k in old_files.keys() & new_files.keys() if list(old_files[k]) != list(new_files[k]))
  if changed:
    shown_changes = [_file_change(k, old_files[k], new_files[k]) for k in changed[:shown]]
    out.append(f"{len(changed)} {what} changed: {_listed(shown_changes + changed[shown:], shown)}")
  return out


def describe_source(recorded: dict | None) -> str:
  """One line naming the source of a build, for the log."""
  if recorded is None:
    return "an unrecorded source"
  labels = ", ".join(f"{name} sha256 {v['sha256'][:16]}" for name, v in sorted(recorded["labels"].items()))
  built = f", built {recorded['built_at']}" if recorded.get("built_at") else ""
  return f"{recorded['manual_dir']} ({len(recorded['files'])} audio files; {labels or 'no label files'}{built})"
