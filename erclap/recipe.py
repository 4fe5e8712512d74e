"""The training modes: ``--mode=train`` runs the config's stages in order, ``--mode=all`` trains, then exports;
``--mode=prepare_speech`` makes a two-stage config's speech side alone (stage 1 and its cache).

  python -m erclap.main --config=configs/demo.py --workdir=workdirs/demo --mode=all

A one-stage config is its own run. With ``config.recipe.stage1`` naming a stage-1 config (``"ser_pretrain:demo"``),
one workdir holds the two stages of the paper's recipe, which ``run_train`` runs top-down:

  1. stage 1 (``<workdir>/stage1/``): the SER run (speech tower + pooling + attribute head; CCC + ranking losses),
     its config derived by ``resolve.stage1_config`` and resolved for ``train`` there;
  2. its frozen speech representation of every clip cached in ``<workdir>/speech_features/``
     (``speech_cache_mode.cache_speech_features``, with the checks of ``--mode=cache_speech``), when the
     cross-modal config reads that cache (``speech_source.of(config)``). When the pooling (and SER head) train on
     the frozen tower, nothing of the speech path can be cached (``erclap.trainable``: ``Trainable.cached``): the
     cross-modal stage reads audio and there is no caching step;
  3. the cross-modal stage (``<workdir>/checkpoints/`` ...), whose config ``erclap.resolve`` derived: its
     ``model.speech_init`` is the stage-1 workdir, its speech side frozen, its ``data.speech_features`` the cache.

Stage 1 is seeded by ``recipe.stage1_seed``, not by the run's ``seed``: runs that differ only in their seed train
the same stage 1, so a finished one serves them all. ``--mode=prepare_speech`` runs steps 1 and 2 only: a sweep
prepares one stage 1 and cache that way for all its runs (``launch/sweep.py``), which then read it with the recipe
off (``resolve.stage1_overrides``).

Each step resumes from what is already there: a finished stage 1 is not retrained, splits already cached are not
recomputed, the cross-modal run resumes from its latest checkpoint. Nothing uses stage 1 before it is complete
(``erclap.tower_init``). When stage 1 has changed since the cross-modal stage started from it (retrained with other
settings or more steps), the cache and the cross-modal checkpoints made from the old stage 1 are refused, naming
what differs, and nothing is moved: move ``<workdir>/speech_features`` and ``<workdir>/checkpoints`` aside to cache
the new stage 1 and train the cross-modal stage on it afresh. ``eval`` / ``export`` / ``export_model`` of the workdir
need no extra flags: resolution derives the same cross-modal config for every mode.

SIGTERM stops the whole run wherever it comes: a stage's training loop checkpoints first (``signals.Preempted``),
a cache split being written is left out; no later step (caching, the next stage, ``--mode=all``'s export) runs, and
the same command resumes.
"""

from __future__ import annotations

import jax

from erclap import (
    checkpointing,
    config_lib,
    export,
    members,
    progress,
    resolve,
    speech_cache_mode,
    speech_source,
    train,
    trainable,
)


def _say(message: str) -> None:
  if jax.process_index() == 0:
    progress.print_line(f"[recipe] {message}")


def prepare_stages(config, workdir: str) -> None:
  """Steps 1 and 2 of a recipe run (see the module docstring): stage 1 and, when the config reads it, its speech
  cache, brought up to date. Nothing for a one-stage config.

  Args:
    config: the cross-modal run's resolved config (``erclap.resolve``).
    workdir: the run's directory (stage 1 in ``<workdir>/stage1``, the cache where the config says).
  """
  if not config.recipe.stage1:
    return
  first_dir = resolve.stage1_workdir(workdir)
  first = resolve.resolve(resolve.stage1_config(config), first_dir, "train")
  _say(f"stage 1/2: {config.recipe.stage1} (speech emotion model, {first.train.num_steps} steps, seed "
       f"{first.seed}) in {first_dir}")
  try:
    train.train_and_evaluate(first, first_dir)
  except checkpointing.CheckpointMismatchError as e:
    raise checkpointing.CheckpointMismatchError(
        f"stage 1 in {first_dir}: {e}\nStage 1's settings are derived from this config (erclap.resolve."
        f"stage1_config); its seed is config.recipe.stage1_seed={config.recipe.stage1_seed}, not config.seed. A "
        f"stage 1 trained under another seed resumes with --config.recipe.stage1_seed=<that seed>.") from None
  if speech_source.of(config) is speech_source.CACHED:
    _say(f"stage 1 done; its frozen speech representation -> {config.data.speech_features}")
    speech_cache_mode.cache_speech_features(config, workdir)
  else:
    _say(f"stage 1 done; no speech cache: {trainable.of(config).uncached_because}")


def run_train(config, workdir: str) -> dict[str, float]:
  """``--mode=train``: the recipe's stage 1 and speech cache first (``prepare_stages``), then the run itself.

  Args:
    config: resolved for ``train`` (or ``all``; ``erclap.resolve``).
    workdir: the run's directory.

  Returns:
    The last evaluation metrics of the run (``train.train_and_evaluate``).
  """
  resolve.require(config, "train")
  prepare_stages(config, workdir)
  if config.recipe.stage1:
    source = speech_source.of(config)
    what = "the cached features" if source is speech_source.CACHED else "audio through the frozen stage-1 tower"
    _say(f"stage 2/2: cross-modal training on {what} ({config.train.num_steps} steps) in {workdir}")
  return train.train_and_evaluate(config, workdir)


def run_all(config, workdir: str) -> dict[str, float]:
  """``--mode=all``: the end-to-end run (the README's main command): ``run_train`` (a run that is already
  complete is not retrained), then ``export.export_embeddings``, which prints each export split's metrics table.

  Args:
    config: resolved for ``all`` (``erclap.resolve``).
    workdir: the run's directory.

  Returns:
    The metrics of the first export split (with members, ``erclap.members``: member k's under
    ``members/<k>/<metric>``).
  """
  resolve.require(config, "all")
  run_train(config, workdir)
  exported, split = export.export_embeddings(config, workdir), config.export.splits[0]
  if not members.count(config):
    return exported[split]
  return {f"{members.MEMBERS_DIR}/{k}/{name}": value for k in members.selected(config)
          for name, value in exported[f"{members.MEMBERS_DIR}/{k}/{split}"].items()}


def run_prepare_speech(config, workdir: str) -> None:
  """``--mode=prepare_speech``: a two-stage config's speech side alone (``prepare_stages``: stage 1 in
  ``<workdir>/stage1``, trained or resumed, and its speech cache when the cross-modal stage reads one); the
  cross-modal stage is not trained. A sweep prepares the stage 1 its runs share this way.

  Args:
    config: resolved for ``prepare_speech`` (``erclap.resolve``; a two-stage config).
    workdir: the directory that holds them.
  """
  resolve.require(config, "prepare_speech")
  prepare_stages(config, workdir)
  _say(f"speech side ready in {workdir}: cross-modal runs read it with --config.recipe.stage1= "
       + " ".join(config_lib.override_flags(resolve.stage1_overrides(
           config, resolve.stage1_workdir(workdir), config.data.speech_features))))
