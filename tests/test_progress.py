"""Progress lines: each one reaches the stream whole, never sharing a line with a log line from another thread."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from erclap import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Recorder:
  """A text stream that keeps every write call separately."""

  def __init__(self):
    self.writes, self.flushes = [], 0

  def write(self, text):
    self.writes.append(text)

  def flush(self):
    self.flushes += 1


def test_each_line_is_one_write_with_its_newline():
  stream = _Recorder()
  progress.print_line("[train] step 5/20  loss 2.5  ETA 0:00:09", file=stream)
  progress.print_line("table\n  aoc  0.5\n", file=stream)
  assert stream.writes == ["[train] step 5/20  loss 2.5  ETA 0:00:09\n", "table\n", "  aoc  0.5\n", "\n"]
  assert stream.flushes == len(stream.writes)


def test_progress_lines_and_absl_log_lines_from_another_thread_never_share_a_line():
  # Like a training run: clu's asynchronous writer logs through absl from its own thread while the loop prints
  # its progress, both into one pipe (stdout and stderr merged, unbuffered as under the tests' launcher).
  script = textwrap.dedent("""
      import threading
      from absl import logging
      from erclap import progress

      logging.set_verbosity(logging.INFO)
      stop = threading.Event()

      def log():
        i = 0
        while not stop.is_set():
          logging.info("logging_writer line %d", i)
          i += 1

      thread = threading.Thread(target=log)
      thread.start()
      for step in range(3000):
        progress.print_line(f"[train] step {step}/3000  ETA 0:00:{step % 60:02d}")
      stop.set()
      thread.join()
      """)
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True, timeout=120, check=True).stdout
  lines = out.splitlines()
  progress_lines = [line for line in lines if "[train]" in line]
  log_lines = [line for line in lines if "logging_writer line" in line]
  assert len(progress_lines) == 3000 and log_lines  # both wrote while the other did
  assert all(re.fullmatch(r"\[train\] step \d+/3000  ETA 0:00:\d\d", line) for line in progress_lines)
  assert all(re.fullmatch(r"\S*logging_writer line \d+", line) for line in log_lines), \
      [line for line in log_lines if "[train]" in line][:3]


def test_format_eta():
  assert progress.format_eta(3725.9) == "1:02:05"
  assert progress.format_eta(-3) == "0:00:00"
  assert progress.format_eta(float("inf")) == "?"
