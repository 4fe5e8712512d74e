"""Multi-host: ``jax.distributed.initialize`` driven by config or the cluster's environment, and the processes
agreeing on what process 0 alone can check (``agree``, ``agree_or_raise``)."""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def _cluster_env_is_multihost() -> bool:
  """True on a multi-worker Cloud TPU slice or a multi-task SLURM / Open MPI job."""
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if tpu_hosts and len(tpu_hosts.split(",")) > 1:
    return True
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(os.environ.get(var, "1") or 1) > 1:
      return True
  return False


def initialize(dist_config) -> None:
  """Initializes jax.distributed when running multi-host; a no-op for a single process.

  Explicit settings (``config.distributed.coordinator_address`` etc., e.g. several processes on
  localhost in tests) win; otherwise the TPU / SLURM / MPI environment is auto-detected by JAX.
  """
  if dist_config.coordinator_address:
    if dist_config.num_processes < 1 or dist_config.process_id < 0:
      raise ValueError("config.distributed.coordinator_address is set: also set "
                       "config.distributed.num_processes (>= 1) and config.distributed.process_id (>= 0)")
    jax.distributed.initialize(
        coordinator_address=dist_config.coordinator_address,
        num_processes=dist_config.num_processes,
        process_id=dist_config.process_id,
        local_device_ids=list(dist_config.local_device_ids) or None,
    )
  elif _cluster_env_is_multihost():
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def agree(flag: bool) -> bool:
  """Process 0's ``flag`` on every process: for what only process 0 can know (the files it alone writes), so
  that all processes take the same branch and enter the same collectives."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def agree_or_raise(problem: str | None, error: type[Exception] = ValueError) -> None:
  """Process 0's verdict for every process: raises ``error`` everywhere if process 0 found ``problem``.

  Every process calls this at the same point, so all of them stop together instead of the others waiting in the
  next collective.
  """
  if agree(problem is not None):
    raise error(problem if problem is not None else "process 0 refused to go on (its log names the reason)")
