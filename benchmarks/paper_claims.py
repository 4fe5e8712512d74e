r"""The paper's claims, tested on a paper_table sweep: which hold outside the seed noise, corpus by corpus.

  python launch/sweep.py paper_table --root=workdirs/sweeps --mode=all
  python launch/sweep.py paper_table --root=workdirs/sweeps --summarize
  python benchmarks/paper_claims.py workdirs/sweeps/paper_table              # -> a markdown table on stdout

Reads the sweep's ``summary.csv`` (one row per run: per seed, or per member of a program) and, for each corpus
(``data.name``) and loss form (``loss_options.joint``), compares RNC with InfoNCE (the paper's SCE) and SupCon on
each claim of the paper: RNC's AOC and VOC higher, its MMD and Wasserstein lower; and on our anchor-wise τ. Each
comparison is the difference of the seed means with its 95 % Welch interval (unequal variances, Welch-Satterthwaite
degrees of freedom). A claim holds outside the noise when that interval excludes 0 on the claimed side; it is
reversed when it excludes 0 on the other side; otherwise the seeds cannot tell.

A second table (``--against``) compares forms of one loss on one corpus the same way: e.g. every group of a
rank_forms sweep against the two-direction RNC of the paper_table sweep.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from erclap.results import stats

# (metric, the direction the paper claims for RNC against the other loss: +1 higher, -1 lower)
CLAIMS = (("aoc", +1), ("voc", +1), ("mmd", -1), ("wasserstein", -1), ("anchor_tau_arousal", +1),
          ("anchor_tau_valence", +1))
OTHERS = ("infonce", "supcon")


def read_runs(sweep_dir: str) -> list[dict[str, str]]:
  """The finished runs of a summarised sweep (``summary.csv``)."""
  path = os.path.join(sweep_dir, "summary.csv")
  if not os.path.exists(path):
    raise SystemExit(f"{path}: no summary; run `python launch/sweep.py NAME --root=ROOT --summarize` first")
  with open(path, newline="") as f:
    return [r for r in csv.DictReader(f) if r["status"] == "finished"]


def values(runs, metric: str, **where) -> list[float]:
  """``metric`` of the runs whose columns equal ``where`` (a column a sweep lacks reads as its default)."""
  defaults = {"loss_options.joint": "False", "loss": "rnc"}
  out = []
  for r in runs:
    if all(r.get(k, defaults.get(k, "")) == v for k, v in where.items()) and r.get(metric, "") != "":
      out.append(float(r[metric]))
  return out


def welch(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
  """mean(a) - mean(b) and its 95 % Welch interval; None when either side has fewer than 2 values."""
  if len(a) < 2 or len(b) < 2:
    return None
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  diff = float(np.mean(a) - np.mean(b))
  se = math.sqrt(va + vb)
  if se == 0:
    return diff, diff, diff
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = stats.t_quantile((1 + stats.CONFIDENCE) / 2, max(1, int(math.floor(df)))) * se
  return diff, diff - half, diff + half


def verdict(result, direction: int) -> str:
  """'holds', 'reversed' or 'within the noise' for a claimed direction (+1: the first is higher)."""
  if result is None:
    return "–"
  _, low, high = result
  if direction * low > 0 and direction * high > 0:
    return "**holds**"
  if direction * low < 0 and direction * high < 0:
    return "reversed"
  return "within the noise"


def cell(result, direction: int) -> str:
  if result is None:
    return "–"
  diff, low, high = result
  return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}] {verdict(result, direction)}"


def claims_table(runs) -> str:
  corpora = sorted({r.get("data.name", "") for r in runs})
  forms = sorted({r.get("loss_options.joint", "False") for r in runs})
  lines = ["| corpus | form | RNC vs | n | " + " | ".join(m for m, _ in CLAIMS) + " |",
           "|---|---|---|---|" + "---|" * len(CLAIMS)]
  for corpus in corpora:
    for form in forms:
      for other in OTHERS:
        where = {"data.name": corpus, "loss_options.joint": form}
        n = (len(values(runs, "aoc", loss="rnc", **where)), len(values(runs, "aoc", loss=other, **where)))
        if not all(n):
          continue
        row = [cell(welch(values(runs, m, loss="rnc", **where), values(runs, m, loss=other, **where)), d)
               for m, d in CLAIMS]
        name = "joint" if form == "True" else "two-direction"
        lines.append(f"| {corpus} | {name} | {other} | {n[0]} / {n[1]} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def against_table(runs, reference_runs, reference: dict[str, str]) -> str:
  """Every group of ``runs`` (by its swept columns) minus the reference group of ``reference_runs``."""
  metrics = [m for m, _ in CLAIMS]
  columns = list(runs[0])  # summary.csv: run, status, error, step, the swept keys (seed among them), metrics_from, ...
  swept = [c for c in columns[columns.index("step") + 1:columns.index("metrics_from")] if c != "seed"]
  groups = {}
  for r in runs:
    groups.setdefault(tuple(r.get(c, "") for c in swept), []).append(r)
  lines = ["| " + " | ".join(swept) + " | n | " + " | ".join(f"{m} (mean, minus reference)" for m in metrics) + " |",
           "|" + "---|" * (len(swept) + 1 + len(metrics))]
  for key, members in sorted(groups.items()):
    corpus = dict(zip(swept, key, strict=True)).get("data.name", reference.get("data.name"))
    ref = {**reference, "data.name": corpus}
    row = []
    for m, direction in CLAIMS:
      own = [float(r[m]) for r in members if r.get(m, "")]
      mean = f"{np.mean(own):.3f}" if own else "–"
      row.append(f"{mean}; {cell(welch(own, values(reference_runs, m, **ref)), direction)}")
    lines.append("| " + " | ".join(key) + f" | {len(members)} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("sweep_dir", help="ROOT/paper_table (summarised), or another sweep's directory with --against")
  parser.add_argument("--against", default="", help="a summarised paper_table directory: compare every group of "
                      "SWEEP_DIR with its loss=rnc two-direction group of the same corpus")
  args = parser.parse_args(argv)
  runs = read_runs(args.sweep_dir)
  if not runs:
    raise SystemExit(f"{args.sweep_dir}: no finished runs in summary.csv")
  if args.against:
    print(against_table(runs, read_runs(args.against), {"loss": "rnc", "loss_options.joint": "False"}))
  else:
    print(claims_table(runs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
