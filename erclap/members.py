"""Members: K runs of one config trained together in one program, each a run of its own.

``config.members`` holds tuple-valued keys (``MEMBER_KEYS``), each empty (not varied) or of one common length K.
Member k is the run of the config with member k's values in place of the keys they stand for
(``member_config``): its seed (parameter init, dropout, evaluation draws), peak learning rate, initial temperature,
whether the temperature learns, and the loss weights that enter only as values. Every member reads the program's
one data order (``config_lib.data_seed``: ``data.seed``, else the program's ``seed``), so member k equals the
standalone run of ``member_config(config, k)``.

This module is the table and its arithmetic on configs: which config key a member key replaces and how it enters
the program (``MemberKey.enters``: at initialisation, in the optimizer, in the loss), the per-member values the
train step reads as traced arrays (``hyper``, never Python branches), the loss options with those values in place
(``loss_options``), the problems of a member set (``problems``), where member k's outputs live (``directory``).
How the program holds them (a leading member axis on what trains, the frozen rest shared) is ``erclap.state``;
the vmapped step ``erclap.step``; evaluation, export and the loop read member configs from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from erclap import config_lib

MEMBERS_DIR = "members"  # <workdir>/members/<k>/: member k's evaluation, TensorBoard run, export, best checkpoint
BEST_FILE = "best_checkpoint.json"  # member k's best checkpoint by checkpoint.best_metric (written by the loop)


def _number(value) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seed_problem(value, config) -> str | None:
  del config
  return None if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 31 else \
      "a seed is a whole number in [0, 2**31)"


def _positive(value, config) -> str | None:
  del config
  return None if _number(value) and value > 0 else "must be a number > 0"


def _bool(value, config) -> str | None:
  del config
  return None if isinstance(value, bool) else "must be True or False"


def _lambda_problem(value, config) -> str | None:
  if not (_number(value) and value >= 0):
    return "must be a number >= 0"
  if value != 1 and not config.loss_options.joint:
    return "weighs the same-modality rows of the joint form: set config.loss_options.joint=True"
  return None


def _rank_weights_problem(value, config) -> str | None:
  n = len(config.loss_options.rank_labels)
  if not isinstance(value, tuple | list) or (value and (len(value) != n or not all(_number(w) and w >= 0
                                                                                  for w in value)
                                                        or max(value) <= 0)):
    return (f"one weight >= 0 per config.loss_options.rank_labels entry ({n}), not all 0; or () for equal "
            f"weights")
  return None


@dataclasses.dataclass(frozen=True)
class MemberKey:
  """One key of ``config.members``.

  Attributes:
    name: its name under ``config.members``.
    config_key: the dotted config key each of its values replaces in a member's config.
    enters: how it enters the program: "init" (the parameters a member starts from, its dropout keys and
      evaluation draws), "optimizer" or "loss".
    hyper: the name of the per-member traced value the train step reads ("" for one that enters at init only).
    problem: ``problem(value, config) -> why one member value is not allowed`` (None when it is).
  """
  name: str
  config_key: str
  enters: str
  hyper: str
  problem: Callable[[Any, Any], str | None]


MEMBER_KEYS: dict[str, MemberKey] = {key.name: key for key in (
    MemberKey("seeds", "seed", "init", "", _seed_problem),
    MemberKey("learning_rates", "train.learning_rate", "optimizer", "learning_rate", _positive),
    MemberKey("temperatures", "train.temperature_init", "init", "", _positive),
    MemberKey("learn_temperature", "train.learn_temperature", "optimizer", "learn_temperature", _bool),
    MemberKey("same_modality_weights", "loss_options.same_modality_weight", "loss", "same_modality_weight",
              _lambda_problem),
    MemberKey("rank_label_weights", "loss_options.rank_label_weights", "loss", "rank_label_weights",
              _rank_weights_problem),
)}


def key_named(name: str) -> MemberKey:
  """The member key called ``name`` (``"seeds"``) or standing for the config key ``name`` (``"seed"``,
  ``"train.learning_rate"``); ValueError naming the member keys when there is none."""
  for key in MEMBER_KEYS.values():
    if name in (key.name, key.config_key):
      return key
  raise ValueError(f"{name!r} cannot vary between the members of one program: a member varies only "
                   f"{', '.join(f'{k.config_key} (members.{k.name})' for k in MEMBER_KEYS.values())}; what changes "
                   f"shapes or the program (batch size, towers, loss, mesh) is a separate run")


def _section(config) -> Mapping:
  return config.get("members") or {}


def varied(config) -> tuple[MemberKey, ...]:
  """The member keys ``config`` varies (non-empty), in table order."""
  section = _section(config)
  return tuple(key for key in MEMBER_KEYS.values() if tuple(section.get(key.name, ())))


def count(config) -> int:
  """K, the number of members (0: an ordinary run, no member keys set). Unequal lengths count the longest
  (``problems`` names them)."""
  section = _section(config)
  return max((len(tuple(section.get(key.name, ()))) for key in MEMBER_KEYS.values()), default=0)


def values(config, name: str) -> tuple:
  """Every member's value of member key ``name``: its own when varied, else the config's value K times."""
  key = MEMBER_KEYS[name]
  own = tuple(_section(config).get(name, ()))
  if own:
    return own
  return (config_lib.get(config, key.config_key),) * count(config)


def member_values(config, k: int) -> dict[str, Any]:
  """{config key: member k's value} of the keys ``config`` varies."""
  return {key.config_key: _plain(tuple(_section(config)[key.name])[k]) for key in varied(config)}


def _plain(value):
  """A member value as a config takes it (tuples of tuples for per-member tuples)."""
  return tuple(value) if isinstance(value, list | tuple) else value


def member_config(config, k: int):
  """The standalone config of member ``k``: ``config`` with member k's values in place (``member_values``), the
  program's data order made explicit (``data.seed``) and no members. Frozen when ``config`` is (a resolved config
  stays resolved).

  Args:
    config: a config with members.
    k: the member, 0 <= k < ``count(config)``.
  """
  n = count(config)
  if not 0 <= k < n:
    raise ValueError(f"member {k}: the config has {n} member(s)")
  overrides = dict(member_values(config, k))
  overrides["data.seed"] = config_lib.data_seed(config)
  overrides.update({f"members.{name}": () for name in MEMBER_KEYS})
  plain = config.as_configdict() if isinstance(config, ml_collections.FrozenConfigDict) else config
  out = config_lib.apply_overrides(plain, overrides, f"member {k}")
  return ml_collections.FrozenConfigDict(out) if isinstance(config, ml_collections.FrozenConfigDict) else out


def problems(config, reads: Sequence[str] | None = None) -> list[str]:
  """What ``config.members`` cannot do, one message per problem, each naming the key.

  Args:
    config: the config.
    reads: the config keys the config's stage reads among the members' (None: all); a member key standing for
      another is refused (the stage would ignore it).
  """
  section = _section(config)
  if not isinstance(section, Mapping | ml_collections.ConfigDict):
    return []
  lengths = {key.name: len(tuple(section.get(key.name, ()))) for key in MEMBER_KEYS.values()}
  set_lengths = {name: n for name, n in lengths.items() if n}
  out = []
  n = section.get("at_once", -1)
  if not (isinstance(n, int) and n >= -1):
    out.append(f"config.members.at_once={n!r}: must be -1 (by the platform), 0 (all at once) or a count > 0")
  if len(set(set_lengths.values())) > 1:
    out.append("config.members: every member key that is set holds one value per member, the same number K; got "
               + ", ".join(f"members.{name} {n}" for name, n in set_lengths.items()))
  for key in varied(config):
    if reads is not None and key.config_key not in reads:
      out.append(f"config.members.{key.name}: this stage does not read config.{key.config_key}; leave it empty")
      continue
    for k, value in enumerate(tuple(section[key.name])):
      why = key.problem(_plain(value), config)
      if why:
        out.append(f"config.members.{key.name}[{k}]={value!r}: {why}")
  return out


def hyper(config) -> dict[str, np.ndarray]:
  """The per-member values the train step reads, as arrays with a leading member axis: {``MemberKey.hyper``:
  (K,) or (K, L)} of the varied keys that enter after initialisation. The learning rate is the schedule's peak,
  ``learn_temperature`` a 0 / 1 factor on the temperature's gradient, the loss weights float32 values (equal
  weights for an empty ``rank_label_weights`` value)."""
  out = {}
  for key in varied(config):
    if not key.hyper:
      continue
    raw = [_plain(v) for v in _section(config)[key.name]]
    if key.name == "rank_label_weights":
      n = len(config.loss_options.rank_labels)
      raw = [v if v else (1.0,) * n for v in raw]
    out[key.hyper] = np.asarray(raw, np.float32)
  return out


def loss_options(config, member_hyper: Mapping[str, Any]) -> Mapping[str, Any]:
  """``config.loss_options`` with the member's traced loss weights in place (``member_hyper``: one member's slice
  of ``hyper``), for the loss; ``config.loss_options`` itself when no loss weight varies."""
  loss_keys = [key for key in varied(config) if key.enters == "loss" and key.hyper in member_hyper]
  if not loss_keys:
    return config.loss_options
  options = dict(config.loss_options.items())
  for key in loss_keys:
    options[key.config_key.split(".", 1)[1]] = member_hyper[key.hyper]
  return options


def at_once(config, platform: str, sharded: bool = False) -> int:
  """How many members the train step computes at once (``members.at_once``; -1 resolved for ``platform``): 0 = all
  (``jax.vmap``), n > 0 = n at a time (``jax.lax.map``). ``sharded``: the member axis maps onto a mesh axis (then
  all at once)."""
  n = int(_section(config).get("at_once", -1))
  if n >= 0:
    return n
  return 0 if sharded or platform != "cpu" else 1


def directory(workdir: str, k: int) -> str:
  """``<workdir>/members/<k>``: member k's run directory."""
  return os.path.join(workdir, MEMBERS_DIR, str(int(k)))


def selected(config) -> list[int]:
  """The members ``--mode=export`` / ``eval`` write: ``export.member``'s alone, else every one."""
  k = int(config.export.get("member", -1))
  return [k] if k >= 0 else list(range(count(config)))
