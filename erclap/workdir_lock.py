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

Other output directories that one run at a time must own use the same lock, named for what they are
(``WorkdirLock(out, what="Output directory", flag="--out")``: ``python -m erclap.embed``).
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


class WorkdirUnwritableError(WorkdirLockedError):
  """The workdir's lock file cannot be created: a read-only directory, or a file where the directory goes."""


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


class _CannotCreate(Exception):
  """The lock file cannot be created (its cause: the OSError)."""


def _create(path: str, holder: LockHolder) -> bool:
  """Creates the lock file holding ``holder``; False if it exists (O_EXCL makes this atomic).

  Raises:
    _CannotCreate: it cannot be created (a read-only directory or file system).
  """
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  except OSError as e:
    raise _CannotCreate() from e
  with os.fdopen(fd, "w") as f:
    json.dump(dataclasses.asdict(holder), f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  return True


@dataclasses.dataclass(frozen=True)
class _Names:
  """How messages name the directory and the flag that picks it."""
  what: str = "Workdir"
  flag: str = "--workdir"


def _refusal(workdir: str, path: str, holder: LockHolder | None, reason: str = "", names: _Names = _Names()) -> str:
  who = f"({holder.describe()})" if holder else f"(the lock file cannot be read: {reason})"
  return (f"{names.what} {workdir} is in use by another run {who}. Wait for that run to end or pick another "
          f"{names.flag}. If it is no longer running (e.g. its machine went down, so its pid cannot be checked "
          f"from here), remove the stale lock and rerun: rm {shlex.quote(path)}")


def _unwritable(workdir: str, path: str, error: OSError, names: _Names) -> str:
  """The refusal of a directory where the lock file cannot be created."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    return (f"{names.what} {workdir} is a file, not a directory: move it away or pick another {names.flag}; "
            f"nothing was written")
  why = error.strerror or type(error).__name__
  return (f"{names.what} {workdir} is not writable: its lock file {path} cannot be created ({why}). Make the "
          f"directory writable (e.g. chmod u+w {shlex.quote(workdir)}) or pick another {names.flag}; nothing was "
          f"written")


def _acquire_local(workdir: str, path: str, me: LockHolder, names: _Names = _Names()) -> tuple[str | None, bool]:
  """Process 0's attempt; returns (None, False) when the lock is ours, else (the refusal message, whether the
  lock file cannot be created there at all)."""
  try:
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:  # a read-only parent, a file in the directory's place
      raise _CannotCreate() from e
    return _take(workdir, path, me, names), False
  except _CannotCreate as e:
    return _unwritable(workdir, path, e.__cause__, names), True


def _take(workdir: str, path: str, me: LockHolder, names: _Names) -> str | None:
  """Creates the lock file, or takes over a stale one; None when the lock is ours, else the refusal message."""
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
      return _refusal(workdir, path, None, str(e), names)
    if holder is None:
      continue
    if holder.host != me.host or _pid_alive(holder.pid):
      return _refusal(workdir, path, holder, names=names)
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
  return _refusal(workdir, path, _quiet_holder(path), "it keeps changing", names)


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

  def __init__(self, workdir: str, *, what: str = "Workdir", flag: str = "--workdir"):
    """``what`` / ``flag``: how messages name the directory and the flag that picks it."""
    self.workdir = workdir
    self.path = None if "://" in workdir else lock_path(workdir)
    self._names = _Names(what, flag)
    self._me: LockHolder | None = None

  @property
  def held(self) -> bool:
    return self._me is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock (process 0), or raises ``WorkdirLockedError`` on every process.

    Returns:
      self.

    Raises:
      WorkdirLockedError: another run holds it; ``WorkdirUnwritableError`` (a subclass): the lock file cannot
        be created there (a read-only directory, a file in its place).
    """
    if self.path is None:
      logging.warning("%s %s is not a local path: no %s lock is taken; make sure only one run uses it at a time.",
                      self._names.what, self.workdir, self._names.what.lower())
      return self
    if self.held:
      raise WorkdirLockedError(f"{self.path} is already held by this run")
    refusal, unwritable = None, False
    if jax.process_index() == 0:
      me = _this_run()
      refusal, unwritable = _acquire_local(self.workdir, self.path, me, self._names)
      if refusal is None:
        self._me = me
    verdict = 0 if refusal is None else 2 if unwritable else 1
    if jax.process_count() > 1:  # one verdict for all processes, so they stop or go on together
      verdict = int(multihost_utils.broadcast_one_to_all(np.int32(verdict)))
    if verdict:
      error = WorkdirUnwritableError if verdict == 2 else WorkdirLockedError
      raise error(refusal or f"{self._names.what} {self.workdir} is in use by another run or not writable "
                             f"(see process 0's log).")
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
