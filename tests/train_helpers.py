"""Small configs and subprocess runners shared by the training tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Overrides that make configs/demo.py tiny: a 48/16/16-clip corpus of <= 1 s clips, 16-example batches.
TINY_OVERRIDES = {
    "data.max_seconds": 0.5,
    "data.max_text_tokens": 16,
    "data.embedded.num_train": 48,
    "data.embedded.num_validation": 16,
    "data.embedded.num_test": 16,
    "data.embedded.min_seconds": 0.4,
    "data.embedded.max_seconds": 0.8,
    "model.joint_dim": 32,
    "model.projection_hidden": (32,),
    "train.global_batch_size": 16,
    "train.num_steps": 6,
    "train.warmup_steps": 2,
    "train.log_every_steps": 1,
    "checkpoint.every_steps": 2,
    "checkpoint.keep": 5,
    "checkpoint.best_metric": "",
    "checkpoint.async_save": False,
    "eval.every_steps": 1000,
    "eval.batch_size": 16,
    "eval.retrieval_draws": 10,
    "eval.probe_train_examples": 32,
}


def tiny_config(data_dir: str, **overrides):
  from erclap.configs import demo

  config = demo.get_config()
  for key, value in {**TINY_OVERRIDES, "data.data_dir": data_dir, **overrides}.items():
    parent = config
    *path, leaf = key.split(".")
    for part in path:
      parent = parent[part]
    parent[leaf] = value
  return config


def override_flags(data_dir: str, **overrides) -> list[str]:
  flags = []
  for key, value in {**TINY_OVERRIDES, "data.data_dir": data_dir, **overrides}.items():
    if isinstance(value, tuple):
      value = "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    flags.append(f"--config.{key}={value}")
  return flags


def main_command(workdir: str, data_dir: str, mode: str = "train", **overrides) -> list[str]:
  return [sys.executable, "-m", "erclap.main", f"--config={ROOT}/configs/demo.py", f"--workdir={workdir}",
          f"--mode={mode}", *override_flags(data_dir, **overrides)]


def subprocess_env(num_devices: int = 8, **extra) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
  env.update(extra)
  return env


def run_main(workdir: str, data_dir: str, mode: str = "train", *, timeout: int = 600, env=None, **overrides):
  return subprocess.run(main_command(workdir, data_dir, mode, **overrides), cwd=ROOT,
                        env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


LOSS_LINE = re.compile(r"\[train\] step (\d+)/\d+\s+loss ([-\d.naninf]+)")


def loss_curve(output: str) -> dict[int, float]:
  return {int(m.group(1)): float(m.group(2)) for m in LOSS_LINE.finditer(output)}
