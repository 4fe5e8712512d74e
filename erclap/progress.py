"""Progress output: the one way ERCLAP writes a line for people to read, and the one formatting of an ETA.

``print_line`` writes each line with its newline in one write, under a lock, and flushes. ``print()`` writes the
text and the newline in two writes, and absl's log lines come from other threads too (clu's asynchronous
summary writer logs every scalar write), so a log line could land between them:
``ETA 0:00:09I1207 07:20:47.05 ... logging_writer.py:48]``. One write per line keeps every progress line and
every log line whole, also when stdout and stderr go to one terminal or file.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import TextIO

_LOCK = threading.Lock()
# A writer stuck on a full pipe must not keep a last message (a signal's, from a watchdog thread) from going out.
_LOCK_TIMEOUT_SECONDS = 5.0


def print_line(text: str, file: TextIO | None = None) -> None:
  """Writes ``text`` and a newline, each of its lines in a single write, then flushes.

  Args:
    text: one line or several (split at newlines; each written whole).
    file: the stream (default: ``sys.stdout``, looked up at call time).
  """
  stream = sys.stdout if file is None else file
  locked = _LOCK.acquire(timeout=_LOCK_TIMEOUT_SECONDS)
  try:
    for line in str(text).split("\n"):
      stream.write(line + "\n")  # one write: nothing can come between a line and its newline
      stream.flush()
  finally:
    if locked:
      _LOCK.release()


def format_eta(seconds: float) -> str:
  """``H:MM:SS`` of a non-negative duration (negative counts as 0); ``?`` when it is not finite."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
