"""Hyper-parameter sweeps as code: each module here defines one sweep for ``launch/sweep.py``.

A sweep module has
  * ``base_config``: the config file its runs start from (a path relative to the repository root);
  * ``get_sweep() -> list[dict[str, value]]``: one dict of config overrides (dotted keys) per run, usually
    built with :func:`product`; the workdir of a run is named from these overrides;
  * optionally ``fixed``: overrides applied to every run that do not appear in workdir names.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """The Cartesian product of the axes, as override dicts (the last axis varies fastest).

  ``product({"a": (1, 2), "b": (3,)}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]``.
  """
  for key, values in axes.items():
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
      raise ValueError(f"sweep axis {key!r}: give a non-empty list or tuple of values, got {values!r}")
  keys = list(axes)
  return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]
