"""A tiny sweep on the demo config (2 short CPU runs): checks the launch path end to end.

  python launch/sweep.py configs/sweeps/demo_smoke.py --backend=local --root=workdirs/sweeps

The runs are one-stage (``recipe.stage1`` off). A sweep that keeps the two-stage recipe (``paper_table``) gets
one stage 1 and cache for all its runs from launch/sweep.py; these runs can read an existing one instead:
  python launch/sweep.py demo_smoke -- --config.model.speech_init=workdirs/demo/stage1 \
      --config.model.freeze_speech=True --config.data.speech_features=workdirs/demo/speech_features
"""

from erclap.configs.sweeps import product

base_config = "configs/demo.py"

fixed = {
    "recipe.stage1": "",
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
