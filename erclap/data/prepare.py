"""Building a corpus once: ``ensure_dataset`` builds the configured corpus (TFDS, ArrayRecord) unless it is built
from the same source, under a file lock so that concurrent processes never build it twice.

A built licensed corpus records what it was built from (``SOURCE_RECORD``, ``erclap_source.json`` in its TFDS
version dir: the label files' sha256 and the audio files' sizes and modification times); ``ensure_dataset``
never takes a build for another source (see there and ``data.rebuild``). A synthesised corpus's builder config
is named after its spec, so a changed spec builds a new corpus beside the old one.

TensorFlow is never imported here: TFDS builds ArrayRecord without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time

from erclap import fileio, progress
from erclap.data import builders, corpora
from erclap.data.corpora import resolve_data_dir
from erclap.tensorflow_devices import hide_accelerators_from_tensorflow

SOURCE_RECORD = "erclap_source.json"  # beside a built licensed corpus: what it was built from


def _check_name(data_config) -> str:
  return corpora.get(data_config).name


def _builder(data_config, data_dir: str):
  return corpora.make_builder(data_config, data_dir)


_is_prepared = corpora.is_built


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

  A synthesised corpus ("embedded", "espeak") is built on first use (again only when its spec changes, which
  changes its builder config name). The licensed corpora are built from ``data_config.manual_dir`` and record
  what they were built from (``erclap_source.json`` beside the build). Once built, a run without ``manual_dir`` uses the
  build as it is (the log names its source); a run with ``manual_dir`` compares that dir with the record,
  and on any difference stops with SourceChangedError saying what differs, or with ``data_config.rebuild``
  rebuilds from it: a built corpus is never silently taken for another source.
  """
  name = _check_name(data_config)
  data_dir = resolve_data_dir(data_config)
  builder = _builder(data_config, data_dir)
  built = _is_prepared(builder)
  if not corpora.CORPORA[name].licensed:
    if not built:
      _build_locked(data_config, data_dir, None, None)
    return data_dir
  manual_dir = _manual_dir(data_config, data_dir, built)
  if built and manual_dir is None:
    progress.print_line(f"[data] {name}: using {builder.data_dir}, built from "
                        f"{builders.describe_source(read_source_record(builder))}")
    return data_dir
  fingerprint = builders.source_fingerprint(type(builder), manual_dir)
  if built:
    differences = builders.source_differences(read_source_record(builder), fingerprint)
    if not differences:
      progress.print_line(f"[data] {name}: using {builder.data_dir}, built from {manual_dir} (unchanged since)")
      return data_dir
    if not data_config.rebuild:
      raise SourceChangedError(_stale_message(data_config, builder, manual_dir, differences))
    progress.print_line(f"[data] {name}: data.rebuild=True and the source changed:\n  " + "\n  ".join(differences))
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
    progress.print_line(f"[data] building {data_config.name} ({variant}) into {builder.data_dir} ...")
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
    progress.print_line(f"[data] built {data_config.name} in {time.time() - start:.1f} s")


def _set_aside(builder) -> str:
  """Moves a build out of the way of its rebuild (a hidden sibling, not a TFDS version name); returns it."""
  previous = os.path.join(os.path.dirname(builder.data_dir), f".{os.path.basename(builder.data_dir)}.previous")
  if os.path.exists(previous):  # debris of a rebuild that was killed
    shutil.rmtree(previous)
  os.replace(builder.data_dir, previous)
  return previous
