"""Corpus labels -> LLM prompt requests (JSONL), for writing speaking-style descriptions offline.

Each output line is ``{"id", "split", "arousal", "valence", "dominance", "prompt"}``; send each ``prompt`` to
any LLM, collect its one-line JSON answers (``{"id": ..., "descriptions": [...]}``) into a file, and train
with ``--config.data.descriptions=<that file>``. The prompt is ``erclap/descriptions_prompt.txt`` unless
``--prompt`` names another template (Python ``str.format`` fields: id, arousal, valence, dominance,
arousal_level, valence_level, dominance_level, num_descriptions).

  python -m erclap.tools.make_description_requests --data_name=embedded --splits=train,validation,test \\
      --output=requests.jsonl
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Iterator
from importlib import resources

from erclap import config_lib, data, descriptions, fileio, progress
from erclap.configs import default
from erclap.schema import LABEL_NAMES


def default_prompt() -> str:
  return resources.files("erclap").joinpath("descriptions_prompt.txt").read_text(encoding="utf-8")


def render_prompt(template: str, example_id: str, arousal: float, valence: float, dominance: float,
                  num_descriptions: int) -> str:
  return template.format(
      id=example_id, arousal=float(arousal), valence=float(valence), dominance=float(dominance),
      arousal_level=descriptions.level_word("arousal", arousal),
      valence_level=descriptions.level_word("valence", valence),
      dominance_level=descriptions.level_word("dominance", dominance), num_descriptions=int(num_descriptions))


def _literal(text: str):
  """A --set value: a Python literal (40, 0.3, (1, 2)), else the text itself (a name or path)."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
  """The corpus flags the description tools share: --data_name, --data_dir, --manual_dir, --splits, --set."""
  parser.add_argument("--data_name", default="embedded", help="embedded | msp_podcast | iemocap")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data dir ('' = $ERCLAP_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--manual_dir", default="", help="licensed corpus directory (msp_podcast, iemocap)")
  parser.add_argument("--splits", default="train,validation,test", help="comma-separated split names")
  parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a config.data key, e.g. --set embedded.num_train=40 (repeatable)")


def corpus_data_config(args):
  """config.data of configs/default.py with the corpus arguments and ``--set data-key=value`` overrides.

  Raises:
    SystemExit: a --set item is not key=value or names a bad key or value (before anything is built).
  """
  overrides = {"data.name": args.data_name, "data.data_dir": args.data_dir, "data.manual_dir": args.manual_dir}
  for item in args.set or []:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--set expects key=value, got {item!r}")
    overrides[f"data.{key}"] = _literal(value)
  try:
    return config_lib.apply_overrides(default.get_config(), overrides, "--set").data
  except config_lib.ConfigError as e:
    raise SystemExit(f"error: {e}") from None


def corpus_labels(data_config, splits: str) -> Iterator[tuple[str, str, float, float, float]]:
  """(split, id, arousal, valence, dominance) of every clip of the comma-separated ``splits``, in corpus order.

  Build the corpus first (``data.ensure_dataset``)."""
  for split in [s.strip() for s in splits.split(",") if s.strip()]:
    source = data.get_data_source(data_config, split)
    for i in range(len(source)):
      r = source[i]
      a, v, d = (float(r[k]) for k in LABEL_NAMES)
      yield split, r["id"], a, v, d


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m erclap.tools.make_description_requests",
                                   description=__doc__.split("\n\n")[0])
  add_corpus_arguments(parser)
  parser.add_argument("--output", required=True, help="JSONL file to write")
  parser.add_argument("--num_descriptions", type=int, default=8, help="descriptions asked for per utterance")
  parser.add_argument("--prompt", default="",
                      help="prompt template file (default: erclap/descriptions_prompt.txt)")
  args = parser.parse_args(argv)
  if args.num_descriptions < 1:
    parser.error("--num_descriptions must be >= 1")
  if args.prompt and not os.path.isfile(args.prompt):
    parser.error(f"--prompt file {args.prompt} not found")
  template = open(args.prompt, encoding="utf-8").read() if args.prompt else default_prompt()

  data_config = corpus_data_config(args)
  data.ensure_dataset(data_config)
  count = 0
  with fileio.atomic_open(args.output, "w", encoding="utf-8") as f:
    for split, example_id, a, v, d in corpus_labels(data_config, args.splits):
      prompt = render_prompt(template, example_id, a, v, d, args.num_descriptions)
      f.write(json.dumps(dict(id=example_id, split=split, arousal=round(a, 4), valence=round(v, 4),
                              dominance=round(d, 4), prompt=prompt), ensure_ascii=False) + "\n")
      count += 1
  progress.print_line(f"wrote {count} prompt requests to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
