r"""Why does RNC leave a larger modality gap than InfoNCE here? Experiments that tell the explanations apart.

Each experiment is a config flag; each runs for the three losses (rnc, infonce, supcon) on the embedded corpus,
with the two-stage demo's speech side (``configs/demo.py``: stage 1 trained once, frozen and cached in
``<root>/shared``, the same speech features for every run), 600 cross-modal steps, seed 0 unless a variant says
otherwise, and the test split's metrics from ``--mode=export`` (the paper's AOC / VOC and every modality-gap
measure of ``docs/metrics.md``):

  base          learned temperature (initialised at 0.1), cosine similarity, two-direction cross-modal loss
  seed1         base with seed 1 (seed2, seed3 likewise: how much a seed moves the figures)
  fixed_t005    (a) fixed temperature 0.05    (train.learn_temperature=False, train.temperature_init=0.05)
  fixed_t01     (a) fixed temperature 0.1
  fixed_t02     (a) fixed temperature 0.2
  neg_l2        (b) similarity -||s - t|| with the temperature fixed at 0.1, as the official Rank-N-Contrast loss
                    (loss_options.similarity=neg_l2)
  joint         (c) the joint 2N form: speech and text rows together as one set of anchors, self excluded
                    (loss_options.joint=True)
  joint_seed1   joint with seed 1 (joint_seed2, joint_seed3 likewise)
  unique        (d) unique LLM-style descriptions per clip (erclap.tools.synthesize_descriptions, 4 per clip)
                    instead of the shared templates (data.descriptions=<jsonl>)
  batch16       (e) global batch 16
  batch256      (e) global batch 256 (64 is the base)

  python benchmarks/modality_gap_experiments.py --workdir_root=workdirs/modality_gap \
      [--variants=base,joint] [--losses=rnc]

Every run keeps its workdir (``<root>/<variant>/<loss>``); a finished run is not retrained. The table goes to
``<root>/table.md`` and ``<root>/results.json``; it also lists the final temperature of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FIXED = {"train.learn_temperature": False}
SEEDS = (1, 2, 3)  # besides the base seed 0: how much a seed moves the figures
VARIANTS = {
    "base": {},
    **{f"seed{seed}": {"seed": seed} for seed in SEEDS},
    "fixed_t005": {**FIXED, "train.temperature_init": 0.05},
    "fixed_t01": {**FIXED, "train.temperature_init": 0.1},
    "fixed_t02": {**FIXED, "train.temperature_init": 0.2},
    "neg_l2": {**FIXED, "train.temperature_init": 0.1, "loss_options.similarity": "neg_l2"},
    "joint": {"loss_options.joint": True},
    **{f"joint_seed{seed}": {"loss_options.joint": True, "seed": seed} for seed in SEEDS},
    "unique": {"data.descriptions": "<unique>"},
    "batch16": {"train.global_batch_size": 16},
    "batch256": {"train.global_batch_size": 256},
}
LOSSES = ("rnc", "infonce", "supcon")
COLUMNS = (("aoc", "AOC"), ("voc", "VOC"), ("mmd", "MMD"), ("wasserstein", "W1"), ("mmd_fixed", "MMD σ=1"),
           ("mmd_linear", "MMD lin"), ("centroid_distance", "centroid"), ("paired_cosine", "pair cos"),
           ("wasserstein_centered", "W1 centred"), ("description_centroid_distance", "desc-centroid"),
           ("temperature", "τ end"))


def unique_descriptions(path: str, data_config) -> str:
  """The JSONL of unique per-clip descriptions of the corpus (written once)."""
  from erclap import data, descriptions
  from erclap.tools.make_description_requests import corpus_labels

  if not os.path.exists(path):
    data.ensure_dataset(data_config)
    rows = ((i, a, v, d) for _, i, a, v, d in corpus_labels(data_config, "train,validation,test"))
    descriptions.write_jsonl(path, descriptions.synthesize_corpus(rows, num=4, seed=0))
  return path


def shared_config(root: str, steps: int):
  """configs/demo.py's cross-modal config on a stage 1 and speech cache made once in ``<root>/shared``."""
  from erclap import config_lib, recipe, resolve
  from erclap.configs import demo

  config = demo.get_config()
  if steps:
    config = config_lib.apply_overrides(config, {"train.num_steps": steps})
  shared = os.path.join(root, "shared")
  cross = resolve.resolve(config, shared, "train")
  recipe.prepare_stages(cross, shared)
  # One evaluation at the end (the export's test split is the table); checkpoints only at the end.
  return config_lib.apply_overrides(cross, {"recipe.stage1": "", "eval.every_steps": 100_000,
                                            "checkpoint.every_steps": 100_000, "checkpoint.best_metric": ""})


def run_one(base, root: str, variant: str, loss: str) -> dict[str, float]:
  import numpy as np

  from erclap import config_lib, export, metrics, resolve, tower_init, train

  workdir = os.path.join(root, variant, loss)
  done = os.path.join(workdir, "export", "test_metrics.json")
  if not os.path.exists(done):
    overrides = {**VARIANTS[variant], "loss": loss}
    if overrides.get("data.descriptions") == "<unique>":
      overrides["data.descriptions"] = unique_descriptions(os.path.join(root, "unique_descriptions.jsonl"),
                                                           base.data)
    config = resolve.resolve(config_lib.apply_overrides(base, overrides), workdir, "all")
    start = time.time()
    train.train_and_evaluate(config, workdir)
    export.export_embeddings(config, workdir)
    print(f"[modality_gap] {variant}/{loss}: {time.time() - start:.0f} s", flush=True)
  result = metrics.read_metrics_file(done)["metrics"]
  _, params = tower_init.read_workdir_params(workdir)
  result["temperature"] = float(np.exp(params["log_temperature"]))
  return result


def format_table(results: dict) -> str:
  head = "| variant | loss | " + " | ".join(title for _, title in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  for variant, by_loss in results.items():
    for loss, m in by_loss.items():
      cells = [f"{m[k]:.3f}" if k in m else "–" for k, _ in COLUMNS]
      lines.append(f"| {variant} | {loss} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir_root", default="workdirs/modality_gap")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--losses", default=",".join(LOSSES))
  parser.add_argument("--steps", type=int, default=0, help="cross-modal steps (0 = the demo's 600)")
  args = parser.parse_args()
  root = os.path.abspath(args.workdir_root)
  unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
  if unknown:
    parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
  import jax

  # The runs compile the same evaluation programs: compiled once, reused by every later run.
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  base = shared_config(root, args.steps)
  results = {}
  for variant in args.variants.split(","):
    for loss in args.losses.split(","):
      results.setdefault(variant, {})[loss] = run_one(base, root, variant, loss)
      with open(os.path.join(root, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
  table = format_table(results)
  print("\n" + table)
  with open(os.path.join(root, "table.md"), "w") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
