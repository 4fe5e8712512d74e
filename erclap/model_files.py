"""A model directory's files by name, whether a path is a model directory, and where ``--mode=export_model`` may
write one: the path checks alone, which resolution runs before any work (``erclap.resolve``) and the export again
before it writes (``erclap.model_export`` writes and reads the directories).
"""

from __future__ import annotations

import json
import os

from erclap import checkpointing

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT_KEY = "erclap_model_format"  # the key of config.json that makes a directory a model directory


def is_model_dir(path) -> bool:
  """Whether ``path`` is a directory ``model_export.write_model_dir`` wrote, intact or not: its ``config.json`` names
  ``erclap_model_format``, or it holds the manifest or ``params.safetensors``."""
  path = str(path)
  if os.path.isfile(os.path.join(path, MANIFEST_FILE)) or os.path.isfile(os.path.join(path, PARAMS_FILE)):
    return True
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(file):
    return False
  try:
    with open(file) as f:
      return FORMAT_KEY in json.load(f)
  except (OSError, ValueError, TypeError):  # unreadable, not JSON, not an object
    return False


def model_dir_path(config, workdir: str) -> str:
  """Where ``--mode=export_model`` writes: ``config.export.model_dir``, else ``<workdir>/model``."""
  return config.export.get("model_dir", "") or os.path.join(workdir, "model")


def target_problem(model_dir: str, workdir: str | None = None) -> str | None:
  """Why ``model_dir`` must not be (re)written as a model directory, or None when it may.

  It may when it does not exist, is an empty directory, or is a model directory (``is_model_dir``: replaced
  whole once the new one is complete). Refused: a file; any other existing directory (its files would be
  deleted); and, given the run's ``workdir``, the workdir itself, an ancestor of it, or a path inside its
  checkpoints.
  """
  target = os.path.abspath(model_dir)
  fix = "set --config.export.model_dir to a new path (or leave it empty for <workdir>/model)"
  if workdir is not None and "://" not in workdir:
    workdir = os.path.abspath(workdir)
    checkpoints = checkpointing.checkpoint_dir(workdir)
    if target == workdir or workdir.startswith(target.rstrip(os.sep) + os.sep):
      what = "the workdir" if target == workdir else f"an ancestor of the workdir {workdir}"
      return f"export.model_dir={model_dir!r} is {what}: exporting there would replace the run's files; {fix}"
    if target == checkpoints or target.startswith(checkpoints + os.sep):
      return f"export.model_dir={model_dir!r} is inside the run's checkpoints ({checkpoints}); {fix}"
  if os.path.exists(target) and not os.path.isdir(target):
    return f"export.model_dir={model_dir!r} is a file: move it away, or {fix}"
  if os.path.isdir(target) and os.listdir(target) and not is_model_dir(target):
    return (f"export.model_dir={model_dir!r} is an existing directory that is not an ERCLAP model directory (no "
            f"{CONFIG_FILE} naming {FORMAT_KEY}, no {MANIFEST_FILE}): exporting there would delete its files, "
            f"so nothing was written; {fix}, or move that directory away")
  return None
