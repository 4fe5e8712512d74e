"""What a run trains: one frozen value, decided from the resolved config and read by everything that depends on it.

``of(config)`` is the only reading of the freezing settings:

* ``model.freeze_speech``: the speech group (the stage's ``speech_group``: in the cross-modal stage the whole
  speech path, tower -> pooling -> SER head; in stage 1 the tower) is frozen;
* ``model.train_speech_pooling`` (with ``freeze_speech``): only the speech tower is frozen; the pooling and, when
  ``model.speech_representation`` reads it, the SER head train on the frozen tower's output (in the head group);
* ``model.freeze_text``: the text tower is frozen;
* ``train.learn_temperature=False``: the temperature stays at ``train.temperature_init``. In a program with
  members (``erclap.members``) whose ``members.learn_temperature`` varies, the temperature group trains when some
  member's does (the others' gradient is multiplied by 0 in the step).

Top-level parameters fall into the optimizer groups ``GROUPS`` (``Trainable.group``): the speech group, the text
tower, the log temperature, and everything else (the heads, which always train). From the value derive the
optimizer's per-group transforms and its moments (``erclap.optim``: a frozen group gets neither), the train step's
frozen view (``frozen_view``: ``stop_gradient``, so XLA drops the frozen parts' backward pass), the plan's gradient
bytes (``trained``), and whether a speech-feature cache can stand for the speech path (``cached``: only a wholly
frozen speech path has one representation per clip for the whole run; ``erclap.speech_source`` and the cache's
fingerprint read it). ``problems(config)`` is what ``erclap.validation`` checks of these settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import jax

from erclap import members, models, stages
from erclap.models import LOG_TEMPERATURE, SER_HEAD, SPEECH_PATH, SPEECH_POOL, SPEECH_TOWER, TEXT_TOWER

GROUPS = ("speech", "text", "temperature", "head")


@dataclasses.dataclass(frozen=True)
class Trainable:
  """What trains, by top-level parameter name (see the module docstring).

  Attributes:
    speech_group: the top-level parameters of the "speech" optimizer group (``train.speech_lr_multiplier``).
    trained_groups: the optimizer groups that train.
    cached: the top-level parameters of the speech path a speech-feature cache may stand for, in path order: the
      whole path when it is frozen, else () (nothing of a path that trains can come from a cache).
    uncached_because: why ``cached`` is () (naming the config keys), "" when it is not.
    summary: a few words on the speech side for run titles ("frozen", "tower frozen, pooling trained", "trained").
  """
  speech_group: tuple[str, ...]
  trained_groups: frozenset[str]
  cached: tuple[str, ...]
  uncached_because: str
  summary: str

  def group(self, name: str) -> str:
    """The optimizer group of the top-level parameter ``name``: speech / text / temperature / head."""
    if name in self.speech_group:
      return "speech"
    return {TEXT_TOWER: "text", LOG_TEMPERATURE: "temperature"}.get(name, "head")

  def trains(self, name: str) -> bool:
    """Whether the top-level parameter ``name`` trains."""
    return self.group(name) in self.trained_groups

  def mask(self, names: Iterable[str]) -> dict[str, bool]:
    """{top-level parameter name: whether it trains}."""
    return {name: self.trains(name) for name in names}

  def trained(self, params: Mapping) -> dict:
    """The entries of a parameter tree (or of its shapes, shardings ...) that train."""
    return {k: v for k, v in params.items() if self.trains(k)}

  def frozen_view(self, params: Mapping) -> dict:
    """``params`` with ``jax.lax.stop_gradient`` on every top-level entry that does not train (so XLA drops
    their backward pass entirely)."""
    return {k: (v if self.trains(k) else jax.lax.stop_gradient(v)) for k, v in params.items()}


def _speech_path(config) -> tuple[str, ...]:
  """The speech path parameters the cross-modal model has under ``config``: the tower; the pooling when it has
  parameters; the SER head when the speech representation reads it."""
  m = config.model
  present = {SPEECH_TOWER: True, SPEECH_POOL: m.speech_pooling in models.TRAINABLE_POOLINGS,
             SER_HEAD: m.speech_representation != "pooled"}
  return tuple(name for name in SPEECH_PATH if present[name])


def of(config) -> Trainable:
  """The ``Trainable`` of ``config`` (its stage and freezing settings): a pure function of the config."""
  stage, m = stages.of(config), config.model
  pooling_trains = bool(m.freeze_speech and m.train_speech_pooling)
  trained = {"speech": not m.freeze_speech, "text": not m.freeze_text,
             "temperature": any(members.values(config, "learn_temperature")) if members.count(config)
             else bool(config.train.learn_temperature), "head": True}
  value = Trainable(speech_group=(SPEECH_TOWER,) if pooling_trains else stage.speech_group,
                    trained_groups=frozenset(g for g in GROUPS if trained[g]), cached=(), uncached_because="",
                    summary="trained" if not m.freeze_speech else
                    ("tower frozen, pooling trained" if pooling_trains else "frozen"))
  path = _speech_path(config)
  moving = [name for name in path if value.trains(name)]
  if not stage.reads_speech_cache:
    because = f"{stage.title} reads audio (config.stage={stage.name!r})"
  elif not m.freeze_speech:
    because = "config.model.freeze_speech=False: the speech path trains"
  elif moving:
    because = (f"config.model.train_speech_pooling=True: {' and '.join(moving)} train{'s' * (len(moving) == 1)} on "
               f"the frozen tower's output")
  else:
    return dataclasses.replace(value, cached=path)
  return dataclasses.replace(value, uncached_because=because)


def problems(config) -> list[str]:
  """What the freezing settings of ``config`` cannot do (one message per problem, naming the keys)."""
  stage, m = stages.of(config), config.model
  if not m.train_speech_pooling:
    return []
  if not m.freeze_speech:
    return ["config.model.train_speech_pooling=True trains the pooling on a frozen speech tower: set "
            "config.model.freeze_speech=True too (without it the whole speech path trains already)"]
  if stage.speech_group == (SPEECH_TOWER,):
    return [f"config.model.train_speech_pooling=True: {stage.title} always trains its pooling and head on the "
            f"tower (config.model.freeze_speech=True freezes the tower alone); set it False"]
  if _speech_path(config) == (SPEECH_TOWER,):
    return [f"config.model.train_speech_pooling=True: nothing after the tower has parameters "
            f"(config.model.speech_pooling={m.speech_pooling!r}, config.model.speech_representation="
            f"{m.speech_representation!r}); use a pooling among {models.TRAINABLE_POOLINGS} or a representation "
            f"that reads the SER head"]
  return []
