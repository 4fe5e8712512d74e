"""Cross-modal RNC loss: speed vs InfoNCE, an official-style PyTorch RNC, N=32768, sharded memory, numerics.

    .venv/bin/python benchmarks/bench_losses.py            # default sections, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_losses.py --torch    # + PyTorch baseline at n=1024 (~20 s, ~9 GB RSS)
    .venv/bin/python benchmarks/bench_losses.py --huge     # + exact loss+grad at N=32768 (minutes)

Sections (all figures single runs on whatever machine this is; compare the ratios, measured side by side):
  1. loss+grad time of ``cross_modal_rnc_loss`` vs ``infonce_loss`` (both directions, cosine, tau=0.07) for
     N in --sizes at D=--dim; target: RNC <= 4x InfoNCE at N=4096, D=512.
  2. numerics: tau=0.01 (cosine logit range 200, the exact log-space path) finite loss and gradients, with its
     time beside the tau=0.07 one; bf16 inputs give a float32 loss equal to the float32 loss of the same values.
  3. per-device temp bytes of the jitted loss+grad from ``compile().memory_analysis()`` over P = 1, 2, 4, 8
     simulated CPU devices (a subprocess with 8 host devices); target <= 1.3/P of P=1.
  4. (--torch) an official-style PyTorch RNC (the loop over k with dense masks of the reference code, one
     direction, no self-exclusion) vs ``rnc_loss`` one direction at n=1024, in subprocesses with their max RSS.
  5. (--huge) exact loss+grad at N=32768 with row blocks + rematerialisation, in a subprocess: time, max RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n, dim, seed=0):
  import jax

  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  s = jax.random.normal(k[0], (n, dim))
  t = s + 0.5 * jax.random.normal(k[1], (n, dim))
  y = jax.random.uniform(k[2], (n, 2), minval=1.0, maxval=7.0)   # continuous arousal / valence
  return s, t, y


def _time(fn, *args, repeats=3):
  import jax

  out = fn(*args)
  jax.block_until_ready(out)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best, out


def section_speed(sizes, dim):
  import jax

  from erclap import losses

  print(f"\n## 1. loss+grad time, D={dim} (best of 3)\n")
  print("| N | InfoNCE+grad (s) | RNC+grad (s) | RNC / InfoNCE |")
  print("|---|---|---|---|")
  rnc = jax.jit(jax.value_and_grad(lambda s, t, y: losses.cross_modal_rnc_loss(s, t, y, temperature=0.07), (0, 1)))
  nce = jax.jit(jax.value_and_grad(lambda s, t: losses.infonce_loss(s, t, temperature=0.07), (0, 1)))
  for n in sizes:
    s, t, y = _data(n, dim)
    t_nce, _ = _time(nce, s, t)
    t_rnc, _ = _time(rnc, s, t, y)
    print(f"| {n} | {t_nce:.3f} | {t_rnc:.3f} | {t_rnc / t_nce:.2f}x |", flush=True)


def section_numerics(n, dim):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from erclap import losses

  print(f"\n## 2. numerics at N={n}, D={dim}\n")
  s, t, y = _data(n, dim)
  rows = []
  for tau in (0.07, 0.01):
    f = jax.jit(jax.value_and_grad(lambda s, t, y, tau=tau: losses.cross_modal_rnc_loss(s, t, y, temperature=tau),
                                   (0, 1)))
    sec, (v, (gs, gt)) = _time(f, s, t, y)
    finite = bool(np.isfinite(float(v)) and jnp.all(jnp.isfinite(gs)) and jnp.all(jnp.isfinite(gt)))
    rows.append((tau, sec, float(v), finite))
  print("| tau | loss+grad (s) | loss | loss and grads finite |")
  print("|---|---|---|---|")
  for tau, sec, v, finite in rows:
    print(f"| {tau} | {sec:.3f} | {v:.4f} | {finite} |")
  s16, t16 = s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
  v16 = jax.jit(lambda s, t, y: losses.cross_modal_rnc_loss(s, t, y, temperature=0.07))(s16, t16, y)
  v32 = jax.jit(lambda s, t, y: losses.cross_modal_rnc_loss(s, t, y, temperature=0.07))(
      s16.astype(jnp.float32), t16.astype(jnp.float32), y)
  print(f"\nbf16 inputs: loss dtype {v16.dtype}, {float(v16):.6f} vs float32 loss of the same values "
        f"{float(v32):.6f} (relative difference {abs(float(v16) - float(v32)) / abs(float(v32)):.1e})")


_MEMORY_CHILD = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
from erclap import losses, sharding
n, dim = int(sys.argv[2]), int(sys.argv[3])
out = {}
for p in (1, 2, 4, 8):
  mesh = sharding.make_mesh((p,), ("data",), devices=jax.devices()[:p])
  f = jax.jit(jax.value_and_grad(
      lambda s, t, y: losses.cross_modal_rnc_loss(s, t, y, temperature=0.07, mesh=mesh), (0, 1)))
  args = [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding.batch_sharding(mesh, len(shape)))
          for shape in ((n, dim), (n, dim), (n, 2))]
  mem = f.lower(*args).compile().memory_analysis()
  out[p] = int(mem.temp_size_in_bytes)
print(json.dumps(out))
"""


def section_memory(n, dim):
  print(f"\n## 3. per-device temp bytes of jit(loss+grad), N={n}, D={dim}, rows split over P devices\n")
  res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, ROOT, str(n), str(dim)], capture_output=True,
                       text=True, check=True)
  temp = {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}
  print("| P | temp MiB per device | / (P=1 / P) | target <= 1.3 |")
  print("|---|---|---|---|")
  for p, b in temp.items():
    print(f"| {p} | {b / 2 ** 20:.1f} | {b / (temp[1] / p):.2f} | {b / (temp[1] / p) <= 1.3} |")


_TORCH_CHILD = r"""
import sys, time, resource, json
import torch
torch.manual_seed(0)
n, dim = int(sys.argv[1]), int(sys.argv[2])

def official_style_rnc(anchors, candidates, labels, temperature):
  # The Rank-N-Contrast reference implementation's structure (loop over k, dense masks), written from the
  # definition for the cross-modal case: no self-exclusion, cosine logits, L1 label distance, one direction.
  a = torch.nn.functional.normalize(anchors, dim=-1)
  c = torch.nn.functional.normalize(candidates, dim=-1)
  logits = a @ c.T / temperature
  label_diffs = (labels[:, None, :] - labels[None, :, :]).abs().sum(-1)
  logits = logits - logits.max(dim=1, keepdim=True)[0].detach()
  exp_logits = logits.exp()
  m = logits.shape[1]
  loss = 0.0
  for k in range(m):
    pos_logits = logits[:, k]
    pos_label_diffs = label_diffs[:, k]
    neg_mask = (label_diffs >= pos_label_diffs.view(-1, 1)).float()
    pos_log_probs = pos_logits - torch.log((neg_mask * exp_logits).sum(dim=-1))
    loss = loss - (pos_log_probs / (logits.shape[0] * m)).sum()
  return loss

s = torch.randn(n, dim, requires_grad=True)
t = torch.randn(n, dim, requires_grad=True)
y = torch.rand(n, 2) * 6 + 1
start = time.perf_counter()
loss = official_style_rnc(s, t, y, 0.07)
loss.backward()
sec = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": sec, "loss": float(loss), "maxrss_mib": rss,
                  "s": s.detach().numpy().tolist(), "t": t.detach().numpy().tolist(), "y": y.numpy().tolist()}))
"""

_JAX_ONE_DIRECTION_CHILD = r"""
import sys, time, resource, json
sys.path.insert(0, sys.argv[1])
import numpy as np, jax
from erclap import losses
data = json.loads(sys.stdin.read())
s, t, y = (np.asarray(data[k], np.float32) for k in ("s", "t", "y"))
f = jax.jit(jax.value_and_grad(lambda s, t: losses.rnc_loss(s, t, y, y, temperature=0.07), (0, 1)))
jax.block_until_ready(f(s, t))
best = 1e9
for _ in range(3):
  start = time.perf_counter(); v, g = f(s, t); jax.block_until_ready(g); best = min(best, time.perf_counter() - start)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": best, "loss": float(v), "maxrss_mib": rss}))
"""


def section_torch(n, dim):
  print(f"\n## 4. official-style PyTorch RNC (loop over k, dense masks) vs rnc_loss, loss+grad, n={n}, D={dim}, "
        "one direction\n")
  res = subprocess.run([sys.executable, "-c", _TORCH_CHILD, str(n), str(dim)], capture_output=True, text=True,
                       check=True)
  torch_out = json.loads(res.stdout.strip().splitlines()[-1])
  payload = json.dumps({k: torch_out[k] for k in ("s", "t", "y")})
  res = subprocess.run([sys.executable, "-c", _JAX_ONE_DIRECTION_CHILD, ROOT], input=payload, capture_output=True,
                       text=True, check=True)
  jax_out = json.loads(res.stdout.strip().splitlines()[-1])
  print("| implementation | loss+grad (s) | loss | process max RSS (MiB) |")
  print("|---|---|---|---|")
  print(f"| PyTorch official-style (loop over k) | {torch_out['seconds']:.2f} | {torch_out['loss']:.5f} | "
        f"{torch_out['maxrss_mib']:.0f} |")
  print(f"| erclap rnc_loss (jit, best of 3) | {jax_out['seconds']:.4f} | {jax_out['loss']:.5f} | "
        f"{jax_out['maxrss_mib']:.0f} |")
  print(f"\nspeed-up: {torch_out['seconds'] / jax_out['seconds']:.0f}x (target >= 100x); same inputs, "
        f"loss relative difference {abs(torch_out['loss'] - jax_out['loss']) / abs(torch_out['loss']):.1e}")


_HUGE_CHILD = r"""
import sys, time, resource, json
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
from erclap import losses
n, dim, block = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
k = jax.random.split(jax.random.PRNGKey(0), 3)
s = jax.random.normal(k[0], (n, dim)); t = s + 0.5 * jax.random.normal(k[1], (n, dim))
y = jax.random.uniform(k[2], (n, 2), minval=1.0, maxval=7.0)
loss = lambda s, t, y: losses.cross_modal_rnc_loss(s, t, y, temperature=0.07, row_block=block)
f = jax.jit(jax.value_and_grad(loss, (0, 1)))
start = time.perf_counter()
v, (gs, gt) = f(s, t, y); jax.block_until_ready(gt)
sec = time.perf_counter() - start
finite = bool(jnp.isfinite(v) & jnp.all(jnp.isfinite(gs)) & jnp.all(jnp.isfinite(gt)))
print(json.dumps({"seconds_incl_compile": sec, "loss": float(v), "finite": finite,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def section_huge(n, dim, block):
  print(f"\n## 5. exact loss+grad at N={n}, D={dim}, row_block={block} (rematerialised), subprocess\n")
  res = subprocess.run([sys.executable, "-c", _HUGE_CHILD, ROOT, str(n), str(dim), str(block)], capture_output=True,
                       text=True, check=True)
  out = json.loads(res.stdout.strip().splitlines()[-1])
  print("| N | row_block | loss+grad incl. compile (s) | loss | finite | max RSS (GiB) | target < 8 GiB |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {n} | {block} | {out['seconds_incl_compile']:.1f} | {out['loss']:.5f} | {out['finite']} | "
        f"{out['maxrss_mib'] / 1024:.2f} | {out['maxrss_mib'] / 1024 < 8} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1024,4096", help="N values of the speed table")
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--memory_n", type=int, default=4096)
  parser.add_argument("--torch", action="store_true", help="run the PyTorch baseline (n=--torch_n)")
  parser.add_argument("--torch_n", type=int, default=1024)
  parser.add_argument("--huge", action="store_true", help="run the N=--huge_n section")
  parser.add_argument("--huge_n", type=int, default=32768)
  parser.add_argument("--huge_block", type=int, default=512)
  parser.add_argument("--skip_default", action="store_true", help="only the sections asked for by flags")
  args = parser.parse_args()
  if not args.skip_default:
    section_speed([int(x) for x in args.sizes.split(",")], args.dim)
    section_numerics(4096, args.dim)
    section_memory(args.memory_n, args.dim)
  if args.torch:
    section_torch(args.torch_n, args.dim)
  if args.huge:
    section_huge(args.huge_n, args.dim, args.huge_block)


if __name__ == "__main__":
  main()
