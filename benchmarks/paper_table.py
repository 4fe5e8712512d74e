r"""The paper's comparison table on the embedded corpus: RNC vs InfoNCE (SCE) vs SupCon.

Trains each loss on the same data, seed and budget (configs/demo.py unless --config: the two-stage demo, whose
stage 1 and speech cache are made once in <root>/shared and shared by every loss), evaluates the test
split and prints one table — the paper's VOC / AOC (Kendall's tau of retrieval order), the anchor-wise Kendall tau,
MMD, Wasserstein, R@1, CCC — with the paper's published figures beside ours for reference.

  python benchmarks/paper_table.py --workdir_root=workdirs/paper_table [--losses=rnc,infonce,supcon]
      [--steps=600] [--config=configs/demo.py:single_stage] [--speech_init=workdirs/ser_demo]

Each run's workdir is kept (`<root>/<loss>`); a finished run is not retrained.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# EmotionRankCLAP (Interspeech 2025), Table 1 (MSP-Podcast; their protocol, their models).
from erclap.results.paper import PAPER_TABLE1 as PAPER  # noqa: E402 (after the checkout is put on the path)

COLUMNS = ("voc", "aoc", "anchor_tau_valence", "anchor_tau_arousal", "mmd", "wasserstein",
           "r1_s2t", "r1_t2s", "ccc_zero_shot_arousal", "ccc_probe_arousal", "ccc_probe_valence")


def load_config(path: str):
  """A config file, optionally with its argument: ``configs/demo.py`` or ``configs/demo.py:single_stage``."""
  path, _, argument = path.partition(":")
  spec = importlib.util.spec_from_file_location("paper_table_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def base_config(args):
  """The config every loss starts from. A two-stage config (``recipe.stage1``, as configs/demo.py) gets its
  stage 1 and speech cache once, in ``<root>/shared``; every loss then trains on that one frozen, cached speech
  model (the same speech side for all of them)."""
  from erclap import config_lib, recipe, resolve

  overrides = {"seed": args.seed, **({"train.num_steps": args.steps} if args.steps else {})}
  if args.speech_init:
    overrides.update({"model.speech_init": args.speech_init, "recipe.stage1": ""})
  config = config_lib.apply_overrides(load_config(args.config), overrides)
  if not config.recipe.stage1:
    return config
  shared = os.path.abspath(os.path.join(args.workdir_root, "shared"))
  cross = resolve.resolve(config, shared, "train")
  recipe.prepare_stages(cross, shared)
  return config_lib.apply_overrides(cross, {"recipe.stage1": ""})


def run_one(loss: str, base, args) -> dict[str, float]:
  from erclap import config_lib, export, metrics, resolve, train

  workdir = os.path.join(args.workdir_root, loss)
  done = os.path.join(workdir, "export", "test_metrics.json")
  if os.path.exists(done):  # written by an earlier run, perhaps under earlier metric names
    return metrics.read_metrics_file(done)["metrics"]
  config = resolve.resolve(config_lib.apply_overrides(base, {"loss": loss}), os.path.abspath(workdir), "all")
  train.train_and_evaluate(config, workdir)
  return export.export_embeddings(config, workdir)["test"]


def format_table(results: dict[str, dict[str, float]]) -> str:
  head = f"{'loss':<16}" + "".join(f"{c[:14]:>15}" for c in COLUMNS)
  lines = [head, "-" * len(head)]
  for loss, metrics in results.items():
    lines.append(f"{loss + ' (ours)':<16}" + "".join(
        f"{metrics[c]:>15.3f}" if c in metrics else f"{'-':>15}" for c in COLUMNS))
    if loss in PAPER:
      lines.append(f"{loss + ' (paper)':<16}" + "".join(
          f"{PAPER[loss][c]:>15.3f}" if c in PAPER[loss] else f"{'':>15}" for c in COLUMNS))
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir_root", default="workdirs/paper_table")
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.py"))
  parser.add_argument("--losses", default="rnc,infonce,supcon")
  parser.add_argument("--steps", type=int, default=0, help="override train.num_steps (0 = the config's)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--speech_init", default="", help="initialise the speech tower (HF dir or SER workdir)")
  args = parser.parse_args()
  base = base_config(args)
  results = {loss: run_one(loss, base, args) for loss in args.losses.split(",")}
  table = format_table(results)
  print("\n" + table)
  os.makedirs(args.workdir_root, exist_ok=True)
  with open(os.path.join(args.workdir_root, "table.txt"), "w") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
