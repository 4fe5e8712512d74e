"""Training runs of `python -m erclap.main` in subprocesses: exact resume after SIGKILL, SIGTERM preemption in
each stage of a two-stage run, and 2 processes x 4 devices equal to 1 process x 8 devices.

One 8-step single-process run (``reference_run``) is the reference of both the resume and the 2-process test:
each launch pays an interpreter start, the JAX import, the corpus load and the compilation."""

from __future__ import annotations

import os
import signal
import subprocess

import jax
import numpy as np
import pytest
import train_helpers as th

from erclap import run_status, tower_init, train

pytestmark = pytest.mark.slow

# The reference run: 8 steps, a checkpoint at 4 and 8 (the resume test kills a run of the same config after its
# step-4 checkpoint).
REFERENCE = {"train.num_steps": 8, "checkpoint.every_steps": 4}


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
  """(workdir, stdout) of the tiny config run to step 8 in one process with 8 devices."""
  workdir = str(tmp_path_factory.mktemp("reference") / "full")
  result = th.run_main(workdir, data_dir, **REFERENCE)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def _final_params(workdir):
  return tower_init.read_workdir_params(workdir)


def test_exact_resume_after_sigkill(data_dir, reference_run, tmp_path, capsys):
  overrides = REFERENCE
  full_workdir, _ = reference_run
  workdir = str(tmp_path / "killed")
  killed_at = th.kill_at_checkpoint(workdir, data_dir, 4, **overrides)
  assert killed_at < REFERENCE["train.num_steps"], "the run finished before it could be killed"
  capsys.readouterr()
  # Resumed in this process (the SIGTERM test resumes by the command line).
  train.train_and_evaluate(th.resolved(th.tiny_config(data_dir, **overrides), workdir), workdir)
  out = capsys.readouterr().out
  assert f"[train] step {killed_at + 1}/" in out and "[train] step 1/" not in out, out[-3000:]

  step_a, params_a = _final_params(full_workdir)
  step_b, params_b = _final_params(workdir)
  assert step_a == step_b == REFERENCE["train.num_steps"]
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_array_equal(a, b)  # bit-identical


def test_two_processes_match_one_process(data_dir, reference_run, tmp_path):
  # The reference's checkpoints do not change its losses: the 2-process run leaves them out.
  _, single_stdout = reference_run
  outs = th.run_two_processes(str(tmp_path / "multi"), data_dir, **{**REFERENCE, "checkpoint.every_steps": 1000})
  curve_single = th.loss_curve(single_stdout)
  curve_multi = th.loss_curve(outs[0][0])
  steps = list(range(1, REFERENCE["train.num_steps"] + 1))
  assert sorted(curve_single) == sorted(curve_multi) == steps
  np.testing.assert_allclose([curve_multi[s] for s in steps], [curve_single[s] for s in steps], rtol=1e-4)


# A two-stage run of the tiny config. Stage 1 (ser_pretrain:demo's own training settings: a progress line every 25
# steps) prints "step 25/30", the cross-modal stage "step k/10": the signal is sent in the stage named.
TWO_STAGES = {"recipe.stage1": "ser_pretrain:demo", "recipe.stage1_steps": 30, "train.num_steps": 10,
              "train.global_batch_size": 32, "eval.every_steps": 1000}


def _sigterm_at(command, line_start: str) -> tuple[int, str]:
  """Runs ``command``, sends SIGTERM once a line starts with ``line_start``; (exit status, all output)."""
  proc = subprocess.Popen(command, cwd=th.ROOT, env=th.subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(line_start):
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=300)
  return proc.returncode, "".join(lines) + rest


def test_sigterm_stops_a_two_stage_run_in_every_stage_and_the_same_command_resumes(data_dir, tmp_path):
  """--mode=all of a two-stage run: SIGTERM in stage 1 checkpoints it and stops the run (no cache, no cross-modal
  stage, no export); SIGTERM in the cross-modal stage stops it before the export and its table; each time the
  status is 143 and status.json says preempted, and the same command resumes and finishes."""
  workdir = str(tmp_path / "run")
  stage1 = os.path.join(workdir, "stage1")
  command = th.main_command(workdir, data_dir, "all", **TWO_STAGES)

  status, output = _sigterm_at(command, "[train] step 25/30")
  assert status == 128 + signal.SIGTERM, output[-3000:]
  first_step, _ = tower_init.read_workdir_params(stage1)
  assert 25 <= first_step <= 26 and "stage 1 (the speech emotion model) preempted" in output, output[-3000:]
  for later in ("speech_features", "checkpoints", "export"):  # nothing after stage 1 ran on its half-trained state
    assert not os.path.exists(os.path.join(workdir, later)), later
  assert run_status.read(workdir)["state"] == "preempted"

  status, output = _sigterm_at(command, "[train] step 3/10")
  assert status == 128 + signal.SIGTERM, output[-3000:]
  assert f"Resumed from {stage1}/checkpoints at step {first_step}" in output
  assert tower_init.read_workdir_params(stage1)[0] == 30
  step, params = tower_init.read_workdir_params(workdir)
  # Honoured after the step in flight when the signal came (step 4 at most), not a step later; the checkpoint is
  # complete (restored through the same reader as a resume, whose exactness test_exact_resume_after_sigkill checks).
  assert 3 <= step <= 4 and f"checkpoint at step {step} saved" in output, output[-3000:]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  assert "the cross-modal stage preempted" in output
  assert not os.path.exists(os.path.join(workdir, "export")) and "aoc" not in output  # no export, no table
  assert run_status.read(workdir)["state"] == "preempted"

  finished = th.run_main(workdir, data_dir, "all", **TWO_STAGES)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints" in finished.stderr
  assert "[cache_speech] train: already cached, skipped" in finished.stdout  # the same stage 1, the same cache
  assert sorted(int(s) for s in os.listdir(os.path.join(stage1, "checkpoints")) if s.isdigit())[-1] == 30
  assert os.path.isfile(os.path.join(workdir, "export", "test_metrics.json"))
  assert run_status.read(workdir)["state"] == "finished"
