"""Corpus labels -> synthetic LLM-style descriptions (JSONL), written offline without an LLM.

Writes ``{"id": ..., "descriptions": [...]}`` lines (``erclap.descriptions.synthesize_corpus``: free-form
sentences drawn from each clip's exact values, every clip's first description distinct from every other
description of the file); train with ``--config.data.descriptions=<that file>``. The corpus flags are those of
``make_description_requests``.

  python -m erclap.tools.synthesize_descriptions --data_name=embedded --splits=train,validation,test --num=4 \\
      --output=descriptions.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator

from erclap import data, descriptions, progress
from erclap.tools.make_description_requests import add_corpus_arguments, corpus_data_config, corpus_labels

PROGRESS_EVERY = 10_000  # clips between progress lines within a split


def _with_progress(rows: Iterable[tuple[str, str, float, float, float]]) -> Iterator[tuple[str, float, float, float]]:
  """(split, id, a, v, d) rows -> (id, a, v, d), printing each split's count as it goes."""
  split, count = None, 0
  for row in rows:
    if row[0] != split:
      if split is not None:
        progress.print_line(f"[synthesize_descriptions] {split}: {count} clips")
      split, count = row[0], 0
    count += 1
    if count % PROGRESS_EVERY == 0:
      progress.print_line(f"[synthesize_descriptions] {split}: {count} clips ...")
    yield row[1:]
  if split is not None:
    progress.print_line(f"[synthesize_descriptions] {split}: {count} clips")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m erclap.tools.synthesize_descriptions",
                                   description=__doc__.split("\n\n")[0])
  add_corpus_arguments(parser)
  parser.add_argument("--output", required=True, help="JSONL file to write")
  parser.add_argument("--num", type=int, default=4, help="descriptions per clip")
  parser.add_argument("--seed", type=int, default=0, help="seed of the draws (with each clip's id)")
  args = parser.parse_args(argv)
  if args.num < 1:
    parser.error("--num must be >= 1")

  data_config = corpus_data_config(args)
  data.ensure_dataset(data_config)
  table = descriptions.synthesize_corpus(_with_progress(corpus_labels(data_config, args.splits)), num=args.num,
                                         seed=args.seed)
  if not table:
    raise SystemExit(f"error: --splits={args.splits!r} holds no clips")
  descriptions.write_jsonl(args.output, table)
  distinct = len({text for texts in table.values() for text in texts})
  progress.print_line(f"wrote {args.output}: {len(table)} clips, {sum(map(len, table.values()))} descriptions, "
                      f"{distinct} distinct texts, {len({texts[0] for texts in table.values()})} distinct first "
                      f"descriptions")
  return 0


if __name__ == "__main__":
  sys.exit(main())
