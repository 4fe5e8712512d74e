"""Multi-host start-up: ``jax.distributed.initialize`` driven by config or the cluster's environment."""

from __future__ import annotations

import os

import jax
from absl import logging


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
