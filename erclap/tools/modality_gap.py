"""Every modality-gap measure of existing exports, without retraining (definitions: docs/metrics.md).

Reads ``<split>_speech.npy``, ``<split>_text.npy`` and the ``description`` column of ``<split>.parquet`` from
each export directory (``--mode=export`` writes them under ``<workdir>/export``), and prints one table: a row
per export directory, a column per measure (``erclap.metrics.modality_gap_metrics``: mmd, mmd_fixed,
mmd_linear, centroid_distance, paired_cosine, wasserstein, wasserstein_sliced, wasserstein_centered and the
per-description centroid gap), with the number of clips. ``--json`` also writes them as
``{"split": ..., "exports": {<export dir>: {<measure>: value}}}``.

  python -m erclap.tools.modality_gap --export=workdirs/a/export --export=workdirs/b/export \\
      [--split=test] [--json=gap.json]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pyarrow.parquet as pq

from erclap import fileio, metrics, progress

_COUNT_COLUMNS = ("num_clips", "wasserstein_num_points", "num_descriptions")


def load_export(export_dir: str, split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(speech (N, D), text (N, D), descriptions (N strings)) of one split of an export directory.

  Raises:
    FileNotFoundError: a file of the split is missing (the message names its path).
    ValueError: the parquet has no ``description`` column, or the row counts disagree.
  """
  paths = {name: os.path.join(export_dir, f"{split}{suffix}")
           for name, suffix in (("speech", "_speech.npy"), ("text", "_text.npy"), ("table", ".parquet"))}
  for path in paths.values():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: not found (an export directory holds {split}_speech.npy, "
                              f"{split}_text.npy and {split}.parquet; --split picks the split)")
  speech, text = np.load(paths["speech"]), np.load(paths["text"])
  if "description" not in pq.read_schema(paths["table"]).names:
    raise ValueError(f"{paths['table']}: no 'description' column")
  descriptions = pq.read_table(paths["table"], columns=["description"]).column("description").to_pylist()
  if not len(speech) == len(text) == len(descriptions):
    raise ValueError(f"{export_dir}: {split}_speech.npy has {len(speech)} rows, {split}_text.npy {len(text)}, "
                     f"{split}.parquet {len(descriptions)}; they must agree")
  return speech, text, descriptions


def export_gap(export_dir: str, split: str = "test", *, seed: int = 0,
               exact_wasserstein_max_n: int = 2048) -> dict[str, float]:
  """{num_clips, every measure of ``metrics.modality_gap_metrics``} of one split of an export directory."""
  speech, text, descriptions = load_export(export_dir, split)
  return {"num_clips": float(len(speech)),
          **metrics.modality_gap_metrics(speech, text, descriptions, seed=seed,
                                         exact_wasserstein_max_n=exact_wasserstein_max_n)}


def format_table(results: dict[str, dict[str, float]]) -> str:
  """Rows = export directories, columns = measures (counts as integers, the others to 4 significant digits)."""
  columns = list(dict.fromkeys(key for row in results.values() for key in row))

  def cell(row: dict[str, float], key: str) -> str:
    if key not in row:
      return "-"
    return f"{row[key]:.0f}" if key in _COUNT_COLUMNS else f"{row[key]:.4g}"

  table = [["export", *columns]] + [[name, *(cell(row, key) for key in columns)] for name, row in results.items()]
  widths = [max(len(line[c]) for line in table) for c in range(len(table[0]))]
  lines = []
  for line in table:
    cells = [line[0].ljust(widths[0])] + [text.rjust(w) for text, w in zip(line[1:], widths[1:], strict=True)]
    lines.append("  ".join(cells))
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m erclap.tools.modality_gap", description=__doc__.split("\n\n")[0])
  parser.add_argument("--export", action="append", required=True, metavar="DIR",
                      help="an export directory (<workdir>/export); repeatable, one table row each")
  parser.add_argument("--split", default="test", help="the split whose files are read (default: test)")
  parser.add_argument("--json", default="", help="also write the values to this JSON file")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the median-heuristic, exact-W1 subset and sliced projections (as evaluation)")
  parser.add_argument("--exact_wasserstein_max_n", type=int, default=2048,
                      help="the exact W1 uses a seeded subset of this many pairs on larger splits")
  args = parser.parse_args(argv)
  try:
    results = {export_dir: export_gap(export_dir, args.split, seed=args.seed,
                                      exact_wasserstein_max_n=args.exact_wasserstein_max_n)
               for export_dir in args.export}
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  progress.print_line(format_table(results))
  if args.json:
    fileio.write_json(args.json, {"split": args.split, "exports": results})
  return 0


if __name__ == "__main__":
  sys.exit(main())
