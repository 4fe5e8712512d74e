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
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

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


def _configured_steps(workdir: str) -> int | None:
  """``train.num_steps`` of the run's resolved training config (``config.train.json`` / ``config.all.json``)."""
  for name in ("config.all.json", "config.train.json"):
    try:
      with open(os.path.join(workdir, name)) as f:
        return int(json.load(f)["train"]["num_steps"])
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return None


def _live_holder(workdir: str) -> workdir_lock.LockHolder | None:
  """The lock holder when a run holds the workdir now (or may: a holder on another host cannot be checked)."""
  try:
    holder = workdir_lock.read_holder(workdir_lock.lock_path(workdir))
  except ValueError:
    return None
  if holder is None or workdir_lock.holder_alive(holder) is False:
    return None
  return holder


def read_run(workdir: str) -> RunResult:
  """The status, step and metrics of the run in ``workdir`` (see the module docstring). Never raises for what
  a run may leave behind (an unreadable record or metrics file is reported in ``error``).

  Args:
    workdir: a run's directory (local).

  Returns:
    A ``RunResult``.
  """
  if not os.path.isdir(workdir):
    return RunResult(workdir, NOT_STARTED)
  notes, record = [], None
  try:
    record = run_status.read(workdir)
  except ValueError as e:
    notes.append(str(e))
  metrics, metrics_from, metrics_step = {}, metrics_file(workdir) or "", None
  if metrics_from:
    try:
      payload = metrics_lib.read_metrics_file(os.path.join(workdir, metrics_from))
      metrics, metrics_step = _numbers(payload["metrics"]), payload.get("step")
    except (OSError, ValueError) as e:
      notes.append(f"{metrics_from}: {e}")
      metrics_from = ""
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
