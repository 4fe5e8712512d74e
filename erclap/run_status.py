"""A run's own record of what it is doing: ``<workdir>/status.json``, written by ``erclap.main``.

Each mode but ``plan`` records at its start ``{"state": "running", ...}`` and at its end ``finished``, ``failed``
(with the last error line) or ``preempted`` (stopped by SIGTERM / SIGINT, or a training run that checkpointed
and exited before ``train.num_steps``), with the mode, the latest checkpoint step, the run's ``train.num_steps``,
host, pid and UTC timestamps. The file is written atomically by process 0 (local workdirs; none on object stores),
and a failure to write it never stops the run. A record that still says ``running`` while no process holds the
workdir lock (``erclap.workdir_lock``) belongs to a run that was killed before it could record its end: readers
(``erclap.results.runs``) report it as failed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator

import jax
from absl import logging

from erclap import checkpointing, fileio, signals

STATUS_NAME = "status.json"
RUNNING, FINISHED, FAILED, PREEMPTED = "running", "finished", "failed", "preempted"
STATES = (RUNNING, FINISHED, FAILED, PREEMPTED)
TRAINING_MODES = ("train", "all")  # the modes that should end at train.num_steps
UNRECORDED_MODES = ("plan",)        # compiles for another topology; says nothing about the run
MAX_ERROR_CHARS = 1000


def status_path(workdir: str) -> str:
  return os.path.join(workdir, STATUS_NAME)


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the checkpoints under ``<workdir>/checkpoints`` (sorted; set-aside or temporary ones skipped),
  from the directory listing alone (nothing is opened)."""
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  try:
    names = os.listdir(directory)
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def latest_step(workdir: str) -> int | None:
  steps = checkpoint_steps(workdir)
  return steps[-1] if steps else None


def read(workdir: str) -> dict | None:
  """The record in ``<workdir>/status.json``; None when there is none.

  Raises:
    ValueError: the file exists but holds no readable record (naming the file).
  """
  path = status_path(workdir)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable run status record ({type(e).__name__}: {e})") from e
  if not isinstance(record, dict) or record.get("state") not in STATES:
    raise ValueError(f"{path}: not a run status record (its state must be one of {STATES})")
  return record


def error_line(exc: BaseException) -> str:
  """``Type: message`` of an exception on one line (a SystemExit's message alone), at most MAX_ERROR_CHARS."""
  if isinstance(exc, SystemExit):
    text = str(exc.code)
  else:
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
  text = " ".join(text.split())
  return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


def end_state(mode: str, exc: BaseException | None, step: int | None, num_steps: int | None) -> tuple[str, str]:
  """How a run ended: (state, error line or note), from the exception that ended it (None: it returned).

  A signal (``signals.StopRequested``, also when ``erclap.main`` turned it into its exit status) is
  ``preempted``; any other exception, or a SystemExit with a message or a non-zero status, is ``failed``; a
  training mode that returned before ``num_steps`` (it checkpointed on SIGTERM and exited) is ``preempted``.
  """
  for e in (exc, getattr(exc, "__context__", None)):
    if isinstance(e, signals.StopRequested):
      return PREEMPTED, error_line(e)
  if isinstance(exc, SystemExit) and exc.code in (None, 0):
    exc = None
  if exc is not None:
    return FAILED, error_line(exc)
  if mode in TRAINING_MODES and num_steps is not None and (step or 0) < num_steps:
    return PREEMPTED, f"stopped at step {step or 0} of {num_steps}; rerun the same command to resume"
  return FINISHED, ""


def _now() -> str:
  return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(workdir: str, record: dict) -> None:
  try:
    fileio.write_json(status_path(workdir), record)
  except OSError as e:  # the record serves readers of results; it never stops the run
    logging.warning("Could not write the run status %s: %s", status_path(workdir), e)


@contextlib.contextmanager
def recorded(workdir: str, mode: str, config) -> Iterator[None]:
  """Records the block as a run of ``mode`` in ``<workdir>/status.json``: running now, then how it ended.

  Exceptions go on unchanged. Nothing is written by processes other than 0, for object-store workdirs, or for
  ``UNRECORDED_MODES``.

  Args:
    workdir: the run's directory (it exists: the workdir lock made it).
    mode: the mode of ``erclap.main``.
    config: the run's config (``train.num_steps`` tells a finished training run from a preempted one).
  """
  if mode in UNRECORDED_MODES or "://" in workdir or jax.process_index() != 0:
    yield
    return
  num_steps = int(config.train.num_steps) if mode in TRAINING_MODES else None
  record = dict(mode=mode, state=RUNNING, step=latest_step(workdir), num_steps=num_steps, error="",
                started=_now(), ended="", host=socket.gethostname(), pid=os.getpid())
  _write(workdir, record)
  exc = None
  try:
    yield
  except BaseException as e:
    exc = e
    raise
  finally:
    step = latest_step(workdir)
    state, error = end_state(mode, exc, step, num_steps)
    _write(workdir, dict(record, state=state, step=step, error=error, ended=_now()))
