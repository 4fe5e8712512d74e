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
from importlib import resources

from erclap import config_lib, data, descriptions, fileio
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


def _data_config(args):
  """config.data of configs/default.py with the corpus arguments and ``--set data-key=value`` overrides."""
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m erclap.tools.make_description_requests",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_name", default="embedded", help="embedded | msp_podcast | iemocap")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data dir ('' = $ERCLAP_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--manual_dir", default="", help="licensed corpus directory (msp_podcast, iemocap)")
  parser.add_argument("--splits", default="train,validation,test", help="comma-separated split names")
  parser.add_argument("--output", required=True, help="JSONL file to write")
  parser.add_argument("--num_descriptions", type=int, default=8, help="descriptions asked for per utterance")
  parser.add_argument("--prompt", default="",
                      help="prompt template file (default: erclap/descriptions_prompt.txt)")
  parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a config.data key, e.g. --set embedded.num_train=40 (repeatable)")
  args = parser.parse_args(argv)
  if args.num_descriptions < 1:
    parser.error("--num_descriptions must be >= 1")
  if args.prompt and not os.path.isfile(args.prompt):
    parser.error(f"--prompt file {args.prompt} not found")
  template = open(args.prompt, encoding="utf-8").read() if args.prompt else default_prompt()

  data_config = _data_config(args)
  data.ensure_dataset(data_config)
  count = 0
  with fileio.atomic_open(args.output, "w", encoding="utf-8") as f:
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
      source = data.get_data_source(data_config, split)
      for i in range(len(source)):
        r = source[i]
        a, v, d = (float(r[k]) for k in LABEL_NAMES)
        prompt = render_prompt(template, r["id"], a, v, d, args.num_descriptions)
        f.write(json.dumps(dict(id=r["id"], split=split, arousal=round(a, 4), valence=round(v, 4),
                                dominance=round(d, 4), prompt=prompt), ensure_ascii=False) + "\n")
        count += 1
  print(f"wrote {count} prompt requests to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
