"""Progress lines: the one formatting of an estimated time to completion."""

from __future__ import annotations

import math


def format_eta(seconds: float) -> str:
  """``H:MM:SS`` of a non-negative duration (negative counts as 0); ``?`` when it is not finite."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
