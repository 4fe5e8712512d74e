"""Hyper-parameter sweeps as code: each module here defines one sweep for ``launch/sweep.py``.

A sweep module has
  * ``base_config``: the config file its runs start from (a path relative to the repository root);
  * ``get_sweep() -> list[dict[str, value]]``: one dict of config overrides (dotted keys) per run, usually
    built with :func:`product`; the workdir of a run is named from these overrides;
  * optionally ``fixed``: overrides applied to every run that do not appear in workdir names;
  * optionally ``members``: member axes, ``{key: values}`` with keys a ``config.members`` key or the config key it
    stands for (``"seed"``, ``"train.learning_rate"``: ``erclap.members.MEMBER_KEYS``): every run becomes one
    program whose members are the product of these axes (``member_overrides``), each member a run of the summary.
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


def member_overrides(axes: Mapping[str, Sequence[Any]]) -> dict[str, tuple]:
  """The ``config.members`` overrides of member axes: their Cartesian product (``product``) as one tuple per
  member key, ``{"members.seeds": (0, 1, 0, 1), "members.learning_rates": (1e-3, 1e-3, 3e-3, 3e-3)}``; {} for none.

  Raises:
    ValueError: an axis names a key that cannot vary between members (``erclap.members.key_named``), or is empty.
  """
  from erclap import members  # the table; erclap.configs imports nothing else of erclap

  names = {}
  for key in axes:
    name = members.key_named(key).name
    if name in names.values():
      raise ValueError(f"member axis {key!r}: members.{name} is named twice")
    names[key] = name
  points = product(axes) if axes else []
  return {f"members.{names[key]}": tuple(point[key] for point in points) for key in axes}
