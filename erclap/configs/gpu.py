"""Paper scale on one or more GPU hosts (e.g. 8×H100 per node; SLURM multi-node via launch/).

Same model as configs/tpu_v4.py; FSDP over all GPUs of the job by default.
"""

from erclap.configs import tpu_v4


def get_config():
  c = tpu_v4.get_config()
  c.train.global_batch_size = 512
  c.data.worker_count = 8
  c.mesh.shape = (1, -1, 1)  # FSDP: parameters and optimizer state split across GPUs
  return c
