"""Signals: how a run ends when asked to (SIGTERM from a scheduler or a TPU preemption, SIGINT from a user).

* ``stop_on_signals``: for the whole of a run (``erclap.main`` wraps every mode in it): the first SIGTERM /
  SIGINT raises ``StopRequested`` in the main thread, so ``finally`` blocks run and atomic outputs stay complete
  or absent; a watchdog ends the process if the main thread is stuck in native code, and a second signal ends it
  at once.
* ``Preemption``: inside the training loop, SIGTERM only sets a flag that the loop polls between steps, so that
  it writes a checkpoint first (``erclap.train``); the loop then raises ``Preempted``, which stops the whole run
  (no next stage of a recipe, no export) like any ``StopRequested``. It takes SIGTERM over from
  ``stop_on_signals`` while the loop runs and gives it back after.

A run stopped either way exits with ``exit_status``: 128 + the signal (143 for SIGTERM, 130 for SIGINT), the status
of a process ended by that signal, which schedulers (SLURM, Kubernetes, a shell's ``$?``) report as such; its
``status.json`` says ``preempted`` (``erclap.run_status``). Rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from erclap import progress


class StopRequested(BaseException):
  """SIGTERM or SIGINT asked a run to stop (raised in the main thread, so ``finally`` blocks run).

  A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

  def __init__(self, what: str, signum: int):
    super().__init__(f"{what} stopped by {signal.Signals(signum).name}; only complete outputs are kept")
    self.signum = signum


class Preempted(StopRequested):
  """The training loop wrote a checkpoint on SIGTERM (or on the checkpoint manager's preemption notice) and
  stopped: the run stops there, whatever would have come next (a recipe's next stage, an export)."""

  def __init__(self, what: str, step: int, directory: str):
    BaseException.__init__(self, f"{what} preempted: checkpoint at step {step} saved in {directory}; the run stops "
                                 f"here (rerun the same command to resume)")
    self.signum = signal.SIGTERM
    self.step = step


def exit_status(error: StopRequested) -> int:
  """The exit status of a run that ``error`` stopped: 128 + its signal, as for a process the signal ended."""
  return 128 + int(error.signum)


# Seconds the main thread gets to unwind after SIGTERM/SIGINT before the process is ended from outside
# Python: a Python handler only runs between bytecodes, never while a compile or a collective blocks.
SIGNAL_GRACE_SECONDS = 5.0


@contextlib.contextmanager
def stop_on_signals(what: str, on_exit: Callable[[], None] | None = None,
                    grace: float = SIGNAL_GRACE_SECONDS) -> Iterator[None]:
  """SIGTERM / SIGINT end the block promptly with a clear message; for runs that write only atomic outputs.

  The first signal raises ``StopRequested`` in the main thread (outputs are written atomically, so the
  unwinding leaves complete files or none). A watchdog thread, woken through the signal wakeup fd, ends
  the process with status 128 + signal after ``grace`` seconds if the main thread is stuck in native
  code (a compile, a collective whose peer is gone); a second signal ends it at once. ``on_exit`` (e.g.
  releasing the workdir lock) runs before such a hard exit. Outside the main thread this is a no-op.

  Args:
    what: the run's name, for the message (``export``, ``eval``...).
    on_exit: called (from the watchdog thread) before a hard exit.
    grace: seconds between the first signal and the hard exit.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []

  def handler(signum, frame):
    del frame
    received.append(signum)
    raise StopRequested(what, signum)

  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  watchdog = threading.Thread(target=_watchdog, args=(read_fd, handler, received, what, on_exit, grace), daemon=True,
                              name="erclap-signal-watchdog")
  watchdog.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    for s, h in previous.items():
      signal.signal(s, h)
    if not received:  # after a signal the watchdog stays armed until the process has exited
      os.close(write_fd)  # wakes the watchdog with end-of-file


def _watchdog(read_fd: int, handler, received: list, what: str, on_exit, grace: float) -> None:
  """Waits for signal numbers on the wakeup fd; after one of ours, ends the process if it outlives ``grace``."""
  deadline, first = None, None
  while True:
    if deadline is not None and not _readable(read_fd, max(deadline - time.monotonic(), 0.0)):
      _hard_exit(what, first, on_exit, f"still running {grace:.0f} s after it")
    raw = os.read(read_fd, 64)
    if not raw:  # the block ended normally
      os.close(read_fd)
      return
    # Ours: our handler is installed (it may not have run yet) or has already run (and been uninstalled).
    ours = [n for n in raw if n in (signal.SIGTERM, signal.SIGINT) and (received or signal.getsignal(n) is handler)]
    if not ours:
      continue
    if deadline is not None:
      _hard_exit(what, ours[-1], on_exit, "a second signal")
    deadline, first = time.monotonic() + grace, ours[0]


def _readable(fd: int, timeout: float) -> bool:
  return bool(select.select([fd], [], [], timeout)[0])


def _hard_exit(what: str, signum: int, on_exit, why: str) -> None:
  progress.print_line(f"[{what}] stopped by {signal.Signals(signum).name} ({why}); only complete outputs are kept.",
                      file=sys.stderr)
  if on_exit is not None:
    with contextlib.suppress(Exception):
      on_exit()
  os._exit(128 + signum)


class Preemption:
  """SIGTERM (e.g. TPU preemption) sets ``requested``, which the training loop polls between steps.

  A context manager: installs its handler in the main thread (elsewhere it only holds the flag) and restores
  the previous handler on exit."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self) -> Preemption:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
