"""A tiny sweep on the demo config (2 short CPU runs): checks the launch path end to end.

  python launch/sweep.py configs/sweeps/demo_smoke.py --backend=local --root=workdirs/sweeps
"""

from erclap.configs.sweeps import product

base_config = "configs/demo.py"

fixed = {
    "train.num_steps": 20,
    "train.warmup_steps": 5,
    "train.log_every_steps": 5,
    "checkpoint.every_steps": 10,
    "eval.every_steps": 20,
}


def get_sweep():
  return product({
      "train.global_batch_size": (32,),
      "train.temperature_init": (0.05, 0.1),
  })
