"""The real viewers of ERCLAP's results, for the tests that read through them: the ``tensorboard`` program on an
ephemeral port (its HTTP data API), and Debian's Chromium driven by Playwright.

Chromium is the system one (``/usr/bin/chromium``, or ``$ERCLAP_CHROMIUM``), never a downloaded build: ``.ci/run``
installs it when missing. Where it is absent, ``chromium_or_skip`` skips with a reason that ``pytest -ra`` shows,
and ``make test`` says so too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import train_helpers as th

CHROMIUM_ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader"]


def chromium_path() -> str | None:
  candidates = [os.environ.get("ERCLAP_CHROMIUM", ""), "/usr/bin/chromium", shutil.which("chromium") or ""]
  return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def chromium_or_skip() -> str:
  path = chromium_path()
  if path is None:
    pytest.skip("no Chromium (/usr/bin/chromium or $ERCLAP_CHROMIUM): the report.html browser test did NOT run; "
                "install it with `apt-get install chromium`")
  return path


@contextlib.contextmanager
def tensorboard(logdir: str, timeout: float = 90.0) -> Iterator[str]:
  """``tensorboard --logdir LOGDIR`` on a free local port; yields its base URL once it answers, stops it after."""
  port = th.free_port()
  program = os.path.join(os.path.dirname(sys.executable), "tensorboard")  # the environment's own program
  program = [program] if os.access(program, os.X_OK) else [sys.executable, "-m", "tensorboard.main"]
  cmd = [*program, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=th.subprocess_env())
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + timeout
    while True:
      if proc.poll() is not None:
        pytest.fail(f"tensorboard exited with status {proc.returncode}: {proc.stdout.read()[-3000:]}")
      try:
        with urllib.request.urlopen(f"{url}/data/plugins_listing", timeout=5):
          break
      except (urllib.error.URLError, ConnectionError, TimeoutError):
        if time.time() > deadline:
          pytest.fail(f"tensorboard did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.5)
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def get(url: str) -> bytes:
  with urllib.request.urlopen(url, timeout=30) as response:
    return response.read()


def post_json(url: str, payload: dict) -> dict:
  request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.loads(response.read())


def poll(fetch, ready, timeout: float = 60.0, what: str = "data"):
  """``fetch()`` until ``ready(result)``: TensorBoard loads event files in the background after it starts."""
  deadline = time.time() + timeout
  while True:
    result = fetch()
    if ready(result):
      return result
    if time.time() > deadline:
      pytest.fail(f"tensorboard did not serve the expected {what} within {timeout:.0f} s; last answer: "
                  f"{str(result)[:2000]}")
    time.sleep(1.0)
