"""The training loop, for every stage (``erclap.stages``: the cross-modal stage, stage-1 SER pre-training).

Set-up comes from ``erclap.runtime``, the state from ``erclap.state``, the jitted step from ``erclap.step``.
The loop resumes from the workdir's latest checkpoint (state and data-iterator position), logs a window of
steps at a time, evaluates and checkpoints periodically, stops on a non-finite loss, and on SIGTERM
(preemption) writes a checkpoint and raises ``signals.Preempted``, which stops the whole run.

A program with members (``erclap.members``) trains its K members in one loop: one data stream, one vmapped step
(``erclap.step``), one checkpoint of the stacked state. Each member is a run of its own in ``<workdir>/members/<k>/``:
its TensorBoard run (with its own hparams: member k's config), its evaluations (``eval/<step>.json``) and its best
checkpoint by ``checkpoint.best_metric`` (``best_checkpoint.json``; the checkpoint manager keeps every step some
member's best needs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from erclap import (
    checkpointing,
    evaluate,
    fileio,
    input_pipeline,
    members,
    optim,
    progress,
    resolve,
    runtime,
    sharding,
    signals,
    speech_source,
    stages,
    state,
    tower_init,
)
from erclap import step as step_lib
from erclap.results import hparams


class NonFiniteLossError(RuntimeError):
  """A step produced a non-finite loss or gradient; the update was skipped and the run stopped."""


@dataclasses.dataclass
class _Run:
  """What every part of the loop needs about the run (built once by ``_start``).

  ``configs``, ``dirs``, ``writers``: one per run the program trains: the run itself (its config, workdir and
  writer), or each member's (``members.member_config``, ``<workdir>/members/<k>``)."""
  config: Any
  workdir: str
  mesh: Any
  tokenizer: Any
  model: Any
  configs: list
  dirs: list[str]
  writers: list
  embedder: Any
  manager: Any
  source: Any
  train_iter: Any
  train_step: Any
  meta: dict
  is_chief: bool

  @property
  def members(self) -> int:
    """K, the members the program trains (0: one ordinary run)."""
    return members.count(self.config)


@dataclasses.dataclass
class _Clock:
  """Throughput of the current logging window and of the whole run (for the ETA)."""
  run_start_step: int
  run_start: float = dataclasses.field(default_factory=time.time)
  window_start: float = dataclasses.field(default_factory=time.time)
  window_steps: int = 0


def _start(config, workdir: str) -> tuple[_Run, state.TrainState]:
  """Set-up, a fresh (or resumed) state, and the jitted step."""
  from clu import metric_writers  # pulls in TensorFlow: heavy, and only the loop writes summaries

  mesh, tokenizer, model = runtime.setup(config)
  source = speech_source.of(config)
  is_chief = jax.process_index() == 0
  k = members.count(config)
  configs = [members.member_config(config, i) for i in range(k)] or [config]
  dirs = [members.directory(workdir, i) for i in range(k)] or [workdir]
  writers = [metric_writers.create_default_writer(d, just_logging=not is_chief, asynchronous=True) for d in dirs]
  if is_chief:
    for writer, run_config in zip(writers, configs, strict=True):
      writer.write_hparams(hparams.run_hparams(run_config))  # one type per key across runs and configs
  optimizer = optim.make_optimizer(config)
  load_towers = functools.partial(tower_init.load_pretrained_towers, config=config)
  train_state, shardings = state.create_train_state(model, config, mesh, optimizer, jax.random.key(config.seed),
                                                    load_towers=load_towers,
                                                    loaded=tower_init.loaded_parts(config))
  train_iter = input_pipeline.create_train_iterator(config, tokenizer, source=source)
  manager = checkpointing.make_manager(workdir, config.checkpoint, members=k)
  # What model.speech_init / text_init gave: a resumed checkpoint must hold the same frozen parts.
  initial = {name: train_state.params[name] for name in tower_init.loaded_parts(config, train_state.params)}
  restored = checkpointing.restore_latest(manager, state.with_shardings(train_state, shardings), data_iter=train_iter)
  if restored is not None:
    step0, train_state, _ = restored
    tower_init.check_loaded_unchanged(config, initial, train_state.params, step=step0, directory=manager.directory)
    logging.info("Resumed from %s at step %d.", manager.directory, step0)
  del initial
  # Cached features of other weights are refused before the first step (the speech path: shared by members).
  source.check(config, state.member_params(config, train_state.params, 0))
  train_step = step_lib.jit_train_step(model, config, mesh, optimizer, shardings, source)
  meta = dict(stage=config.stage, config=config.to_json_best_effort(), vocab_size=tokenizer.vocab_size)
  run = _Run(config=config, workdir=workdir, mesh=mesh, tokenizer=tokenizer, model=model, configs=configs, dirs=dirs,
             writers=writers, embedder=evaluate.Embedder(model, config, mesh, tokenizer), manager=manager,
             source=source, train_iter=train_iter, train_step=train_step, meta=meta, is_chief=is_chief)
  return run, train_state


def _step(run: _Run, train_state, step: int):
  """One train step on the next batch (with the profiler started / stopped at ``train.profile_steps``)."""
  profile = tuple(run.config.train.profile_steps) if run.is_chief else ()
  if profile and step == profile[0]:
    jax.profiler.start_trace(os.path.join(run.workdir, "profile"))
  batch = runtime.global_batch(next(run.train_iter), run.mesh, run.source)
  train_state, metrics = run.train_step(train_state, batch)
  if profile and step + 1 == profile[-1]:
    jax.profiler.stop_trace()
  return train_state, metrics


def _check_finite(run: _Run, host: list[dict], step: int) -> None:
  bad = next((m for m in host if np.min(m["finite"]) < 1), None)
  if bad is None:
    return
  run.manager.wait_until_finished()
  which = ""
  if run.members:  # per-member values: name the members that failed
    failed = [int(i) for i in np.flatnonzero(np.asarray(bad["finite"]) < 1)]
    which = f" of member(s) {failed} (config.members: {_member_labels(run, failed)})"
  loss, norm = (np.asarray(bad[key]).ravel().tolist() for key in ("loss", "grad_norm"))
  raise NonFiniteLossError(
      f"Non-finite loss or gradient{which} near step {step} (loss={_values(loss)}, grad_norm={_values(norm)}); the "
      f"update was skipped and the run stopped. Checkpoints already in {run.manager.directory} are intact (latest: "
      f"{run.manager.latest_step()}).")


def _values(values: list[float]) -> str:
  return str(float(values[0])) if len(values) == 1 else "[" + ", ".join(str(float(v)) for v in values) + "]"


def _member_labels(run: _Run, which: list[int]) -> str:
  return "; ".join(f"{k}: " + ", ".join(f"{key}={value!r}" for key, value in members.member_values(run.config,
                                                                                                     k).items())
                   for k in which)


def _log_window(run: _Run, host: list[dict], step: int, clock: _Clock) -> None:
  """Writes the window's mean metrics and throughput (per run: each member's to its own writer), prints a progress
  line, starts a new window."""
  t = run.config.train
  now = time.time()
  steps_per_sec = clock.window_steps / max(now - clock.window_start, 1e-9)
  means = {k: np.mean([np.asarray(m[k]) for m in host], axis=0) for k in host[-1] if k != "finite"}
  for i, writer in enumerate(run.writers):
    summary = {k: float(v[i] if run.members else v) for k, v in means.items()}
    summary.update(steps_per_sec=steps_per_sec, examples_per_sec=steps_per_sec * t.global_batch_size)
    writer.write_scalars(step, summary)
  loss = " ".join(f"{v:.4f}" for v in np.atleast_1d(means["loss"]))
  eta = (t.num_steps - step) / max((step - clock.run_start_step) / (now - clock.run_start), 1e-9)
  progress.print_line(f"[train] step {step}/{t.num_steps}  loss {loss}  {steps_per_sec:.2f} steps/s  "
                      f"{steps_per_sec * t.global_batch_size:.0f} ex/s  ETA {progress.format_eta(eta)}")
  clock.window_start, clock.window_steps = time.time(), 0


def _evaluate(run: _Run, params, step: int) -> list[dict[str, float]]:
  """Evaluates every run of the program (the run, or each member with its own config and parameters) on
  ``data.eval_split``: summaries, ``<run dir>/eval/<step>.json`` and a progress line each. Returns their metrics."""
  out = []
  for i, (config, run_dir, writer) in enumerate(zip(run.configs, run.dirs, run.writers, strict=True)):
    run_params = state.member_params(run.config, params, i)
    result, _ = evaluate.split_metrics(run.embedder, run_params, config, config.data.eval_split)
    result = {k: float(v) for k, v in result.items()}
    writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()})
    if run.is_chief:
      os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
      fileio.write_json(os.path.join(run_dir, "eval", f"{step}.json"),
                        dict(step=step, split=config.data.eval_split, metrics=result))
    headline = stages.of(config).headline_metrics
    who = f" member {i}" if run.members else ""
    progress.print_line(f"[eval] step {step}{who}: " + "  ".join(f"{k} {result[k]:.4f}" for k in headline
                                                                   if k in result))
    out.append(result)
  return out


def _save(run: _Run, step: int, train_state, eval_metrics: list[dict[str, float]] | None) -> None:
  """Checkpoints state, data position and metadata (with the metrics when a best checkpoint is kept: each member's
  under its own name, ``checkpointing.member_metric``, and its best step recorded in its directory)."""
  best = run.config.checkpoint.best_metric
  if best and eval_metrics is not None and any(best not in m for m in eval_metrics):
    raise KeyError(f"config.checkpoint.best_metric={best!r} is not among the evaluation metrics "
                   f"{sorted(eval_metrics[0])}")
  metrics = None
  if best and eval_metrics is not None:
    metrics = eval_metrics[0] if not run.members else {
        checkpointing.member_metric(i, best): m[best] for i, m in enumerate(eval_metrics)}
  checkpointing.save(run.manager, step, train_state, data_iter=run.train_iter, meta=dict(run.meta, step=step),
                     metrics=metrics, force=True)
  if best and eval_metrics is not None and run.members and run.is_chief:
    for run_dir, m in zip(run.dirs, eval_metrics, strict=True):
      _record_best(run_dir, step, best, run.config.checkpoint.best_mode, m[best])


def _record_best(run_dir: str, step: int, metric: str, mode: str, value: float) -> None:
  """``<member dir>/best_checkpoint.json``: the step whose checkpoint is the member's best so far."""
  path = os.path.join(run_dir, members.BEST_FILE)
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError):
    recorded = None
  if recorded is not None and recorded.get("metric") == metric and recorded.get("step", -1) < step:
    old = float(recorded["value"])
    if not (value > old if mode == "max" else value < old):
      return
  fileio.write_json(path, dict(step=step, metric=metric, mode=mode, value=value))


def _sync(run: _Run, pending: list, step: int, clock: _Clock, do_log: bool) -> None:
  """Waits for the steps in flight (one device-to-host transfer per window), checks them, logs the window."""
  host = jax.device_get(pending)
  pending.clear()
  _check_finite(run, host, step)
  if do_log:
    _log_window(run, host, step, clock)


def _stop_requested(run: _Run, preemption: signals.Preemption, step: int, at_sync: bool) -> bool:
  """Whether to checkpoint and stop after ``step``: SIGTERM here, or the checkpoint manager's preemption notice.

  With several processes the signal may reach each at a different step; they decide together (one small
  all-gather) and only at steps where all of them sync anyway, so that all save or none does."""
  requested = preemption.requested.is_set()
  if jax.process_count() > 1:
    requested = at_sync and bool(np.any(multihost_utils.process_allgather(np.int32(requested))))
  return requested or run.manager.reached_preemption(step)


def _loop(run: _Run, train_state) -> dict[str, float]:
  """Steps until ``train.num_steps``; returns the last evaluation metrics. On preemption it checkpoints and raises
  ``signals.Preempted``."""
  t, config = run.config.train, run.config
  step = int(train_state.step)
  clock, pending, last_eval = _Clock(run_start_step=step), [], []
  with signals.Preemption() as preemption, sharding.use_mesh(run.mesh, config.mesh.logical_axis_rules):
    while step < t.num_steps:
      train_state, metrics = _step(run, train_state, step)
      pending.append(metrics)
      step += 1
      clock.window_steps += 1
      is_last = step == t.num_steps
      do_log = step % t.log_every_steps == 0 or is_last
      do_eval = step % config.eval.every_steps == 0 or is_last
      do_ckpt = step % config.checkpoint.every_steps == 0 or is_last or do_eval
      if do_log or do_ckpt or (preemption.requested.is_set() and jax.process_count() == 1):
        _sync(run, pending, step, clock, do_log)
      # Polled after the sync: a SIGTERM that came while this step ran stops the run here, not a step later
      # (the handler only runs once the main thread is back from the wait).
      preempted = _stop_requested(run, preemption, step, at_sync=do_log or do_ckpt)
      if preempted and pending:
        _sync(run, pending, step, clock, do_log)
      eval_metrics = None
      if do_eval:
        last_eval = eval_metrics = _evaluate(run, train_state.params, step)
        clock.window_start = time.time()  # evaluation time is not training throughput
      if do_ckpt or preempted:
        _save(run, step, train_state, eval_metrics)
      if preempted:
        logging.warning("Preemption requested: checkpoint at step %d written, stopping the run.", step)
        progress.print_line(f"[train] preempted: checkpoint at step {step} saved; rerun the same command to resume.")
        # Raised, not returned: what would come next (a recipe's next stage, an export) must not run on this state.
        raise signals.Preempted(stages.of(config).title, step, run.manager.directory)
  return _returned(run, last_eval)


def _returned(run: _Run, evaluations: list[dict[str, float]]) -> dict[str, float]:
  """What ``train_and_evaluate`` returns: the run's last metrics, or member k's under ``members/<k>/<metric>``."""
  if not run.members:
    return evaluations[0] if evaluations else {}
  return {f"{members.MEMBERS_DIR}/{k}/{name}": v for k, m in enumerate(evaluations) for name, v in m.items()}


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains one stage (resuming from ``workdir`` if it holds checkpoints): what ``--mode=train`` runs for each of
  a recipe's stages (``erclap.recipe``).

  Args:
    config: resolved for ``train`` (``erclap.resolve``).
    workdir: directory for checkpoints, summaries and evaluation JSON.

  Returns:
    The last evaluation metrics ({} if the run was already complete); with members (``erclap.members``), member
    k's under ``members/<k>/<metric>``.
  Raises:
    signals.Preempted: SIGTERM (or the checkpoint manager's preemption notice) came; a checkpoint of the step
      reached was written, and nothing after this stage may run.
  """
  resolve.require(config, "train")
  run, train_state = _start(config, workdir)
  param_count = sum(x.size for x in jax.tree.leaves(train_state.params))
  logging.info("Model: %s parameters; mesh %s; global batch %d; steps %d -> %d.", f"{param_count:,}",
               dict(run.mesh.shape), config.train.global_batch_size, int(train_state.step), config.train.num_steps)
  try:
    return _loop(run, train_state)
  finally:
    # Also when the loop raised: an asynchronous save still in flight is completed, not abandoned half-way
    # by the interpreter's shutdown; then the error goes on.
    run.manager.wait_until_finished()
    run.manager.close()
    for writer in run.writers:
      writer.flush()
      writer.close()
