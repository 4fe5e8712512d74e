"""The training modes: ``--mode=train`` runs the config's stages in order, ``--mode=all`` trains, then exports.

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

Each step resumes from what is already there: a finished stage 1 is not retrained, splits already cached are not
recomputed, the cross-modal run resumes from its latest checkpoint. A cache made from other stage-1 weights (e.g.
stage 1 retrained with other settings) is refused, naming what differs; delete ``<workdir>/speech_features`` to
rebuild it. ``eval`` / ``export`` / ``export_model`` of the workdir need no extra flags: resolution derives the same
cross-modal config for every mode.
"""

from __future__ import annotations

import jax

from erclap import export, members, progress, resolve, speech_cache_mode, speech_source, train, trainable


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
  _say(f"stage 1/2: {config.recipe.stage1} (speech emotion model, {first.train.num_steps} steps) in {first_dir}")
  train.train_and_evaluate(first, first_dir)
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
