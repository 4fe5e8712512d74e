r"""Embed a collection of recordings with a trained ERCLAP model -> Parquet shards.

  python -m erclap.embed --model=workdirs/demo --audio=recordings/ --out=embeddings/ \
      --queries="A calm, quiet voice." --queries="An excited, loud voice."

Flags:
  --model           a workdir (its latest checkpoint) or ``<workdir>/checkpoints/<step>`` (``inference.load``).
  --audio           a directory (every .wav / .flac / .ogg / .mp3 under it, recursively, in sorted order), a
                    CSV file with a ``path`` column, a text file with one path per line (blank lines and lines
                    starting with ``#`` are skipped), or one audio file. Relative paths in a CSV or text file
                    are relative to that file's directory.
  --out             the output directory.
  --queries         a description to score every clip against (repeatable): column ``similarity_<j>`` holds the
                    cosine similarity to the j-th query (the texts are in ``OUT/run.json``).
  --window_seconds  analysis window (default 0: the model's crop, ``data.eval_max_seconds or
                    data.max_seconds``). A clip up to one window long is one (zero-padded, masked) window;
                    a longer clip is embedded in windows every ``--hop_seconds`` until one reaches its end (the
                    last one partial, padded and masked) and its embedding is the mean of the L2-normalised
                    window embeddings, re-normalised. No clip is cut.
  --hop_seconds     window hop (default 0: the window, no overlap).
  --batch_size      windows per model call, over all local devices (rounded up to a multiple of the device
                    count).
  --per_window      also write each clip's window start times and window embeddings.
  --shard_size      files per Parquet shard (default 256).

Output (``OUT/``): ``shard-NNNNN.parquet`` with one row per readable file: ``path`` (absolute), ``duration_s``,
``sample_rate`` and ``channels`` (of the file; multi-channel audio is mixed down to mono and everything is
resampled to the model's rate), ``num_windows``, ``speech_embedding`` (a fixed-size list, unit norm),
``predicted_arousal`` / ``predicted_valence`` / ``predicted_dominance`` (zero-shot, 1–7, from level prompts
written by the training descriptions' templates), ``similarity_<j>`` per query and, with ``--per_window``,
``window_start_s`` and ``window_embeddings``. ``unreadable.tsv`` lists the files that could not be read (path,
error): undecodable, empty or non-finite audio, a header without a positive sample rate, and file names that are
not valid UTF-8 (Parquet stores paths as UTF-8 text; such a name is listed with its undecodable bytes escaped,
``\xff``: rename the file). ``run.json`` records the settings.

Reading: WAV through scipy; FLAC / OGG / MP3 through the ``soundfile`` package (libsndfile); without it such
files are listed as unreadable with that reason.

Resuming: every shard is written under a temporary name and renamed when complete (``erclap.fileio``), so a
rerun with the same ``--out`` skips every file already in a shard and embeds the rest into new shards; files
listed as unreadable are tried again. A rerun with other settings (model step, windows, queries) is refused.
The exit status is non-zero only when no file at all could be embedded.

One run per output directory: a run holds ``OUT/.erclap.lock`` (``erclap.workdir_lock``, as a training run holds
its workdir) while it writes, and a second run on the same ``--out`` stops with a message naming the holder. An
``--out`` that is a file, or a directory that cannot be written, stops the run before any work with a message.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from erclap import fileio, inference, progress, workdir_lock
from erclap.data import audio as audio_io
from erclap.schema import LABEL_NAMES

SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.parquet$")
UNREADABLE_FILE = "unreadable.tsv"
SETTINGS_FILE = "run.json"


# ----------------------------------------------------------------------------- inputs


def _listed_paths(path: str) -> list[str]:
  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="", encoding="utf-8") as f:
    if path.lower().endswith(".csv"):
      reader = csv.DictReader(f)
      if not reader.fieldnames or "path" not in reader.fieldnames:
        raise ValueError(f"--audio={path}: a CSV needs a 'path' column, found {reader.fieldnames}")
      entries = [row["path"] or "" for row in reader]
    else:
      entries = [line for line in f.read().splitlines() if not line.lstrip().startswith("#")]
  return [os.path.join(base, e.strip()) for e in entries if e.strip()]


def collect_paths(source: str) -> list[str]:
  """The audio files of ``--audio`` (a directory, a CSV / text list, or one audio file) as absolute paths,
  without duplicates (directory: sorted; lists: in their order)."""
  if os.path.isdir(source):
    found = [os.path.join(root, name) for root, _, names in os.walk(source) for name in names
             if name.lower().endswith(audio_io.AUDIO_EXTENSIONS) and not name.startswith(".")]
    paths = sorted(found)
  elif os.path.isfile(source):
    paths = [source] if source.lower().endswith(audio_io.AUDIO_EXTENSIONS) else _listed_paths(source)
  else:
    raise FileNotFoundError(f"--audio={source}: no such directory or file")
  return list(dict.fromkeys(os.path.abspath(p) for p in paths))


# ----------------------------------------------------------------------------- output directory state


def _shard_files(out_dir: str) -> list[str]:
  return sorted(n for n in os.listdir(out_dir) if SHARD_PATTERN.match(n))


def _finished(out_dir: str) -> tuple[set[str], int, int]:
  """(paths in finished shards, next shard index, rows in finished shards)."""
  done, rows, names = set(), 0, _shard_files(out_dir)
  for name in names:
    paths = pq.read_table(os.path.join(out_dir, name), columns=["path"]).column("path").to_pylist()
    done.update(paths)
    rows += len(paths)
  next_index = 1 + max((int(SHARD_PATTERN.match(n).group(1)) for n in names), default=-1)
  return done, next_index, rows


def _read_unreadable(out_dir: str) -> dict[str, str]:
  path = os.path.join(out_dir, UNREADABLE_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    rows = [line.split("\t", 1) for line in f.read().splitlines()[1:] if line]
  return {r[0]: r[1] if len(r) > 1 else "" for r in rows}


def printable_path(path: str) -> str:
  """``path`` as UTF-8 text: a name that is not valid UTF-8 (decoded by the OS with surrogate escapes) gets its
  undecodable bytes written as ``\\xNN``."""
  try:
    path.encode("utf-8")
    return path
  except UnicodeEncodeError:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _write_unreadable(out_dir: str, unreadable: dict[str, str]) -> None:
  clean = lambda s: printable_path(" ".join(str(s).split()))  # one line per file: no tabs or newlines in a field
  with fileio.atomic_open(os.path.join(out_dir, UNREADABLE_FILE), "w", encoding="utf-8") as f:
    f.write("path\terror\n")
    f.writelines(f"{clean(p)}\t{clean(e)}\n" for p, e in unreadable.items())


def _check_settings(out_dir: str, settings: dict) -> None:
  """Records the run's settings; refuses an output directory written with different ones."""
  path = os.path.join(out_dir, SETTINGS_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      stored = json.load(f)
    changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
    if changed and _shard_files(out_dir):
      shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
      raise ValueError(f"--out={out_dir} holds shards written with other settings ({shown}); use a new --out")
  fileio.write_json(path, settings)


# ----------------------------------------------------------------------------- one shard


def _fixed_list(x: np.ndarray) -> pa.Array:
  x = np.ascontiguousarray(x, np.float32)
  return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _shard_table(model: inference.ERCLAP, paths: list[str], decoded: list[audio_io.DecodedAudio],
                 query_emb: np.ndarray | None, *, window_seconds, hop_seconds, per_window: bool) -> pa.Table:
  speech, windows = model.embed_waveforms([d.wave for d in decoded], window_seconds=window_seconds,
                                          hop_seconds=hop_seconds)
  columns = {
      "path": pa.array(paths, pa.string()),
      "duration_s": pa.array([d.duration_s for d in decoded], pa.float64()),
      "sample_rate": pa.array([d.sample_rate for d in decoded], pa.int32()),
      "channels": pa.array([d.channels for d in decoded], pa.int32()),
      "num_windows": pa.array([len(w) for w in windows], pa.int32()),
      "speech_embedding": _fixed_list(speech),
  }
  attributes = model.attributes_from_embeddings(speech)
  columns.update({f"predicted_{name}": pa.array(attributes[name], pa.float32()) for name in LABEL_NAMES})
  if query_emb is not None:
    sims = speech @ query_emb.T
    columns.update({f"similarity_{j}": pa.array(sims[:, j], pa.float32()) for j in range(sims.shape[1])})
  if per_window:
    _, hop = model.window_samples(window_seconds, hop_seconds)
    columns["window_start_s"] = pa.array([(np.arange(len(w)) * hop / model.sample_rate).astype(np.float32)
                                          for w in windows], pa.list_(pa.float32()))
    offsets = pa.array(np.cumsum([0] + [len(w) for w in windows]), pa.int32())
    columns["window_embeddings"] = pa.ListArray.from_arrays(offsets, _fixed_list(np.concatenate(windows)))
  return pa.table(columns)


def _read(path: str, sample_rate: int) -> audio_io.DecodedAudio | str:
  """The decoded file, or why it cannot be used (one bad file never stops the run)."""
  if printable_path(path) != path:
    return (f"{printable_path(path)}: the file name is not valid UTF-8, and the shards store paths as UTF-8 text: "
            f"rename the file")
  try:
    return audio_io.load_audio(path, sample_rate)
  except (audio_io.AudioReadError, OSError, MemoryError) as e:
    return str(e) if path in str(e) else f"{path}: {e}"
  except Exception as e:  # a decoder's unforeseen failure on one file's bytes
    return f"{path}: cannot read ({type(e).__name__}: {e})"


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Summary:
  total: int          # files in --audio
  skipped: int        # already in a finished shard before this run
  embedded: int       # embedded by this run
  unreadable: int     # listed in unreadable.tsv after this run
  rows: int           # rows in all shards after this run
  seconds: float      # wall time of this run


class _Progress:
  def __init__(self, total: int, log: Callable[[str], None]):
    self.total, self.log, self.start, self.count = total, log, time.monotonic(), 0

  def update(self, count: int, embedded: int, unreadable: int) -> None:
    self.count += count
    elapsed = max(time.monotonic() - self.start, 1e-9)
    rate = self.count / elapsed
    eta = (self.total - self.count) / rate if rate > 0 else float("nan")
    self.log(f"[embed] {self.count}/{self.total} files: {embedded} embedded, {unreadable} unreadable, "
             f"{rate:.1f} clips/s, ETA {progress.format_eta(eta)}")


def embed_files(model: inference.ERCLAP, paths: Sequence[str], out_dir: str, *, queries: Sequence[str] = (),
                window_seconds: float | None = None, hop_seconds: float | None = None, per_window: bool = False,
                shard_size: int = 256, log: Callable[[str], None] = print) -> Summary:
  """Embeds ``paths`` into Parquet shards under ``out_dir`` (see the module docstring), resuming a previous run.

  Holds the output directory's lock (``erclap.workdir_lock``) while it writes.

  Args:
    model: a loaded ``inference.ERCLAP``.
    paths: audio files (absolute paths are stored as given).
    out_dir: the output directory (created).
    queries: descriptions to score every clip against.
    window_seconds, hop_seconds: analysis windows (None = the model's crop, hop = window).
    per_window: also store window start times and embeddings.
    shard_size: files per shard.
    log: where progress lines go.
  Returns:
    a ``Summary`` of the run.

  Raises:
    ValueError: a bad setting, or ``out_dir`` holds shards of other settings or is a file.
    erclap.workdir_lock.WorkdirLockedError: another run writes ``out_dir``, or it cannot be written.
  """
  with output_lock(out_dir):
    return _embed_locked(model, paths, out_dir, queries=queries, window_seconds=window_seconds,
                         hop_seconds=hop_seconds, per_window=per_window, shard_size=shard_size, log=log)


def output_lock(out_dir: str) -> workdir_lock.WorkdirLock:
  """The lock of an output directory (``with output_lock(out):``; it creates the directory).

  Raises:
    ValueError: ``out_dir`` is a file.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"--out={out_dir} is a file, not a directory: pick a directory for the shards")
  return workdir_lock.WorkdirLock(out_dir, what="Output directory", flag="--out")


def _embed_locked(model, paths, out_dir, *, queries, window_seconds, hop_seconds, per_window, shard_size,
                  log) -> Summary:
  """``embed_files``' work, under the output directory's lock."""
  if shard_size < 1:
    raise ValueError(f"--shard_size={shard_size}: must be >= 1")
  window, hop = model.window_samples(window_seconds, hop_seconds)
  fileio.remove_stale_temps(out_dir)  # debris of a run killed mid-write
  _check_settings(out_dir, dict(step=int(model.step), window_seconds=window / model.sample_rate,
                                hop_seconds=hop / model.sample_rate, queries=list(queries),
                                per_window=bool(per_window)))
  done, next_index, rows = _finished(out_dir)
  unreadable = {p: e for p, e in _read_unreadable(out_dir).items() if p not in done}
  todo = [p for p in paths if p not in done]
  query_emb = model.embed_text(list(queries)) if queries else None
  progress, embedded, start = _Progress(len(todo), log), 0, time.monotonic()
  log(f"[embed] {len(paths)} files, {len(paths) - len(todo)} already in {next_index} shard(s) under {out_dir}")
  chunks = [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    submit = lambda chunk: [pool.submit(_read, p, model.sample_rate) for p in chunk]
    pending = submit(chunks[0]) if chunks else []
    for k, chunk in enumerate(chunks):
      results = [f.result() for f in pending]
      pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []  # decode the next shard meanwhile
      good = [(p, r) for p, r in zip(chunk, results, strict=True) if not isinstance(r, str)]
      for p, r in zip(chunk, results, strict=True):
        unreadable.pop(printable_path(p), None)  # unreadable.tsv holds names as UTF-8 text
        if isinstance(r, str):
          unreadable[printable_path(p)] = r
      _write_unreadable(out_dir, unreadable)  # first: a shard on disk means its failures are recorded
      if good:
        table = _shard_table(model, [p for p, _ in good], [r for _, r in good], query_emb,
                             window_seconds=window_seconds, hop_seconds=hop_seconds, per_window=per_window)
        with fileio.atomic_path(os.path.join(out_dir, f"shard-{next_index:05d}.parquet")) as tmp:
          pq.write_table(table, tmp)
        next_index, embedded, rows = next_index + 1, embedded + len(good), rows + len(good)
      progress.update(len(chunk), embedded, len(unreadable))
  if not chunks:
    _write_unreadable(out_dir, unreadable)
  return Summary(total=len(paths), skipped=len(paths) - len(todo), embedded=embedded, unreadable=len(unreadable),
                 rows=rows, seconds=time.monotonic() - start)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m erclap.embed", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True, help="workdir or <workdir>/checkpoints/<step>")
  p.add_argument("--audio", required=True, help="directory, CSV (path column), text list, or one audio file")
  p.add_argument("--out", required=True, help="output directory for the Parquet shards")
  p.add_argument("--queries", action="append", default=[], help="a description to score clips against")
  p.add_argument("--window_seconds", type=float, default=0.0, help="0 = the model's crop")
  p.add_argument("--hop_seconds", type=float, default=0.0, help="0 = the window")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--per_window", action="store_true", help="also write per-window embeddings")
  p.add_argument("--shard_size", type=int, default=256)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (1 only when no file could be embedded)."""
  args = _parser().parse_args(argv)
  log = lambda line: progress.print_line(line, file=sys.stderr)
  try:
    paths = collect_paths(args.audio)
    if not paths:
      raise ValueError(f"--audio={args.audio}: no audio files ({', '.join(audio_io.AUDIO_EXTENSIONS)})")
    with output_lock(args.out):  # before the model loads: a busy or unwritable --out stops the run at once
      model = inference.load(args.model, batch_size=args.batch_size)
      summary = _embed_locked(model, paths, args.out, queries=args.queries,
                              window_seconds=args.window_seconds or None, hop_seconds=args.hop_seconds or None,
                              per_window=args.per_window, shard_size=args.shard_size, log=log)
  except (ValueError, OSError, workdir_lock.WorkdirLockedError) as e:  # OSError: e.g. a full disk, named
    log(f"error: {e}")
    return 2
  log(f"[embed] done: {summary.rows} clips in shards under {args.out}, {summary.embedded} embedded now "
      f"({summary.embedded / max(summary.seconds, 1e-9):.1f} clips/s), {summary.skipped} skipped (already "
      f"done), {summary.unreadable} unreadable (listed in {os.path.join(args.out, UNREADABLE_FILE)})")
  return 0 if summary.rows > 0 else 1


if __name__ == "__main__":
  sys.exit(main())
