r"""Stage 1 then stage 2 on the embedded corpus: does the emotion rank encoder help the cross-modal stage?

  python benchmarks/ser_then_clap.py --workdir_root=workdirs/ser_then_clap [--ser_steps=400] [--clap_steps=600]

1. trains configs/ser_pretrain.py:demo (speech tower + attribute heads, CCC + pairwise ranking losses) and
   reports its test CCC per attribute and ranking accuracy;
2. trains the cross-modal demo (configs/demo.py) twice with the same seed and budget: from random
   initialisation, and with the speech tower initialised from stage 1 (optionally frozen);
3. prints AOC / VOC / retrieval tau / MMD of both.
Finished runs are reused.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ROWS = ("aoc", "voc", "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein",
        "r1_s2t", "ccc_probe_arousal")


def _cached(workdir: str):
  path = os.path.join(workdir, "export", "test_metrics.json")
  if os.path.exists(path):  # written by an earlier run, perhaps under earlier metric names
    from erclap import metrics

    return metrics.read_metrics_file(path)["metrics"]
  return None


def run(config, workdir: str) -> dict[str, float]:
  from erclap import export, resolve, train

  cached = _cached(workdir)
  if cached is not None:
    return cached
  workdir = os.path.abspath(workdir)
  config = resolve.resolve(config, workdir, "all")
  train.train_and_evaluate(config, workdir)
  return export.export_embeddings(config, workdir)["test"]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir_root", default="workdirs/ser_then_clap")
  parser.add_argument("--ser_steps", type=int, default=0)
  parser.add_argument("--clap_steps", type=int, default=0)
  parser.add_argument("--freeze_speech", action="store_true")
  args = parser.parse_args()

  from erclap.configs import demo, ser_pretrain

  ser_config = ser_pretrain.get_config("demo")
  if args.ser_steps:
    ser_config.train.num_steps = args.ser_steps
  ser_dir = os.path.join(args.workdir_root, "ser")
  ser = run(ser_config, ser_dir)
  print("\n== stage 1 (SER) test metrics")
  for k in sorted(ser):
    print(f"  {k:<28} {ser[k]: .4f}")

  results = {}
  for name, init in (("random init", ""), ("SER init", ser_dir)):
    config = demo.get_config("single_stage")
    if args.clap_steps:
      config.train.num_steps = args.clap_steps
    config.model.speech_init = init
    config.model.freeze_speech = bool(init) and args.freeze_speech
    results[name] = run(config, os.path.join(args.workdir_root, "clap_" + ("ser" if init else "random")))
  print("\n== cross-modal stage, test split")
  print(f"{'':<14}" + "".join(f"{r[:16]:>18}" for r in ROWS))
  for name, metrics in results.items():
    print(f"{name:<14}" + "".join(f"{metrics.get(r, float('nan')):>18.4f}" for r in ROWS))


if __name__ == "__main__":
  main()
