"""Accelerator benchmark (one GPU or TPU chip): the RNC loss at scale and the train step, beside the plan.

  PYTHONPATH=. python benchmarks/bench_accelerator.py                       # <= ~8 minutes on one H100
  PYTHONPATH=. python benchmarks/bench_accelerator.py --small               # CPU smoke run, smallest sizes
  PYTHONPATH=. python benchmarks/bench_accelerator.py --budget_s=300 --out=/tmp/results.md

Sections (one process, one device):
  1. cross-modal RNC loss + gradient vs InfoNCE + gradient (both directions, cosine, D=512) at N = 4K, 16K,
     64K (``--loss_sizes``); RNC rows in blocks of ``loss_options.row_block`` where the (N, N) matrices would
     not fit (``--row_block_elements``); time (median of 3 after compilation), RNC / InfoNCE ratio, XLA's
     temporary bytes and the device's peak memory (``memory_stats()["peak_bytes_in_use"]``: a running maximum
     over the process, so each case reads the largest so far; cases run smallest first).
  2. the base-size train step (WavLM-base + DistilRoBERTa class towers, bfloat16, remat, 6 s audio, 64
     tokens, as configs/tpu_v4.py) at ``--batch_sizes``: step time, examples/s, model FLOP utilisation (FLOPs
     of ``cost_analysis`` / step time / chip bf16 peak) and peak memory; beside them the plan's prediction
     (``erclap.plan`` on the same compiled step: its per-device total bytes, verdict and the step time and
     examples/s implied by the chip's peak at ``plan.utilization``).
``--budget_s`` skips a case when, taking as long as the case before it, it would end after that many
seconds (default 450: the run stays within 8 minutes unless a case takes much longer than the one before).
The table goes to stdout and to ``--out`` (rewritten after every case).

Needs only jax, flax, optax and numpy plus ERCLAP's model/loss/step modules: no data stack and no
ml_collections (when it is missing, a minimal attribute dict stands in for ``ml_collections.ConfigDict`` so
that ``erclap.configs.default`` still declares every key). Written for Python 3.11-3.12 with jax 0.10.x and
0.11.x (flax 0.12, optax 0.2); APIs that moved between versions (``cost_analysis`` returning a list,
``memory_stats`` missing on some backends) are guarded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

from timing import median_seconds  # benchmarks/timing.py (this script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


class _ConfigDict(dict):
  """The part of ml_collections.ConfigDict that ERCLAP's config files and train step use."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value

  def __deepcopy__(self, memo):
    import copy

    return _ConfigDict({k: copy.deepcopy(v, memo) for k, v in self.items()})

  def lock(self):
    return self

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, _ConfigDict) else v for k, v in self.items()}


def _ensure_config_dict() -> str:
  try:
    import ml_collections  # noqa: F401

    return "ml_collections"
  except ImportError:
    sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=_ConfigDict)
    return "built-in attribute dict (ml_collections not installed)"


def _base_config(small: bool, batch: int):
  from erclap.configs import default

  c = default.get_config()
  c.loss = "rnc"
  c.model.size = "tiny" if small else "base"
  c.model.speech_arch, c.model.text_arch = "wavlm", ("bert" if small else "distilroberta")
  c.model.dtype, c.model.remat = "bfloat16", True
  c.data.max_seconds, c.data.max_text_tokens = (0.5, 16) if small else (6.0, 64)
  c.train.global_batch_size = batch
  c.mesh.shape = (1, 1, 1)
  return c


def _peak_bytes(device) -> int | None:
  try:
    stats = device.memory_stats() or {}
  except Exception:  # CPU and some runtimes have no memory stats
    return None
  return stats.get("peak_bytes_in_use")


def _is_oom(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def _out_of_budget(args, started: float, last_case_s: float) -> bool:
  """True when the next case, taking as long as the last one, would end after --budget_s."""
  return time.perf_counter() - started + last_case_s > args.budget_s


def bench_loss(name: str, n: int, dim: int, row_block: int, device) -> dict:
  import jax
  import jax.numpy as jnp

  from erclap import losses, plan

  k = jax.random.split(jax.random.key(0), 3)
  s = jax.device_put(jax.random.normal(k[0], (n, dim)), device)
  t = jax.device_put(s + 0.5 * jax.random.normal(k[1], (n, dim)), device)
  batch = dict(labels=jax.random.uniform(k[2], (n, 3), minval=1.0, maxval=7.0),
               class_id=jnp.zeros((n,), jnp.int32))
  loss_fn = losses.get_clap_loss(name)
  options = dict(row_block=row_block, rank_labels=("arousal", "valence"))
  fn = jax.jit(jax.value_and_grad(lambda a, b, y: loss_fn(a, b, y, temperature=0.07, options=options), (0, 1)))
  start = time.perf_counter()
  compiled = fn.lower(s, t, batch).compile()
  compile_s = time.perf_counter() - start
  seconds = median_seconds(lambda: compiled(s, t, batch), 3)
  memory = compiled.memory_analysis()
  flops = plan.compiled_cost(compiled).get("flops")
  return dict(seconds=seconds, compile_s=compile_s, temp=getattr(memory, "temp_size_in_bytes", None),
              peak=_peak_bytes(device), flops=flops)


def _random_state_and_batch(config, model, mesh, compiled_parts):
  import jax
  import numpy as np

  from erclap import optim, state

  _, _, shardings, abstract_batch, _ = compiled_parts
  params = state.init_params(model, config, mesh, jax.random.key(0), shardings.params)
  opt_state = jax.jit(optim.make_optimizer(config).init, out_shardings=shardings.opt_state)(params)
  train_state = state.TrainState(step=jax.device_put(np.zeros((), np.int32), shardings.step), params=params,
                                 opt_state=opt_state, rng=jax.device_put(jax.random.key(1), shardings.rng))
  rng = np.random.default_rng(0)
  batch = {}
  for key, spec in abstract_batch.items():
    if key == "audio":
      value = rng.standard_normal(spec.shape).astype(np.float32) * 0.1
    elif key == "labels":
      value = rng.uniform(1, 7, spec.shape).astype(np.float32)
    elif key == "input_ids":
      value = rng.integers(4, 100, spec.shape).astype(np.int32)
    else:
      value = np.ones(spec.shape, spec.dtype)
    batch[key] = jax.device_put(value, spec.sharding)
  return train_state, batch


def bench_step(config, chip_key, device, vocab: int) -> dict:
  import jax

  from erclap import models, plan, sharding

  mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes, [device])
  model = models.build_clap_model(config.model, vocab_size=vocab)
  parts = plan.compile_train_step(config, mesh, model)
  compiled, abstract, shardings, _, compile_s = parts
  figures = dict(plan.step_figures(config, mesh, compiled, abstract, shardings), compile_s=compile_s)
  predicted = plan.plan_config(config, mesh, model, chip_key, step_plan=figures)
  train_state, batch = _random_state_and_batch(config, model, mesh, parts)
  holder = [train_state]

  def run():
    holder[0], metrics = compiled(holder[0], batch)  # the state is donated: carry the new one
    return metrics["loss"]

  with jax.set_mesh(mesh):
    seconds = median_seconds(run, 3)
  return dict(seconds=seconds, compile_s=compile_s, peak=_peak_bytes(device), plan=predicted,
              flops=figures["flops_per_device"])


def _write(out_path: str, lines: list[str]) -> None:
  from erclap import fileio

  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with fileio.atomic_open(out_path) as f:
    f.write("\n".join(lines) + "\n")


def _loss_section(args, device, report, started) -> None:
  report += ["", "## 1. Cross-modal RNC vs InfoNCE, loss + gradient, D=512 (median of 3)", "",
             "| N | row_block | InfoNCE s | RNC s | RNC / InfoNCE | InfoNCE temp | RNC temp | peak so far |",
             "|---|---|---|---|---|---|---|---|"]
  from erclap import plan

  last = 0.0
  for n in args.loss_sizes:
    if _out_of_budget(args, started, last):
      report.append(f"| {n} | skipped: --budget_s={args.budget_s:.0f} | | | | | | |")
      continue
    case_start = time.perf_counter()
    row_block = 0 if n * n <= args.row_block_elements else max(256, args.row_block_elements // n)
    got = {}
    for name in ("infonce", "rnc"):
      try:
        got[name] = bench_loss(name, n, 512, row_block if name == "rnc" else 0, device)
      except Exception as e:  # an out-of-memory (or failing) case is a result: the other cases still run
        print(f"{name} at N={n}: {type(e).__name__}: {str(e)[:500]}", file=sys.stderr, flush=True)
        got[name] = "OOM" if _is_oom(e) else f"error ({type(e).__name__})"
    nce, rnc = (got[k] if isinstance(got[k], dict) else None for k in ("infonce", "rnc"))
    ratio = f"{rnc['seconds'] / nce['seconds']:.2f}x" if nce and rnc else "-"
    seconds = {k: f"{v['seconds']:.4f}" if isinstance(v, dict) else v for k, v in got.items()}
    temp = {k: plan.format_bytes(v["temp"]) if isinstance(v, dict) else v for k, v in got.items()}
    report.append(f"| {n} | {row_block or '-'} | {seconds['infonce']} | {seconds['rnc']} | {ratio} | "
                  f"{temp['infonce']} | {temp['rnc']} | {plan.format_bytes((rnc or nce or {}).get('peak'))} |")
    print(report[-1], flush=True)
    _write(args.out, report)
    last = time.perf_counter() - case_start


def _step_section(args, device, chip_key, report, started) -> None:
  from erclap import plan

  chip = plan.CHIPS.get(chip_key) if chip_key else None
  report += ["", f"## 2. Train step, {'tiny (--small)' if args.small else 'base'} towers, bfloat16, remat "
             f"(plan: {chip.name if chip else 'no chip in the table'}, utilisation "
             f"{args.utilization:.0%})", "",
             "| batch | step s | examples/s | GFLOP/example | MFU | peak memory | plan: total bytes | plan: verdict "
             "| plan: step s | plan: examples/s | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
  last = 0.0
  for batch in args.batch_sizes:
    if _out_of_budget(args, started, last):
      report.append(f"| {batch} | skipped: --budget_s={args.budget_s:.0f} | | | | | | | | | |")
      continue
    case_start = time.perf_counter()
    config = _base_config(args.small, batch)
    config.plan.utilization = args.utilization
    try:
      r = bench_step(config, chip_key, device, vocab=1000 if args.small else 50265)
    except Exception as e:  # an out-of-memory (or failing) case is a result: the other cases still run
      print(f"train step at batch {batch}: {type(e).__name__}: {str(e)[:500]}", file=sys.stderr, flush=True)
      report.append(f"| {batch} | {'OOM' if _is_oom(e) else f'error ({type(e).__name__})'} | | | | | | | | | |")
      last = time.perf_counter() - case_start
      continue
    p = r["plan"]
    mfu = f"{r['flops'] / r['seconds'] / chip.bf16_flops:.1%}" if chip else "-"
    pred_s = f"{p['step_time_s']:.4f}" if chip else "-"
    pred_x = f"{p['examples_per_s']:.0f}" if chip else "-"
    report.append(f"| {batch} | {r['seconds']:.4f} | {batch / r['seconds']:.1f} | "
                  f"{p['step']['flops_per_example'] / 1e9:.3g} | {mfu} | {plan.format_bytes(r['peak'])} | "
                  f"{plan.format_bytes(p['step']['total_bytes'])} | {p['verdict']} | {pred_s} | {pred_x} | "
                  f"{r['compile_s']:.0f} |")
    print(report[-1], flush=True)
    _write(args.out, report)
    last = time.perf_counter() - case_start


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--small", action="store_true", help="CPU smoke run at the smallest sizes")
  parser.add_argument("--loss_sizes", default=None, help="comma-separated N (default 4096,16384,65536)")
  parser.add_argument("--batch_sizes", default=None, help="comma-separated train-step batches (default 16,32,64)")
  parser.add_argument("--row_block_elements", type=int, default=2 ** 28,
                      help="RNC rows are blocked when N*N exceeds this; row_block = this // N")
  parser.add_argument("--utilization", type=float, default=0.4, help="the plan's assumed MFU")
  parser.add_argument("--budget_s", type=float, default=450.0,
                      help="skip a case when it would end after this many seconds (judged by the last case)")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "accelerator_results.md"))
  args = parser.parse_args()
  args.loss_sizes = [int(x) for x in (args.loss_sizes or ("256,1024" if args.small else "4096,16384,65536"))
                     .split(",")]
  args.batch_sizes = [int(x) for x in (args.batch_sizes or ("2,4" if args.small else "16,32,64")).split(",")]
  config_backend = _ensure_config_dict()
  import jax

  from erclap import plan

  started = time.perf_counter()
  device = jax.devices()[0]
  chip_key = plan.chip_of_device(device)
  report = ["# ERCLAP accelerator benchmark", "",
            f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, Python "
            f"{sys.version.split()[0]}, config: {config_backend}; chip table: {chip_key or 'none'}"]
  print("\n".join(report), flush=True)
  _loss_section(args, device, report, started)
  _step_section(args, device, chip_key, report, started)
  report += ["", f"total {time.perf_counter() - started:.0f} s"]
  _write(args.out, report)
  print("\n".join(report))


if __name__ == "__main__":
  main()
