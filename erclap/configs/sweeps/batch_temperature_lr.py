"""The main sweep: global batch size × initial temperature × learning rate on a TPU v4 slice (27 runs).

  python launch/sweep.py configs/sweeps/batch_temperature_lr.py --backend=tpu --tpu-name=erclap-v4 \
      --zone=us-central2-b --root=gs://BUCKET/erclap/sweeps -- --config.data.manual_dir=/data/MSP-Podcast

The RNC loss sees every pair in the global batch, so batch size changes the task, not only the noise:
it is swept together with the temperature that sharpens the ranking and the learning rate. Batches above
1024 are computed by gradient caching in micro-batches of 1024 (same result as one shot, less memory).
"""

from erclap.configs.sweeps import product

base_config = "configs/tpu_v4.py"

BATCH_SIZES = (256, 1024, 4096)
TEMPERATURES = (0.03, 0.07, 0.15)
LEARNING_RATES = (2e-5, 5e-5, 1e-4)
MAX_MICRO_BATCH = 1024

# Applied to every run, not part of the workdir names.
fixed = {"checkpoint.best_metric": "aoc_voc_mean"}


def get_sweep():
  runs = product({
      "train.global_batch_size": BATCH_SIZES,
      "train.temperature_init": TEMPERATURES,
      "train.learning_rate": LEARNING_RATES,
  })
  for run in runs:
    if run["train.global_batch_size"] > MAX_MICRO_BATCH:
      run["train.micro_batch_size"] = MAX_MICRO_BATCH
  return runs
