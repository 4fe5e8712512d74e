"""Multi-host evaluation and export (2 processes x 4 devices equal 1 process x 8), prompt stops on SIGTERM /
SIGINT, the workdir lock in `erclap.main`, output paths checked before any work, checks before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
import train_helpers as th

from erclap import evaluate, export, fileio, signals, tower_init, validation, workdir_lock
from erclap.configs import demo

# A whole 2-process run gets this long; past it the test fails (and kills both) instead of hanging.
MULTI_PROCESS_TIMEOUT = 420
TRAIN = th.TRAINED_STEPS  # the config of the trained_workdir fixture


@pytest.fixture(scope="module")
def trained(data_dir, trained_workdir, tmp_path_factory):
  """A workdir with the suite's trained checkpoint (step 60), its 1-process export (export_single/) and eval JSON
  (eval_single/).

  The 1-process reference runs the modes in this test process (1 process x 8 devices, the tiny config the
  2-process runs get as flags): no interpreter start, JAX import and corpus load for each mode."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  shutil.copytree(os.path.join(trained_workdir, "checkpoints"), os.path.join(workdir, "checkpoints"))
  config = th.tiny_config(data_dir, **TRAIN)
  export.export_embeddings(th.resolved(config, workdir, "export"), workdir)
  evaluate.evaluate_checkpoint(th.resolved(config, workdir, "eval"), workdir)
  os.rename(os.path.join(workdir, "export"), os.path.join(workdir, "export_single"))
  os.rename(os.path.join(workdir, "eval"), os.path.join(workdir, "eval_single"))
  return workdir


def _metrics(path):
  with open(path) as f:
    return json.load(f)["metrics"]


def _assert_metrics_close(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for key in a:
    # Embeddings agree to ~1e-6; a metric built on ranks or a fitted probe may move slightly more.
    np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-3, err_msg=key)


@pytest.mark.slow
def test_two_process_export_equals_one_process_export(data_dir, trained):
  th.run_two_processes(trained, data_dir, "export", timeout=MULTI_PROCESS_TIMEOUT, **TRAIN)
  single, multi = os.path.join(trained, "export_single"), os.path.join(trained, "export")
  assert sorted(os.listdir(single)) == sorted(os.listdir(multi))
  for name in ("test_speech.npy", "test_text.npy"):
    a, b = np.load(os.path.join(single, name)), np.load(os.path.join(multi, name))
    assert a.shape == b.shape and a.shape[0] == th.TINY_CORPUS["num_test"]
    np.testing.assert_allclose(a, b, atol=1e-5)
  table_a, table_b = pq.read_table(os.path.join(single, "test.parquet")), pq.read_table(
      os.path.join(multi, "test.parquet"))
  for column in ("id", "split", "description", "arousal", "valence", "dominance"):
    assert table_a[column].to_pylist() == table_b[column].to_pylist(), column
  np.testing.assert_allclose(np.stack(table_a["speech_embedding"].to_numpy(zero_copy_only=False)),
                             np.stack(table_b["speech_embedding"].to_numpy(zero_copy_only=False)), atol=1e-5)
  _assert_metrics_close(_metrics(os.path.join(single, "test_metrics.json")),
                        _metrics(os.path.join(multi, "test_metrics.json")))


@pytest.mark.slow
def test_two_process_eval_equals_one_process_eval(data_dir, trained):
  th.run_two_processes(trained, data_dir, "eval", timeout=MULTI_PROCESS_TIMEOUT, **TRAIN)
  step = TRAIN["train.num_steps"]
  _assert_metrics_close(_metrics(os.path.join(trained, "eval_single", f"test_{step}.json")),
                        _metrics(os.path.join(trained, "eval", f"test_{step}.json")))


@pytest.mark.slow
def test_signal_stops_export_promptly_without_partial_files(data_dir, trained, tmp_path):
  # SIGINT takes the same handler (test_watchdog_ends_a_process_that_does_not_exit runs both).
  signum = signal.SIGTERM
  workdir = str(tmp_path / "run")
  shutil.copytree(os.path.join(trained, "checkpoints"), os.path.join(workdir, "checkpoints"))
  proc = subprocess.Popen(th.main_command(workdir, data_dir, "export", **TRAIN), cwd=th.ROOT,
                          env=th.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("[export] test: embedding"):
      break
  else:
    pytest.fail(f"no progress line; stderr: {proc.stderr.read()[-3000:]}")
  proc.send_signal(signum)
  sent = time.time()
  try:
    _, err = proc.communicate(timeout=30)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail(f"export still running 30 s after {signum.name}")
  elapsed = time.time() - sent
  assert elapsed < signals.SIGNAL_GRACE_SECONDS + 5, elapsed
  assert proc.returncode == 128 + signum, err[-3000:]
  assert f"stopped by {signum.name}" in err
  out_dir = os.path.join(workdir, "export")
  left = os.listdir(out_dir) if os.path.isdir(out_dir) else []
  assert not [n for n in left if fileio.is_temp_name(n)], left
  assert "test_metrics.json" not in left, left  # the split's export did not complete: nothing marks it so
  assert not os.path.exists(workdir_lock.lock_path(workdir))  # released on the way out


STUCK_AT_EXIT = textwrap.dedent("""
    import threading, time
    from erclap import signals
    with signals.stop_on_signals("demo"):
      # A thread that never ends keeps the interpreter from exiting after the main thread has unwound.
      threading.Thread(target=lambda: time.sleep(1000)).start()
      print("ready", flush=True)
      time.sleep(1000)
""")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_watchdog_ends_a_process_that_does_not_exit(signum):
  proc = subprocess.Popen([sys.executable, "-c", STUCK_AT_EXIT], cwd=th.ROOT, env=th.subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "ready"
  proc.send_signal(signum)
  sent = time.time()
  try:
    _, err = proc.communicate(timeout=30)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail(f"still running 30 s after {signum.name}")
  assert signals.SIGNAL_GRACE_SECONDS - 1 < time.time() - sent < signals.SIGNAL_GRACE_SECONDS + 5
  assert proc.returncode == 128 + signum
  assert f"stopped by {signum.name} (still running" in err


def test_stop_on_signals_restores_handlers_when_the_block_ends():
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with signals.stop_on_signals("demo"):
    assert signal.getsignal(signal.SIGTERM) not in before
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
  assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd was given back


def test_export_refuses_a_directory_in_the_way_before_any_work(tmp_path):
  empty_data_dir = tmp_path / "tfds"
  empty_data_dir.mkdir()
  workdir = tmp_path / "run"
  (workdir / "export" / "test_speech.npy").mkdir(parents=True)
  (workdir / "export" / "test_metrics.json").mkdir()
  config = th.tiny_config(str(empty_data_dir))
  started = time.time()
  with pytest.raises(OSError, match="test_speech.npy: a directory is in the way") as raised:
    export.export_embeddings(th.resolved(config, workdir, "export"), str(workdir))
  assert "test_metrics.json" in str(raised.value)
  assert time.time() - started < 5
  assert os.listdir(empty_data_dir) == []  # no corpus built, no model run
  assert sorted(os.listdir(workdir / "export")) == ["test_metrics.json", "test_speech.npy"]


def test_export_refuses_a_file_where_its_directory_goes(tmp_path):
  (tmp_path / "export").write_text("not a directory")
  problems = export.output_problems(str(tmp_path / "export"), [str(tmp_path / "export" / "test.parquet")])
  assert len(problems) == 1 and "export: exists and is not a directory" in problems[0]
  assert export.output_problems(str(tmp_path / "fresh"), [str(tmp_path / "fresh" / "test.parquet")]) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "export"])
def test_locked_workdir_is_refused_before_it_is_touched(tmp_path, mode):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = workdir_lock.LockHolder(host=socket.gethostname(), pid=os.getpid(), since="2024-01-01T00:00:00Z",
                                   command="python -m erclap.main --mode=train", token="t")
  with open(workdir_lock.lock_path(str(workdir)), "w") as f:
    json.dump(holder.__dict__, f)
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  result = th.run_main(str(workdir), str(data_dir), mode, timeout=300)
  assert result.returncode != 0
  assert f"pid {os.getpid()}" in result.stderr and "in use by another run" in result.stderr
  assert "Traceback" not in result.stderr
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]
  assert os.listdir(data_dir) == []


@pytest.mark.parametrize("processes", [1, 2, 4, 8])
def test_demo_config_fits_8_devices(processes):
  validation.validate(demo.get_config(), validation.Devices(8, processes, 8 // processes))


@pytest.mark.slow
def test_config_that_does_not_fit_the_devices_is_refused_before_any_work(tmp_path):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  workdir = tmp_path / "run"
  result = th.run_main(str(workdir), str(data_dir), "train", timeout=300, **{"eval.batch_size": 12})
  assert result.returncode != 0
  assert "config.eval.batch_size=12 must be a multiple of 8" in result.stderr
  assert "Traceback" not in result.stderr
  assert os.listdir(data_dir) == []  # no corpus built
  assert not os.path.exists(workdir / "checkpoints")
  assert not os.path.exists(workdir_lock.lock_path(str(workdir)))  # released


@pytest.mark.slow
def test_error_after_the_last_step_leaves_complete_checkpoints(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  # A split the corpus does not have is found when the final evaluation first reads it (the built corpus knows its
  # splits): an error raised in the loop while the save of the step before is in flight.
  result = th.run_main(workdir, data_dir, **{"train.num_steps": 3, "checkpoint.every_steps": 1,
                                             "checkpoint.async_save": True, "eval.every_steps": 1000,
                                             "data.eval_split": "no_such_split"})
  assert result.returncode != 0
  assert "no_such_split" in result.stderr and "cannot schedule new futures" not in result.stderr
  step, params = tower_init.read_workdir_params(workdir)
  assert step == 2  # the save of step 2 was in flight when the final evaluation raised; it completed
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert sorted(n for n in names if n.isdigit()) == ["1", "2"], names
