"""The one validation of a config: every problem at once, each naming its key, before any corpus or model is built.

``problems(config, devices)`` lists
* the values of every key with a fixed set of them, against the registry that defines the set (``_choices``:
  stages, registered losses, similarities and label distances, corpora, architectures and sizes, poolings,
  speech representations, dtypes, checkpoint modes), read when called, so a loss registered with
  ``losses.register`` validates like the built-in ones;
* the numbers (``config_lib.value_problems``: finite, in range), the label names, ``checkpoint.best_metric`` (a
  renamed metric, or one the stage's evaluation does not give under the config: ``Stage.metric_names``), the
  level-prompt wordings (at most the distinct wordings of ``erclap.descriptions``), a rebuild without its source;
* what trains (``trainable.problems``) and where the speech comes from (``speech_source.of(config).problems``);
* the members of a program with members (``members.problems``: equal lengths, each value, keys the stage reads;
  here: seeds only where nothing frozen is initialised from the seed, the member axis on no batch axis);
* with ``devices`` (a run: ``Devices.current()``): the values a config file left to the command line
  (``config_lib.required_problems``) and whether the mesh and the batch sizes fit the devices and processes
  (``config_lib.device_problems``).

Without ``devices`` it checks what a config file, a sweep's run or a recipe's stage-1 config can be checked for
before its command line and its machine are known (``launch/sweep.py``, ``erclap.resolve.stage1_config``).
``erclap.resolve`` runs it for every mode, with the run's devices; tests run the same function with any count.
"""

from __future__ import annotations

import dataclasses
import difflib

import jax
import ml_collections

from erclap import (
    checkpointing,
    config_lib,
    data,
    descriptions,
    losses,
    members,
    models,
    sharding,
    speech_source,
    stages,
    trainable,
)
from erclap.schema import LABEL_NAMES, renamed_metric_message


@dataclasses.dataclass(frozen=True)
class Devices:
  """The devices a config must fit: all of the run's, its processes, and this process's (None: count /
  processes)."""
  count: int
  processes: int = 1
  local: int | None = None

  @classmethod
  def current(cls) -> Devices:
    """This run's devices (initialises the JAX backend)."""
    return cls(jax.device_count(), jax.process_count(), jax.local_device_count())


def _choices() -> dict[str, tuple]:
  """{dotted key: its allowed values}, each read from the registry that defines them."""
  return {
      "stage": tuple(stages.STAGES),
      "loss": tuple(losses.LOSSES),
      "loss_options.similarity": tuple(losses.SIMILARITIES),
      "loss_options.label_distance": tuple(losses.LABEL_DISTANCES),
      "loss_options.rank_terms": tuple(losses.RANK_TERMS),
      "data.name": tuple(data.CORPORA),
      "model.size": tuple(models.SIZES),
      "model.speech_arch": tuple(models.SPEECH_TYPES),
      "model.text_arch": tuple(models.TEXT_ARCHS),
      "model.speech_pooling": tuple(models.POOLINGS),
      "model.speech_representation": tuple(models.SPEECH_REPRESENTATIONS),
      "model.text_pooling": tuple(models.TEXT_POOLINGS),
      "model.dtype": tuple(models.DTYPES),
      "checkpoint.best_mode": tuple(checkpointing.BEST_MODES),
  }


def _choice_problems(config) -> list[str]:
  problems = []
  for key, choices in _choices().items():
    value = config_lib.get(config, key)
    if value not in choices:
      problems.append(f"config.{key}={value!r}: must be one of {choices}")
  return problems


def _named_value_problems(config) -> list[str]:
  """Label names, metric names, the prompt wordings and the corpus source: the values checked against a list of
  their own."""
  problems = []
  bad = [n for n in config.loss_options.rank_labels if n not in LABEL_NAMES]
  if bad or not config.loss_options.rank_labels:
    problems.append(f"config.loss_options.rank_labels={tuple(config.loss_options.rank_labels)!r}: "
                    f"choose a non-empty subset of {LABEL_NAMES}")
  renamed = renamed_metric_message(config.checkpoint.best_metric)
  if renamed:
    problems.append(f"config.checkpoint.best_metric={config.checkpoint.best_metric!r}: {renamed}")
  elif config.checkpoint.best_metric and config.stage in stages.STAGES:  # an unknown stage is named elsewhere
    problems += _best_metric_problems(config)
  wordings = config.eval.prompt_wordings
  if wordings > descriptions.NUM_VARIANTS or wordings != int(wordings):  # more would only repeat wordings
    problems.append(f"config.eval.prompt_wordings={wordings!r}: must be a whole number of at most "
                    f"{descriptions.NUM_VARIANTS} (the distinct template wordings of a level; more only repeat them)")
  d = config.data
  corpus = data.CORPORA.get(d.name)  # an unknown name is named above
  if d.rebuild and corpus is not None and corpus.licensed and not d.manual_dir:  # a synthesised one needs no source
    problems.append(f"config.data.rebuild=True: rebuilding {d.name} needs config.data.manual_dir (the licensed "
                    f"corpus to rebuild from)")
  return problems


def _best_metric_problems(config) -> list[str]:
  """``checkpoint.best_metric`` against the names the stage's evaluation gives under ``config``
  (``Stage.metric_names``), so that a bad name stops the run before it trains, not at its first evaluation."""
  stage, best = stages.of(config), config.checkpoint.best_metric
  names = stage.metric_names(config)
  if best in names:
    return []
  close = difflib.get_close_matches(best, names, n=3, cutoff=0.6)
  hint = f"did you mean {' or '.join(repr(n) for n in close)}? " if close else ""
  if len(names) <= 12:
    known = f"they are {', '.join(names)}"
  else:
    known = f"e.g. {', '.join([n for n in stage.headline_metrics if n in names and '_ci95_' not in n][:6])}; all of " \
            f"them: docs/metrics.md#every-metric"
  return [f"config.checkpoint.best_metric={best!r}: not among the {len(names)} metrics the evaluation of "
          f"{stage.title} gives with this config; {hint}{known}"]


def _member_reads(config) -> set[str]:
  """The config keys among the member keys' (``members.MEMBER_KEYS``) that the config's stage reads."""
  stage = stages.of(config)
  reads = {"seed", "train.learning_rate"}
  if models.LOG_TEMPERATURE in stage.loss_params:
    reads |= {"train.temperature_init", "train.learn_temperature"}
  if stage is not stages.CLAP or config.loss in losses.LOSSES:
    reads |= {f"loss_options.{name}" for name in stage.loss_option_names(config)}
  return reads


def _member_problems(config) -> list[str]:
  """``members.problems``, and what the program cannot hold: a frozen part initialised from each member's seed
  (it is held once, shared), a member axis over the batch's mesh axes (every member reads the whole batch); an
  ``export.member`` that is not a member."""
  k, member = members.count(config), config.export.member
  if member >= max(k, 1) or (member >= 0 and not k):
    return [f"config.export.member={member}: " + (f"this run has {k} members (0..{k - 1})" if k else
                                                  "this run has no members (config.members); leave it at -1")]
  if not k:
    return []
  found = members.problems(config, _member_reads(config))
  if "seeds" in {key.name for key in members.varied(config)}:
    what, m, stage = trainable.of(config), config.model, stages.of(config)
    random = {"speech": (not what.trains(stage.speech_group[0]) and not (m.speech_init or config.recipe.stage1),
                         "the frozen speech side", "config.model.speech_init"),
              "text": (stage.has_text_tower and not what.trains(models.TEXT_TOWER) and not m.text_init,
                       "the frozen text tower", "config.model.text_init")}
    for frozen_at_random, what_part, key in random.values():
      if frozen_at_random:
        found.append(f"config.members.seeds: {what_part} is initialised at random from the seed ({key} is empty) "
                     f"and held once for all members, so the members would not be the runs of their seeds: set "
                     f"{key}, or run one program per seed")
  axis = sharding.member_mesh_axis(config.mesh.logical_axis_rules, tuple(config.mesh.axes))
  on_batch = [a for a in ((axis,) if isinstance(axis, str) else axis or ()) if a in sharding.BATCH_AXIS_NAMES]
  if on_batch:
    found.append(f"config.mesh.logical_axis_rules maps the member axis onto {on_batch}, over which the batch is "
                 f"split; every member reads the whole batch: map it onto an axis the batch is not split over "
                 f"(('member', 'tensor') with mesh.shape (1, 1, N)), or leave it replicated")
  if axis and config.members.at_once > 0:
    found.append(f"config.members.at_once={config.members.at_once}: the member axis is split over the mesh axis "
                 f"{axis!r} (config.mesh.logical_axis_rules), so every device computes its members at once: set 0 "
                 f"or -1")
  return found


def problems(config: ml_collections.ConfigDict, devices: Devices | None = None) -> list[str]:
  """Every problem of ``config`` (see the module docstring), one message per problem, each naming its key.

  Args:
    config: the config (a file with its overrides, or a resolved one).
    devices: the run's devices; None checks the config as a template (no required values, no devices).

  Returns:
    The messages, in a stable order; [] when the config is valid.
  """
  found = config_lib.required_problems(config) if devices is not None else []
  found += _choice_problems(config)
  found += config_lib.value_problems(config) + _named_value_problems(config)
  if config.stage in stages.STAGES:  # an unknown stage is named above; the rest needs one
    found += trainable.problems(config) + speech_source.of(config).problems(config) + _member_problems(config)
  if devices is not None:
    found += config_lib.device_problems(config, devices.count, devices.processes, devices.local,
                                        mesh_axes=sharding.MESH_AXES, batch_axes=sharding.BATCH_AXIS_NAMES)
  return list(dict.fromkeys(found))  # one message once


def title(devices: Devices | None) -> str:
  """The heading of a list of problems."""
  if devices is None:
    return "invalid config"
  return f"config does not fit {devices.count} device(s) in {devices.processes} process(es)"


def validate(config: ml_collections.ConfigDict, devices: Devices | None = None) -> ml_collections.ConfigDict:
  """``config`` when ``problems(config, devices)`` is empty; else one ``config_lib.ConfigError`` listing them."""
  config_lib.raise_problems(problems(config, devices), title(devices))
  return config
