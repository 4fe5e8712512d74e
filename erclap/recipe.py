"""The two-stage recipe (``config.recipe.stage1``): train the speech emotion model, freeze it, cache it, then
train the cross-modal stage on the cache.

  python -m erclap.main --config=configs/demo.py --workdir=workdirs/demo --mode=all

With ``config.recipe.stage1`` naming a stage-1 config (``"ser_pretrain:demo"``), one workdir holds the whole run:

  <workdir>/stage1/           stage 1: the SER run (speech tower + pooling + attribute head; CCC + ranking losses)
  <workdir>/speech_features/  its frozen speech representation of every clip (``--mode=cache_speech``)
  <workdir>/checkpoints/ ...  the cross-modal stage, trained on the cached features (the speech tower is never
                              run while it trains)

Which configs: ``erclap.resolve`` derives both, for every mode: stage 1's (``resolve.stage1_config``) and the
cross-modal stage's (its ``model.speech_init`` is the stage-1 workdir, its speech tower frozen, its
``data.speech_features`` the cache), so ``eval`` / ``export`` / ``export_model`` of the workdir need no extra
flags. Here the training modes (``train``, ``all``) run the stages in order, each resuming from what is already
there: a finished stage 1 is not retrained, splits already cached are not recomputed, the cross-modal run resumes
from its latest checkpoint. A cache made from other stage-1 weights (e.g. stage 1 retrained with other settings)
is refused, naming what differs; delete ``<workdir>/speech_features`` to rebuild it.
"""

from __future__ import annotations

import jax

from erclap import cache_speech, progress, resolve, train


def _say(message: str) -> None:
  if jax.process_index() == 0:
    progress.print_line(f"[recipe] {message}")


def prepare_stages(config, workdir: str) -> None:
  """Stage 1 and its speech cache, brought up to date for a recipe run (nothing for a one-stage config).

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
  _say(f"stage 1 done; its frozen speech representation -> {config.data.speech_features}")
  cache_speech.cache_speech_features(config, workdir)


def train_stages(config, workdir: str) -> dict[str, float]:
  """``--mode=train``: stage 1 and its speech cache first when ``config`` is a recipe run (``prepare_stages``),
  then the run itself.

  Args:
    config: the run's config (resolved for ``train`` here when it is not already).
    workdir: the run's directory.

  Returns:
    The last evaluation metrics of the run (``train.train_and_evaluate``).
  """
  config = resolve.ensure(config, workdir, "train")
  prepare_stages(config, workdir)
  if config.recipe.stage1:
    _say(f"stage 2/2: cross-modal training on the cached features ({config.train.num_steps} steps) in {workdir}")
  return train.train_and_evaluate(config, workdir)
