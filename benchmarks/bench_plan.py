r"""The plan (``--mode=plan``) of paper-size configs, compiled on this CPU: what the tests check on tiny models, at
the sizes the plan is for.

  python benchmarks/bench_plan.py                  # every case below (~4 min on a 2-core CPU)
  python benchmarks/bench_plan.py --cases=flops    # one case

Cases, each in a process of its own (the plan simulates the topology's devices before JAX starts):

* ``flops``: the base model (WavLM-base-plus + DistilRoBERTa class, 3 s audio, 32 tokens, both towers trained)
  on one device: FLOPs per example of the compiled train step against the 136 GFLOP forward+backward that
  ``bench_models.py`` measures (the step adds the optimizer update, a few FLOPs per parameter);
* ``tpu_v4``, ``tpu_v4_32``: ``configs/tpu_v4.py`` with the speech tower trained, on ``v4-8`` and ``v4-32``:
  per-device memory, step time and the verdict; ``tpu_v4_frozen``: the config as shipped (speech tower frozen) on
  ``v4-8``;
* ``too_large``: a large-size model at global batch 65,536 on ``v5e-8``: DOES NOT FIT, with the knobs named.

Figures are XLA:CPU's estimates of another chip's program (see ``erclap.plan``): compare them with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BASE_FORWARD_BACKWARD_FLOPS = 136e9  # per example, bench_models.py on the same shapes

CASES = {
    "flops": dict(topology="", devices=1, overrides={
        "model.size": "base", "model.text_arch": "distilroberta", "data.max_seconds": 3.0,
        "data.max_text_tokens": 32, "train.global_batch_size": 8, "loss": "infonce", "mesh.shape": (1, 1, 1)},
        config="default", vocab=50265),
    "tpu_v4": dict(topology="v4-8", devices=4, overrides={"model.freeze_speech": False}, config="tpu_v4", vocab=None),
    "tpu_v4_32": dict(topology="v4-32", devices=16, overrides={"model.freeze_speech": False}, config="tpu_v4",
                      vocab=None),
    "tpu_v4_frozen": dict(topology="v4-8", devices=4, overrides={}, config="tpu_v4", vocab=None),
    "too_large": dict(topology="v5e-8", devices=8, overrides={
        "model.size": "large", "model.text_arch": "roberta", "train.global_batch_size": 65536, "loss": "infonce",
        "model.remat": False, "mesh.shape": (-1, 1, 1)}, config="default", vocab=50265),
}


def run_case(name: str) -> dict:
  """One case in this process (``prepare_devices`` first); returns the plan dict."""
  from erclap import config_lib, configs, plan

  case = CASES[name]
  config = config_lib.apply_overrides(configs.get(case["config"]), {**case["overrides"],
                                                                     "plan.topology": case["topology"]})
  plan.prepare_devices(config)
  import jax

  from erclap import runtime, sharding

  mesh = sharding.make_mesh(config.mesh.shape, config.mesh.axes, jax.devices()[:case["devices"]])
  vocab = case["vocab"] or plan.vocab_size(config)[0]
  chip = plan.parse_topology(case["topology"])[0] if case["topology"] else None
  return plan.plan_config(config, mesh, runtime.build_model(config, vocab_size=vocab), chip)


def _step(result: dict) -> str:
  """The predicted step time and throughput on the target chip (none without one)."""
  if not result.get("step_time_s"):
    return "-"
  return f"{result['step_time_s'] * 1e3:.0f} ms, {result['examples_per_s']:,.0f}/s"


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--case", default="", help=argparse.SUPPRESS)  # a child process's one case
  args = parser.parse_args()
  if args.case:
    print(json.dumps(run_case(args.case)))
    return
  from erclap import plan

  rows = []
  for name in args.cases.split(","):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, __file__, f"--case={name}"], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode:
      raise SystemExit(f"{name}: failed\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    s = result["step"]
    rows.append(f"| {name} | {result['chip'] or 'CPU'} x {result['devices']} | "
                f"{plan.format_bytes(s['params_bytes'])} / {plan.format_bytes(s['opt_state_bytes'])} / "
                f"{plan.format_bytes(s['temp_bytes'])} / {plan.format_bytes(s['total_bytes'])} | "
                f"{s['flops_per_example'] / 1e9:.1f} | {_step(result)} | {result['verdict']} | "
                f"{', '.join(k['knob'] for k in result['knobs']) or '-'} | {s['compile_s']:.0f} s |")
    if name == "flops":
      rows.append(f"|  | FLOPs per example / bench_models' forward+backward: "
                  f"{s['flops_per_example'] / BASE_FORWARD_BACKWARD_FLOPS:.3f} | | | | | | |")
  print("| case | target | per device: params / opt state / temp / total | GFLOP per example | predicted step, "
        "examples/s | verdict | knobs | compile |")
  print("|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
