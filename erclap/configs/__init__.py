"""ERCLAP configurations as code: each module has a ``get_config()`` (``default`` declares every key).

The files under the repository's top-level ``configs/`` are the user-facing entry points
(``--config=configs/demo.py``); each re-exports a module of this package. Inside the code a config is named
as ``"<module>[:<argument>]"`` (``"ser_pretrain:demo"``), like the files on the command line: ``get(name)``.
"""

from __future__ import annotations

import importlib


def get(name: str):
  """The config named ``"<module>[:<argument>]"``: ``erclap.configs.<module>.get_config([argument])``.

  Raises:
    ValueError naming ``name`` when there is no such config module.
  """
  module_name, _, argument = str(name).partition(":")
  if not module_name.isidentifier() or module_name == "sweeps":
    raise ValueError(f"config {name!r}: not a config name like 'ser_pretrain:demo'")
  try:
    module = importlib.import_module(f"{__name__}.{module_name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{module_name}":
      raise
    raise ValueError(f"config {name!r}: there is no erclap/configs/{module_name}.py") from None
  return module.get_config(argument) if argument else module.get_config()
