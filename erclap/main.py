r"""ERCLAP command line: one program for every stage and mode.

  python -m erclap.main --config=configs/demo.py --workdir=workdirs/demo --mode=all
  python -m erclap.main --config=configs/tpu_v4.py --workdir=gs://bucket/run1 \
      --config.train.global_batch_size=2048

Modes: ``train`` (resumes from the workdir when it holds checkpoints), ``eval`` (evaluate a checkpoint
on the test split), ``export`` (embeddings, metrics and plots under workdir/export), ``all`` (train, then
evaluate and export: the demo). ``config.stage`` picks the cross-modal stage (``clap``) or stage-1
speech-emotion pre-training (``ser``).
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from erclap import cache_speech, config_lib, demo, distributed, evaluate, export, train

_MODES = {
    "train": train.train_and_evaluate,
    "eval": evaluate.evaluate_checkpoint,
    "export": export.export_embeddings,
    "all": demo.run_all,
    "cache_speech": cache_speech.cache_speech_features,
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, exports and logs.")
flags.DEFINE_enum("mode", "train", list(_MODES), "What to run.")

_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def _parse_flags(argv):
  """absl flag parsing with one-line errors (unknown config keys, bad config files) instead of tracebacks."""
  try:
    return FLAGS(argv)
  except SystemExit as e:
    # absl exits with status 1 after printing help; a help request that succeeded is status 0 here.
    if e.code == 1 and any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    # Name the whole dotted key of the offending override, not only its last part.
    overrides = [a.split("=", 1)[0][2:] for a in argv[1:] if a.startswith("--config.")]
    bad = [o for o in overrides if isinstance(e, AttributeError | KeyError)
           and any(f"'{part}'" in msg for part in o.split(".")[1:])]
    where = f" (override --{bad[0]}: no such config key)" if bad else ""
    sys.exit(f"FATAL config error{where}: {msg}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  config = FLAGS.config
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f"FATAL {e}")
  distributed.initialize(config.distributed)  # before any backend use (importing jax is fine)
  logging.info("JAX %s: process %d/%d, devices: %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())
  workdir = FLAGS.workdir
  if "://" not in workdir:  # local: Orbax requires absolute paths
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
  _MODES[FLAGS.mode](config, workdir)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
