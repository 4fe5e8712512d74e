"""What a run left behind: its status, step and metrics, read from its workdir (``read_run``).

This is the one place that knows where a run's results are; sweep summaries (``erclap.results.sweep``) and
anything else that lists runs read them through ``read_run``.

* **status** — ``finished``, ``running``, ``failed``, ``preempted`` or ``not started``: from the workdir lock (a
  live holder is running) and the run's own record, ``<workdir>/status.json`` (``erclap.run_status``). A record
  still saying ``running`` with no live lock holder is a run that was killed before it could record its end:
  failed. Without a record (a run of an earlier release), exported test metrics mean finished, and a run whose
  latest checkpoint reached its config's ``train.num_steps`` too; other traces count as failed, said so in
  ``error``. A workdir that does not exist or holds none of a run's outputs has not started.
* **step** — the latest checkpoint (live, also while the run trains), else the recorded step, else the metrics'.
* **metrics** — the export's test metrics (``export/test_metrics.json``) when there are any, else the latest
  periodic evaluation (``eval/<step>.json``); ``metrics_from`` names the file, relative to the workdir. Metric
  names written by earlier releases are read under today's (``erclap.metrics.read_metrics_file``).

A program with members (``erclap.members``) is K runs: member k's directory ``<workdir>/members/<k>`` is a run whose
status and step are the program's (one process trains them all) and whose metrics are its own; ``read_run`` reads a
member directory so, and ``member_runs`` / ``read_runs`` list a program's members with their values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from erclap import members as members_lib
from erclap import metrics as metrics_lib
from erclap import run_status, workdir_lock

NOT_STARTED = "not started"
STATUSES = (run_status.FINISHED, run_status.RUNNING, run_status.FAILED, run_status.PREEMPTED, NOT_STARTED)
EXPORT_TEST_METRICS = "export/test_metrics.json"
_EVAL_FILE = re.compile(r"^(\d+)\.json$")  # periodic evaluations; eval/test_<step>.json is --mode=eval's


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What ``read_run`` found in one workdir.

  Attributes:
    workdir: the run's directory.
    status: one of ``STATUSES``.
    error: for failed runs the last error line; for preempted ones why they stopped; else "".
    step: the run's latest step (None: none yet).
    metrics: {metric name: value}; empty when the run has none.
    metrics_from: the file the metrics come from, relative to the workdir ("" when none).
    mode: the mode of the run's last record ("" without one).
  """
  workdir: str
  status: str
  error: str = ""
  step: int | None = None
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  metrics_from: str = ""
  mode: str = ""


def metrics_file(workdir: str) -> str | None:
  """The file a run's metrics come from (see the module docstring), relative to ``workdir``; None if none."""
  if os.path.isfile(os.path.join(workdir, EXPORT_TEST_METRICS)):
    return EXPORT_TEST_METRICS
  try:
    names = os.listdir(os.path.join(workdir, "eval"))
  except (FileNotFoundError, NotADirectoryError):
    return None
  steps = [int(m.group(1)) for m in map(_EVAL_FILE.match, names) if m]
  return f"eval/{max(steps)}.json" if steps else None


def _numbers(values: dict) -> dict[str, float]:
  return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def _training_config(workdir: str) -> dict | None:
  """The run's resolved training config (``config.all.json`` / ``config.train.json``: under "config", or the whole
  file as earlier releases wrote it) as a dict; None without."""
  for name in ("config.all.json", "config.train.json"):
    try:
      with open(os.path.join(workdir, name)) as f:
        payload = json.load(f)
      config = payload.get("config", payload)
      if isinstance(config, dict):
        return config
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return None


def _configured_steps(workdir: str) -> int | None:
  """``train.num_steps`` of the run's resolved training config (``config.train.json`` / ``config.all.json``)."""
  try:
    return int(_training_config(workdir)["train"]["num_steps"])
  except (KeyError, TypeError, ValueError):
    return None


@dataclasses.dataclass(frozen=True)
class MemberRun:
  """Member k of a program with members: its directory and its values of the keys the members vary."""
  member: int
  workdir: str
  values: dict


def member_runs(workdir: str) -> list[MemberRun]:
  """The members of the program in ``workdir`` (from its resolved training config); [] for an ordinary run or one
  that has not started."""
  config = _training_config(workdir)
  if config is None or not members_lib.count(config):
    return []
  return [MemberRun(k, members_lib.directory(workdir, k), members_lib.member_values(config, k))
          for k in range(members_lib.count(config))]


def program_of(workdir: str) -> str | None:
  """The program's workdir when ``workdir`` is a member's directory (``<program>/members/<k>``), else None."""
  parent, name = os.path.split(os.path.normpath(workdir))
  if name.isdigit() and os.path.basename(parent) == members_lib.MEMBERS_DIR:
    return os.path.dirname(parent)
  return None


def read_runs(workdir: str) -> list[RunResult]:
  """The runs in ``workdir``: each member of a program with members (``read_run`` of its directory), else the run."""
  found = member_runs(workdir)
  return [read_run(m.workdir) for m in found] if found else [read_run(workdir)]


def _live_holder(workdir: str) -> workdir_lock.LockHolder | None:
  """The lock holder when a run holds the workdir now (or may: a holder on another host cannot be checked)."""
  try:
    holder = workdir_lock.read_holder(workdir_lock.lock_path(workdir))
  except ValueError:
    return None
  if holder is None or workdir_lock.holder_alive(holder) is False:
    return None
  return holder


def _read_metrics(workdir: str, with_step: bool = False):
  """(metrics, the file they come from, the problem reading it or "") of a run's directory (``metrics_file``); and
  the step its payload names, with ``with_step``."""
  metrics, metrics_from, problem, step = {}, metrics_file(workdir) or "", "", None
  if metrics_from:
    try:
      payload = metrics_lib.read_metrics_file(os.path.join(workdir, metrics_from))
      metrics, step = _numbers(payload["metrics"]), payload.get("step")
    except (OSError, ValueError) as e:
      problem, metrics_from = f"{metrics_from}: {e}", ""
  return (metrics, metrics_from, problem, step) if with_step else (metrics, metrics_from, problem)


def read_run(workdir: str) -> RunResult:
  """The status, step and metrics of the run in ``workdir`` (see the module docstring). Never raises for what
  a run may leave behind (an unreadable record or metrics file is reported in ``error``).

  Args:
    workdir: a run's directory (local), or a member's (``<program>/members/<k>``: the program's status and step,
      the member's metrics).

  Returns:
    A ``RunResult``.
  """
  program = program_of(workdir)
  if program is not None:
    of_program = read_run(program)
    metrics, metrics_from, error = _read_metrics(workdir)
    return dataclasses.replace(of_program, workdir=workdir, metrics=metrics, metrics_from=metrics_from,
                               error="; ".join(e for e in (of_program.error, error) if e))
  if not os.path.isdir(workdir):
    return RunResult(workdir, NOT_STARTED)
  notes, record = [], None
  try:
    record = run_status.read(workdir)
  except ValueError as e:
    notes.append(str(e))
  metrics, metrics_from, problem, metrics_step = _read_metrics(workdir, with_step=True)
  if problem:
    notes.append(problem)
  checkpoint = run_status.latest_step(workdir)
  step = next((s for s in (checkpoint, (record or {}).get("step"), metrics_step) if isinstance(s, int)), None)
  mode = str((record or {}).get("mode", ""))

  holder = _live_holder(workdir)
  if holder is not None:
    status, error = run_status.RUNNING, ""
  elif record is not None and record["state"] != run_status.RUNNING:
    status, error = record["state"], str(record.get("error", ""))
  elif record is not None:
    status, error = run_status.FAILED, (f"ended without recording how (killed?): its record says --mode={mode} "
                                        f"running since {record.get('started', '?')} on {record.get('host', '?')}, "
                                        f"and no process holds the workdir lock")
  elif metrics_from == EXPORT_TEST_METRICS:
    status, error = run_status.FINISHED, ""
  elif checkpoint is not None or metrics_from:
    num_steps = _configured_steps(workdir)
    if num_steps is not None and step is not None and step >= num_steps:
      status, error = run_status.FINISHED, ""
    else:
      status = run_status.FAILED
      error = f"no status record; stopped at step {step} of {num_steps if num_steps is not None else '?'}"
  else:
    status, error = NOT_STARTED, ""
  error = "; ".join([error, *notes]) if error and notes else error or "; ".join(notes)
  return RunResult(workdir, status, error, step, metrics, metrics_from, mode)
