"""Large-batch sweeps on the speech-feature cache: train-step throughput with and without it, the cached
cross-modal stage at global batch 4096 (Rank-N-Contrast sharded over 8 simulated devices), and the wall time
of a small sweep (configs/sweeps/demo_smoke.py) both ways.

  python benchmarks/bench_sweep.py                  # all three tables (~15 min on 2 cores)
  python benchmarks/bench_sweep.py --only=ratio     # ratio | batch4096 | sweep

Every figure is measured in this run, side by side; compare ratios, not single timings (shared machines).
Each step measurement runs in a subprocess with 8 simulated CPU devices (base-size towers: 1, for memory). The
cached step reads random features of the representation's width (what the step computes from them does not
depend on their values); the uncached step runs the frozen speech tower on random audio. The sweep runs as a user
runs it (``launch/sweep.py``, one process per run, this machine's devices) on one frozen speech model: a short
stage-1 run made first and not timed; "cached" includes making the cache. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from timing import median_seconds  # benchmarks/timing.py (this script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The base-size towers (WavLM-base-plus + DistilRoBERTa class), frozen speech, a small batch.
BASE = {"model.size": "base", "model.speech_arch": "wavlm", "model.text_arch": "distilroberta"}


def _child(args: list[str], devices: int = 8) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, __file__, "--child", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"child {args} exited with {out.returncode}: {out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _config(size: str, cached: bool, batch: int, seconds: float):
  from erclap import config_lib, validation
  from erclap.configs import demo

  overrides = {"model.freeze_speech": True, "train.global_batch_size": batch, "data.max_seconds": seconds,
               "data.speech_features": "/cached" if cached else "", **(BASE if size == "base" else {})}
  return validation.validate(config_lib.apply_overrides(demo.get_config(), overrides))


def _host_batch(config, model, vocab_size: int, batch: int):
  import numpy as np

  from erclap.models import pooled_size

  rng = np.random.default_rng(0)
  tokens = config.data.max_text_tokens
  host = dict(input_ids=rng.integers(4, vocab_size, (batch, tokens)).astype(np.int32),
              attention_mask=np.ones((batch, tokens), np.int32),
              labels=rng.integers(2, 15, (batch, 3)).astype(np.float32) / 2, class_id=np.zeros(batch, np.int32),
              valid=np.ones(batch, bool))
  if config.data.speech_features:
    width = pooled_size(config.model.speech_pooling, model.speech_arch.hidden_size)
    host["speech_features"] = rng.standard_normal((batch, width)).astype(np.float32)
  else:
    t = int(round(config.data.max_seconds * config.data.sample_rate))
    host.update(audio=rng.standard_normal((batch, t)).astype(np.float32) * 0.1, audio_mask=np.ones((batch, t), bool))
  return host


def child(size: str, cached: bool, batch: int, seconds: float, repeats: int, loss_share: bool) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  import numpy as np

  from erclap import optim, runtime, sharding, speech_source, stages, state, step, tokenization

  config = _config(size, cached, batch, seconds)
  mesh = runtime.make_mesh(config)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens,
                                           descriptions=config.data.descriptions)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  optimizer = optim.make_optimizer(config)
  train_state, shardings = state.create_train_state(model, config, mesh, optimizer, jax.random.key(0))
  host = _host_batch(config, model, tokenizer.vocab_size, batch)
  result = {"devices": jax.device_count(), "batch": batch}
  with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
    arrays = {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, host[k].ndim), host[k])
              for k in speech_source.of(config).step_keys}
    train_step = step.jit_train_step(model, config, mesh, optimizer, shardings)  # as the training loop
    holder = {"state": train_state}

    def run_step():
      holder["state"], metrics = train_step(holder["state"], arrays)
      return metrics["loss"]
    result["step_s"] = median_seconds(run_step, repeats)
    if loss_share:
      emb = jax.random.normal(jax.random.key(1), (2, batch, config.model.joint_dim))
      emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
      loss_grad = jax.jit(jax.grad(lambda s, x: stages.clap_loss(
          config, mesh, {"log_temperature": jnp.log(0.1)}, dict(speech=s, text=x), arrays)[0], argnums=(0, 1)))
      result["loss_s"] = median_seconds(lambda: loss_grad(emb[0], emb[1]), repeats)
  result["finite"] = bool(np.isfinite(float(run_step())))
  return result


def _args(size: str, cached: bool, batch: int, seconds: float, repeats: int, loss_share: bool = False) -> list[str]:
  return ["--size", size, "--cached", str(int(cached)), "--batch", str(batch), "--seconds", str(seconds),
          "--repeats", str(repeats), "--loss_share", str(int(loss_share))]


def ratio_table(repeats: int) -> None:
  print("\n| towers (frozen speech) | batch x audio | uncached step (ms) | cached step (ms) | steps/s uncached | "
        "steps/s cached | speed-up |")
  print("|---|---|---|---|---|---|---|")
  # Base size on 1 device: 8 simulated devices would hold 8 replicas of its ~180M parameters and their
  # optimizer state in this machine's memory.
  for size, batch, seconds, devices in (("tiny", 64, 3.0, 8), ("base", 8, 3.0, 1)):
    plain = _child(_args(size, False, batch, seconds, repeats), devices)
    cached = _child(_args(size, True, batch, seconds, repeats), devices)
    name = "demo (tiny)" if size == "tiny" else "base (WavLM-base-plus + DistilRoBERTa class)"
    print(f"| {name} | {batch} x {seconds:g} s | {plain['step_s'] * 1e3:.0f} | {cached['step_s'] * 1e3:.0f} | "
          f"{1 / plain['step_s']:.2f} | {1 / cached['step_s']:.2f} | {plain['step_s'] / cached['step_s']:.1f}x |",
          flush=True)


def batch4096_table(repeats: int) -> None:
  r = _child(_args("tiny", True, 4096, 3.0, repeats, loss_share=True))
  print("\n| cached cross-modal stage (demo towers, RNC, 8 simulated devices) | step (ms) | loss+grad alone (ms) | "
        "loss share | finite |")
  print("|---|---|---|---|---|")
  print(f"| global batch {r['batch']} | {r['step_s'] * 1e3:.0f} | {r['loss_s'] * 1e3:.0f} | "
        f"{r['loss_s'] / r['step_s']:.1%} | {r['finite']} |", flush=True)


def _timed(cmd: list[str]) -> float:
  """Wall seconds of a command run from the repository root (its output kept for a failure's message)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}: {out.stderr[-3000:]}")
  return time.perf_counter() - start


def sweep_table(root: str, steps: int) -> None:
  """configs/sweeps/demo_smoke.py (2 runs) with ``steps`` steps each, on audio vs on a cache made once."""
  main = [sys.executable, "-m", "erclap.main"]
  stage1 = os.path.join(root, "stage1")
  _timed([*main, "--config=configs/ser_pretrain.py:demo", f"--workdir={stage1}", "--mode=train",
          "--config.train.num_steps=10", "--config.eval.every_steps=1000"])   # any frozen speech model will do
  frozen = [f"--config.model.speech_init={stage1}", "--config.model.freeze_speech=True",
            f"--config.train.num_steps={steps}", f"--config.eval.every_steps={steps}"]
  sweep = [sys.executable, "launch/sweep.py", "demo_smoke", "--backend=local"]
  plain = _timed([*sweep, f"--root={root}/plain", "--", *frozen])
  cache = os.path.join(root, "cache", "speech_features")
  caching = _timed([*main, "--config=configs/demo.py:single_stage", f"--workdir={root}/cache", "--mode=cache_speech",
                    *frozen])
  cached = _timed([*sweep, f"--root={root}/cached", "--", *frozen, f"--config.data.speech_features={cache}"])
  print(f"\n| demo_smoke sweep (2 runs x {steps} steps, frozen speech) | on audio (s) | cache once (s) | "
        f"on the cache (s) | cache + sweep (s) | speed-up |")
  print("|---|---|---|---|---|---|")
  print(f"| wall time | {plain:.0f} | {caching:.0f} | {cached:.0f} | {caching + cached:.0f} | "
        f"{plain / (caching + cached):.2f}x (sweep alone {plain / cached:.2f}x) |", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--only", default="", choices=("", "ratio", "batch4096", "sweep"))
  parser.add_argument("--sweep_root", default="workdirs/bench_sweep", help="workdirs of the sweep table "
                      "(emptied first)")
  parser.add_argument("--sweep_steps", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--child", action="store_true")
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--cached", type=int, default=0)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--seconds", type=float, default=3.0)
  parser.add_argument("--loss_share", type=int, default=0)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.size, bool(args.cached), args.batch, args.seconds, args.repeats,
                           bool(args.loss_share))))
    return
  if args.only in ("", "ratio"):
    ratio_table(args.repeats)
  if args.only in ("", "batch4096"):
    batch4096_table(max(2, args.repeats - 1))
  if args.only in ("", "sweep"):
    root = os.path.abspath(args.sweep_root)
    shutil.rmtree(root, ignore_errors=True)  # every run of the sweep starts from nothing
    sweep_table(root, args.sweep_steps)


if __name__ == "__main__":
  main()
