"""One run per workdir: a lock file that process 0 holds for the life of a run.

``<workdir>/.erclap.lock`` (JSON: host, pid, start time, command line) is created with ``O_EXCL``, so of two
runs started on one workdir exactly one gets it; the other stops with a message naming the holder. A lock
left by a run that died on this host (its pid is gone) is taken over with a message; one from another host
cannot be checked and is refused, with the command that removes it. Multi-host: process 0 decides and
broadcasts the verdict, so every process stops or goes on together. Workdirs on object stores
(``gs://...``) have no atomic exclusive create, so no lock is taken there (a warning says so).

Usage::

  with workdir_lock.WorkdirLock(workdir):
    run(config, workdir)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import socket
import sys
import uuid

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from erclap import progress

LOCK_NAME = ".erclap.lock"


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir (or its lock file cannot be read)."""


@dataclasses.dataclass(frozen=True)
class LockHolder:
  """Who holds a workdir: what the lock file says."""
  host: str
  pid: int
  since: str
  command: str
  token: str = ""  # tells this run's lock from a later one, so release never removes another run's lock

  def describe(self) -> str:
    return f"host {self.host}, pid {self.pid}, since {self.since}, command: {self.command}"


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def read_holder(path: str) -> LockHolder | None:
  """The holder recorded in the lock file ``path``; None if there is no such file.

  Raises:
    ValueError: the file exists but does not hold a readable record.
  """
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
    return LockHolder(host=str(record["host"]), pid=int(record["pid"]), since=str(record["since"]),
                      command=str(record["command"]), token=str(record.get("token", "")))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"lock file {path} holds no readable record ({type(e).__name__}: {e}): {text[:200]!r}") from e


def _this_run() -> LockHolder:
  return LockHolder(host=socket.gethostname(), pid=os.getpid(),
                    since=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    command=shlex.join(sys.argv), token=uuid.uuid4().hex)


def _pid_alive(pid: int) -> bool:
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)  # signal 0: an existence check that delivers nothing
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def holder_alive(holder: LockHolder) -> bool | None:
  """Whether the run holding a lock is still running: True / False on this host, None from another (unknown)."""
  if holder.host != socket.gethostname():
    return None
  return _pid_alive(holder.pid)


def _create(path: str, holder: LockHolder) -> bool:
  """Creates the lock file holding ``holder``; False if it exists (O_EXCL makes this atomic)."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(dataclasses.asdict(holder), f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  return True


def _refusal(workdir: str, path: str, holder: LockHolder | None, reason: str = "") -> str:
  who = f"({holder.describe()})" if holder else f"(the lock file cannot be read: {reason})"
  return (f"Workdir {workdir} is in use by another run {who}. Wait for that run to end or pick another "
          f"--workdir. If it is no longer running (e.g. its machine went down, so its pid cannot be checked "
          f"from here), remove the stale lock and rerun: rm {shlex.quote(path)}")


def _acquire_local(workdir: str, path: str, me: LockHolder) -> str | None:
  """Process 0's attempt; returns None when the lock is ours, else the refusal message."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  stale = None
  for _ in range(3):  # a lock released or taken over between our steps just means: try again
    if _create(path, me):
      if stale is not None:
        message = (f"Took over the stale lock {path}: the run that held it ({stale.describe()}) is no "
                   f"longer running on this host.")
        logging.warning(message)
        progress.print_line(f"[workdir] {message}")
      return None
    try:
      holder = read_holder(path)
    except ValueError as e:
      return _refusal(workdir, path, None, str(e))
    if holder is None:
      continue
    if holder.host != me.host or _pid_alive(holder.pid):
      return _refusal(workdir, path, holder)
    # Stale: move it aside first, so that of several runs seeing it only one takes it over.
    aside = f"{path}.stale-{me.token}"
    try:
      os.rename(path, aside)
    except FileNotFoundError:
      continue
    with contextlib.suppress(ValueError):
      if (read_holder(aside) or holder).token != holder.token:  # a fresh lock replaced it meanwhile
        with contextlib.suppress(FileExistsError):
          os.link(aside, path)
        os.remove(aside)
        continue
    os.remove(aside)
    stale = holder
  return _refusal(workdir, path, _quiet_holder(path), "it keeps changing")


def _quiet_holder(path: str) -> LockHolder | None:
  try:
    return read_holder(path)
  except ValueError:
    return None


class WorkdirLock:
  """Holds ``<workdir>/.erclap.lock`` for the duration of a ``with`` block (see the module docstring).

  A signal that should release it must unwind the block: ``erclap.signals.stop_on_signals`` around it does
  that (``erclap.main``), and its watchdog calls ``release`` before a hard exit.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = None if "://" in workdir else lock_path(workdir)
    self._me: LockHolder | None = None

  @property
  def held(self) -> bool:
    return self._me is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock (process 0), or raises ``WorkdirLockedError`` on every process.

    Returns:
      self.
    """
    if self.path is None:
      logging.warning("Workdir %s is not a local path: no workdir lock is taken; make sure only one run "
                      "uses it at a time.", self.workdir)
      return self
    if self.held:
      raise WorkdirLockedError(f"{self.path} is already held by this run")
    refusal = None
    if jax.process_index() == 0:
      me = _this_run()
      refusal = _acquire_local(self.workdir, self.path, me)
      if refusal is None:
        self._me = me
    refused = refusal is not None
    if jax.process_count() > 1:  # one verdict for all processes, so they stop or go on together
      refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
    if refused:
      raise WorkdirLockedError(refusal or f"Workdir {self.workdir} is in use by another run "
                                          f"(see process 0's log for the holder).")
    return self

  def release(self) -> None:
    """Removes the lock file if it is still this run's (never another run's that took it over)."""
    if self._me is None:
      return
    me, self._me = self._me, None
    try:
      holder = read_holder(self.path)
    except ValueError:
      holder = None
    if holder is not None and holder.token == me.token:
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    else:
      logging.warning("Workdir lock %s no longer belongs to this run (now: %s); left in place.", self.path,
                      holder.describe() if holder else "absent or unreadable")

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
