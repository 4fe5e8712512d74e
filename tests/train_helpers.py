"""The tiny corpus and configs every data and training test uses, and runners of `python -m erclap.main`.

One tiny embedded corpus serves the whole suite: ``TINY_CORPUS`` (config.data.embedded) is built once per
test run by the ``data_dir`` fixture of tests/conftest.py; ``tiny_config`` points a tiny demo config
(``TINY_OVERRIDES``) at it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from erclap import config_lib, plan, resolve
from erclap.configs import demo
from launch import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny embedded corpus (config.data.embedded): 48/16/16 clips of 0.4–0.8 s from 8 speakers.
TINY_CORPUS = dict(num_train=48, num_validation=16, num_test=16, num_speakers=8, min_seconds=0.4,
                   max_seconds=0.8, label_noise=0.3, seed=1234)

# Overrides that make configs/demo.py tiny: the tiny corpus cropped to 0.5 s, 16-example batches.
TINY_OVERRIDES = {
    "recipe.stage1": "",  # one stage: the tests of the two-stage recipe set it themselves
    "data.max_seconds": 0.5,
    "data.max_text_tokens": 16,
    **{f"data.embedded.{key}": value for key, value in TINY_CORPUS.items()},
    "model.joint_dim": 32,
    "model.projection_hidden": (32,),
    "train.global_batch_size": 16,
    "train.num_steps": 6,
    "train.warmup_steps": 2,
    "train.log_every_steps": 1,
    "checkpoint.every_steps": 2,
    "checkpoint.keep": 5,
    "checkpoint.best_metric": "",
    "checkpoint.async_save": False,
    "eval.every_steps": 1000,
    "eval.batch_size": 16,
    "eval.retrieval_draws": 10,
    "eval.probe_train_examples": 32,
}


# The session's shared trained workdir (the ``trained_workdir`` fixture of tests/conftest.py): 60 steps (enough for
# the model to order clips by arousal), one checkpoint at step 60.
TRAINED_STEPS = {"train.num_steps": 60, "checkpoint.every_steps": 60, "train.log_every_steps": 20,
                 "train.learning_rate": 2e-3}


def tiny_overrides(data_dir: str, **overrides) -> dict:
  """TINY_OVERRIDES with the corpus in ``data_dir``, then ``overrides`` (dotted keys) on top."""
  return {**TINY_OVERRIDES, "data.data_dir": str(data_dir), **overrides}


def tiny_config(data_dir: str, **overrides):
  """configs/demo.py made tiny, reading the tiny corpus from ``data_dir`` (a locked ConfigDict)."""
  return config_lib.apply_overrides(demo.get_config(), tiny_overrides(data_dir, **overrides), "tiny_config")


def resolved(config, workdir: str, mode: str = "train"):
  """``config`` resolved for ``mode`` in ``workdir``, as ``erclap.main`` resolves it: what mode functions take."""
  return resolve.resolve(config, str(workdir), mode)


def tiny_data_config(data_dir: str, **corpus_overrides):
  """The tiny config with other corpus parameters (``num_train=4``, ``seed=8`` ...): a corpus of its own."""
  return tiny_config(data_dir, **{f"data.embedded.{key}": value for key, value in corpus_overrides.items()})


def override_flags(data_dir: str, **overrides) -> list[str]:
  """The tiny config's overrides as ``--config.KEY=VALUE`` flags of `erclap.main`."""
  return config_lib.override_flags(tiny_overrides(data_dir, **overrides))


def main_command(workdir: str, data_dir: str, mode: str = "train", **overrides) -> list[str]:
  return [sys.executable, "-m", "erclap.main", f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}",
          f"--mode={mode}", *override_flags(data_dir, **overrides)]


def sweep_in_process(*args) -> subprocess.CompletedProcess:
  """``python launch/sweep.py ARGS`` run as its ``main`` in this process, from the repository root (the same code
  without a second interpreter's start-up); output and exit status captured as a subprocess's would be. The runs
  it launches are processes of their own, with this process's environment."""
  out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
  try:
    os.chdir(ROOT)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = sweep_lib.main(list(args))
      except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 1
  finally:
    os.chdir(here)
  return subprocess.CompletedProcess(["launch/sweep.py", *args], code, out.getvalue(), err.getvalue())


def subprocess_env(num_devices: int = 8, **extra) -> dict[str, str]:
  """The environment of an `erclap.main` subprocess: this process's, with its XLA flags (tests/conftest.py) but
  ``num_devices`` simulated CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = plan.with_host_device_count(env.get("XLA_FLAGS", ""), num_devices)
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
  env.update(extra)
  return env


def run_main(workdir: str, data_dir: str, mode: str = "train", *, timeout: int = 600, env=None, **overrides):
  return subprocess.run(main_command(workdir, data_dir, mode, **overrides), cwd=ROOT,
                        env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


def kill_at_checkpoint(workdir: str, data_dir: str, step: int, **overrides) -> int:
  """Starts a training run and SIGKILLs it once its checkpoint of ``step`` exists; returns the latest step left."""
  proc = subprocess.Popen(main_command(workdir, data_dir, **overrides), cwd=ROOT, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  target = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + 300
  while not os.path.isdir(target) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


LOSS_LINE = re.compile(r"\[train\] step (\d+)/\d+\s+loss ([-\d.naninf]+)")


def loss_curve(output: str) -> dict[int, float]:
  return {int(m.group(1)): float(m.group(2)) for m in LOSS_LINE.finditer(output)}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(workdir: str, data_dir: str, mode: str = "train", *, timeout: int = 600, **overrides):
  """`erclap.main` as 2 processes x 4 CPU devices on localhost (``jax.distributed``); fails the test, killing
  both, past ``timeout`` seconds (a hang) or when either exits non-zero. Returns both (stdout, stderr)."""
  port = free_port()
  procs = []
  for pid in range(2):
    flags = {**overrides, "distributed.coordinator_address": f"127.0.0.1:{port}",
             "distributed.num_processes": 2, "distributed.process_id": pid}
    procs.append(subprocess.Popen(main_command(workdir, data_dir, mode, **flags), cwd=ROOT,
                                  env=subprocess_env(num_devices=4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  deadline = time.time() + timeout
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=max(deadline - time.time(), 1)))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [p.communicate()[1][-2000:] for p in procs]
    pytest.fail(f"--mode={mode} with 2 processes did not finish within {timeout} s (hang):\n"
                + "\n---\n".join(tails))
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  return outs
