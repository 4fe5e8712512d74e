"""Model throughput on this machine: forward+backward of the whole CLAP model, tiny and base presets.

  python benchmarks/bench_models.py                       # tiny (batch 64) and base (batch 4), 3 s audio
  python benchmarks/bench_models.py --sizes=tiny --tiny_batch=16

Per configuration: compiled FLOPs per example (XLA ``cost_analysis()`` of the jitted forward+backward,
divided by the batch, so MFU on an accelerator = examples/s * FLOPs/example / peak FLOP/s), median step
time, examples/s, and parameter count; tiny also with remat. All figures come from one run: compare
ratios, not single timings (shared machine).
"""

from __future__ import annotations

import argparse
import os
import sys

from timing import median_seconds  # benchmarks/timing.py (this script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def bench_clap(size: str, batch: int, seconds: float, tokens: int, repeats: int, remat: bool = False) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from erclap import models
  from erclap.configs import default

  c = default.get_config().model
  c.size, c.remat = size, remat
  if size != "tiny":
    c.text_arch = "distilroberta"
  vocab = 1000 if size == "tiny" else 50265
  model = models.build_clap_model(c, vocab_size=vocab)
  samples = int(seconds * 16000)
  rng = np.random.default_rng(0)
  audio = rng.normal(size=(batch, samples)).astype(np.float32)
  amask = np.ones((batch, samples), bool)
  ids = rng.integers(4, vocab, (batch, tokens)).astype(np.int32)
  tmask = np.ones((batch, tokens), np.int32)
  params = jax.jit(lambda: nn.meta.unbox(model.init(jax.random.key(0), audio[:1], amask[:1], ids[:1],
                                                    tmask[:1])["params"]))()

  def loss(p, a, am, i, tm):
    out = model.apply({"params": p}, a, am, i, tm, train=True, rngs={"dropout": jax.random.key(1)})
    logits = out["speech"] @ out["text"].T / out["temperature"]
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1).diagonal())

  step = jax.jit(jax.value_and_grad(loss))
  compiled = step.lower(params, audio, amask, ids, tmask).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  flops = float(cost.get("flops", float("nan"))) / batch
  seconds_per_step = median_seconds(lambda: compiled(params, audio, amask, ids, tmask), repeats)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  frames = model.speech_arch.num_frames(samples)
  return dict(config=f"{size}{' remat' if remat else ''}", batch=batch, frames=frames, params_m=n_params / 1e6,
              gflop_per_example=flops / 1e9, step_s=seconds_per_step, examples_per_s=batch / seconds_per_step)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="tiny,base")
  parser.add_argument("--tiny_batch", type=int, default=64)
  parser.add_argument("--base_batch", type=int, default=4)
  parser.add_argument("--seconds", type=float, default=3.0)
  parser.add_argument("--tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  import jax

  print(f"devices: {jax.devices()} (cpu count {os.cpu_count()}); audio {args.seconds} s, {args.tokens} tokens")
  rows = []
  for size in args.sizes.split(","):
    batch = args.tiny_batch if size == "tiny" else args.base_batch
    rows.append(bench_clap(size, batch, args.seconds, args.tokens, args.repeats))
    if size == "tiny":
      rows.append(bench_clap(size, batch, args.seconds, args.tokens, args.repeats, remat=True))
  print("\n| config | batch | frames | params (M) | GFLOP/example (fwd+bwd) | step s | examples/s |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['batch']} | {r['frames']} | {r['params_m']:.1f} | {r['gflop_per_example']:.3f} "
          f"| {r['step_s']:.3f} | {r['examples_per_s']:.1f} |")
  if len(rows) > 1:
    print(f"\nratios vs {rows[0]['config']}: " + ", ".join(
        f"{r['config']} step time x{r['step_s'] / rows[0]['step_s']:.2f}" for r in rows[1:]))


if __name__ == "__main__":
  main()
