"""Training throughput on CPU: the demo config's step, scaling with simulated devices, loss share of a step.

  python benchmarks/bench_train.py                 # all three tables (a few minutes on 2 cores)
  python benchmarks/bench_train.py --only=demo     # demo | scaling | loss_share

Every figure is measured in this run, side by side; compare ratios, not single timings (shared machines).
Each table runs in a subprocess so that the simulated device count can differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from timing import median_seconds  # benchmarks/timing.py (this script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(kind: str, devices: int, batch: int, repeats: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, __file__, "--child", kind, "--batch", str(batch), "--repeats", str(repeats)]
  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def child(kind: str, batch: int, repeats: int) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import numpy as np

  from erclap import optim, runtime, sharding, speech_source, stages, state, step, tokenization
  from erclap.configs import demo

  config = demo.get_config("single_stage")
  config.train.global_batch_size = batch
  mesh = runtime.make_mesh(config)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens,
                                           descriptions=config.data.descriptions)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  optimizer = optim.make_optimizer(config)
  train_state, shardings = state.create_train_state(model, config, mesh, optimizer, jax.random.key(0))
  rng = np.random.default_rng(0)
  t = int(round(config.data.max_seconds * config.data.sample_rate))
  host = dict(audio=rng.standard_normal((batch, t)).astype(np.float32) * 0.1, audio_mask=np.ones((batch, t), bool),
              input_ids=rng.integers(4, tokenizer.vocab_size, (batch, config.data.max_text_tokens)).astype(np.int32),
              attention_mask=np.ones((batch, config.data.max_text_tokens), np.int32),
              labels=rng.integers(2, 15, (batch, 3)).astype(np.float32) / 2, class_id=np.zeros(batch, np.int32),
              valid=np.ones(batch, bool))
  result = {"devices": jax.device_count(), "batch": batch}
  with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
    batch_arrays = runtime.global_batch(host, mesh, speech_source.AUDIO)
    if kind in ("step", "loss_share"):
      train_step = step.jit_train_step(model, config, mesh, optimizer, shardings)  # as the training loop
      holder = {"state": train_state}

      def run_step():
        holder["state"], metrics = train_step(holder["state"], batch_arrays)
        return metrics["loss"]
      result["step_s"] = median_seconds(run_step, repeats)
    if kind in ("loss_share", "loss_only"):
      import jax.numpy as jnp

      d = config.model.joint_dim
      emb = jax.random.normal(jax.random.key(1), (2, batch, d))
      emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
      loss_grad = jax.jit(jax.grad(lambda s, x: stages.clap_loss(
          config, mesh, {"log_temperature": jnp.log(0.1)}, dict(speech=s, text=x), batch_arrays)[0], argnums=(0, 1)))
      result["loss_s"] = median_seconds(lambda: loss_grad(emb[0], emb[1]), repeats)
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--only", default="")
  parser.add_argument("--child", default="")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.child, args.batch, args.repeats)))
    return
  if args.only in ("", "demo"):
    r = _child("step", 8, 64, args.repeats)
    print(f"\n== demo config (tiny model, batch 64, 3 s audio), {r['devices']} simulated devices")
    print(f"step {r['step_s'] * 1e3:.0f} ms  ->  {1 / r['step_s']:.2f} steps/s, {64 / r['step_s']:.0f} examples/s")
  if args.only in ("", "scaling"):
    print("\n== step time vs simulated devices (batch 64; 2 physical cores: expect ~flat or worse, "
          "this checks sharding overhead, not speed-up)")
    base = None
    for devices in (1, 2, 4, 8):
      r = _child("step", devices, 64, args.repeats)
      base = base or r["step_s"]
      print(f"devices {devices}: step {r['step_s'] * 1e3:7.0f} ms   ratio to 1 device {r['step_s'] / base:5.2f}")
  if args.only in ("", "loss_share"):
    print("\n== share of the train step spent in the loss (loss + grad w.r.t. embeddings), 8 devices")
    for batch in (256, 1024, 4096):
      r = _child("loss_share", 8, batch, max(2, args.repeats // 2)) if batch <= 256 else None
      if r is None:  # the full tiny-model step at 1024/4096 is minutes on 2 cores: time the loss alone
        r = _child("loss_only", 8, batch, 2)
        r.setdefault("step_s", float("nan"))
      share = r.get("loss_s", float("nan")) / r["step_s"] if r["step_s"] == r["step_s"] else float("nan")
      print(f"batch {batch:5d}: loss+grad {r.get('loss_s', float('nan')) * 1e3:8.0f} ms   "
            f"step {r['step_s'] * 1e3:8.0f} ms   loss share {share:6.1%}")


if __name__ == "__main__":
  main()
