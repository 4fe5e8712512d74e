r"""ERCLAP command line: one program for every stage and mode.

  python -m erclap.main --config=configs/demo.py --workdir=workdirs/demo --mode=all
  python -m erclap.main --config=configs/tpu_v4.py --workdir=gs://bucket/run1 \
      --config.train.global_batch_size=2048

Modes (``_MODES``: mode -> the function it runs):

* ``train`` (``recipe.run_train``): the config's stages in order, each resuming from the workdir;
* ``eval`` (``evaluate.evaluate_checkpoint``): the metrics of a checkpoint on the test split;
* ``export`` (``export.export_embeddings``): embeddings, metrics and plots under workdir/export;
* ``all`` (``recipe.run_all``): train, then export and print the metrics table (the demo);
* ``export_model`` (``model_export.export_model``): the portable model directory and its TF SavedModel;
* ``plan`` (``plan.run_plan``): compile the train step for ``config.plan.topology`` on simulated devices and
  report per-device memory, FLOPs and the step time a chip implies, without allocating anything;
* ``cache_speech`` (``speech_cache_mode.cache_speech_features``): the frozen speech representation of every clip;
* ``prepare_speech`` (``recipe.run_prepare_speech``): a two-stage config's stage 1 and its speech cache, without
  the cross-modal stage (what the runs of a sweep share, ``launch/sweep.py``).

``config.stage`` picks the cross-modal stage (``clap``) or stage-1 speech-emotion pre-training (``ser``)
(``erclap.stages``); ``config.recipe.stage1`` makes one run of both (``erclap.recipe``: stage 1, its frozen
speech features cached, the cross-modal stage on the cache), as configs/demo.py does.

Every mode holds the workdir lock (``erclap.workdir_lock``) for its whole run, so two runs never write one
workdir, and runs on the config ``erclap.resolve`` makes of the given one (validated against the devices before
any corpus or model is built, written to ``<workdir>/config.<mode>.json``), and records its state in
``<workdir>/status.json`` (``erclap.run_status``: running, then finished, failed or preempted). SIGTERM / SIGINT
end a run at once (outputs are written atomically, so only complete files remain), except that the training loop
of any stage checkpoints on SIGTERM first; either way the whole run stops there (no next stage, no export), with
exit status 128 + signal (143 for SIGTERM) and ``preempted`` in status.json, and the same command resumes it
(``erclap.signals``).
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from erclap import (
    checkpointing,
    config_lib,
    distributed,
    evaluate,
    export,
    model_export,
    plan,
    progress,
    recipe,
    resolve,
    run_status,
    signals,
    speech_cache_mode,
    workdir_lock,
)
from erclap.speech_cache import store

# Every mode resolve.MODES knows, and the function it runs (on the config resolved for it).
_MODES = {
    "train": recipe.run_train,
    "eval": evaluate.evaluate_checkpoint,
    "export": export.export_embeddings,
    "all": recipe.run_all,
    "export_model": model_export.export_model,
    "plan": plan.run_plan,
    "cache_speech": speech_cache_mode.cache_speech_features,
    "prepare_speech": recipe.run_prepare_speech,
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, exports and logs.")
flags.DEFINE_enum("mode", "train", list(resolve.MODES), "What to run.")

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
    sys.exit(f"FATAL config error: {_config_error_message(e, argv)}")


def _config_error_message(e: Exception, argv) -> str:
  """The error of a bad ``--config.KEY=VALUE`` override, naming its whole dotted key.

  ml_collections names only the missing part (``KeyError('no_such_key')``); the override whose dotted
  key holds that part is the one at fault."""
  msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
  if not isinstance(e, AttributeError | KeyError):
    return msg
  overrides = [a.split("=", 1)[0].removeprefix("--config.") for a in argv[1:] if a.startswith("--config.")]
  for key in overrides:
    if f"lookup: {key}" in msg or any(msg == part or f"'{part}'" in msg for part in key.split(".")):
      hint = msg[msg.index("Did you mean"):] if "Did you mean" in msg else ""
      return f"--config.{key}: no such config key {key!r}" + (f" ({hint})" if hint else "")
  return msg


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  config = FLAGS.config
  mode = FLAGS.mode
  if mode == "plan":
    try:
      plan.prepare_devices(config)  # simulated devices of the planned topology: before any backend use
    except (ValueError, RuntimeError) as e:
      sys.exit(f"FATAL {e}")
  distributed.initialize(config.distributed)  # before any backend use (importing jax is fine)
  logging.info("JAX %s: process %d/%d, devices: %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())
  workdir = FLAGS.workdir
  if "://" not in workdir:  # local: Orbax requires absolute paths
    workdir = os.path.abspath(workdir)
  with contextlib.ExitStack() as stack:
    lock = workdir_lock.WorkdirLock(workdir)
    # First, so that a signal before the lock is taken, or while it is held, unwinds through its release.
    stack.enter_context(signals.stop_on_signals(mode, on_exit=lock.release))
    try:
      stack.enter_context(lock)  # before anything touches the workdir (it creates a missing one)
      stack.enter_context(run_status.recorded(workdir, mode, config))  # status.json: running, then how it ended
      _MODES[mode](resolve.resolve(config, workdir, mode), workdir)
    except (workdir_lock.WorkdirLockedError, config_lib.ConfigError, checkpointing.CheckpointMismatchError,
            store.SpeechCacheError) as e:
      sys.exit(f"FATAL {e}")  # each names the input at fault and the fix: no traceback
    except signals.StopRequested as e:
      progress.print_line(f"[{mode}] {e}.", file=sys.stderr)
      sys.exit(signals.exit_status(e))


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
