"""The two-stage recipe (``config.recipe.stage1``): train the speech emotion model, freeze it, cache it, then
train the cross-modal stage on the cache.

  python -m erclap.main --config=configs/demo.py --workdir=workdirs/demo --mode=all

With ``config.recipe.stage1`` naming a stage-1 config (``"ser_pretrain:demo"``), one workdir holds the whole run:

  <workdir>/stage1/           stage 1: the SER run (speech tower + pooling + attribute head; CCC + ranking losses)
  <workdir>/speech_features/  its frozen speech representation of every clip (``--mode=cache_speech``)
  <workdir>/checkpoints/ ...  the cross-modal stage, trained on the cached features (the speech tower is never
                              run while it trains)

The training modes (``train``, ``all``) run the stages in order, each resuming from what is already there: a
finished stage 1 is not retrained, splits already cached are not recomputed, the cross-modal run resumes from its
latest checkpoint. Every mode runs the cross-modal config that ``cross_modal_config`` derives (its
``model.speech_init`` is the stage-1 workdir, its speech tower frozen, its ``data.speech_features`` the cache), so
``eval`` / ``export`` / ``export_model`` of the workdir need no extra flags. A cache made from other stage-1 weights
(e.g. stage 1 retrained with other settings) is refused, naming what differs; delete
``<workdir>/speech_features`` to rebuild it.

Stage 1 takes from the run's config what the two stages must share: the corpus (``data``, without the cache),
the devices (``mesh``, ``distributed``), ``seed``, and the speech model's settings (``STAGE1_MODEL_KEYS``), so
that the tower stage 1 trains is the one the cross-modal stage loads. ``recipe.stage1_steps`` > 0 replaces the
stage-1 config's step count.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from erclap import cache_speech, config_lib, configs, train

STAGE1_DIR = "stage1"
# The speech model's settings: the cross-modal config's values are stage 1's (same tower, pooling, head, inputs).
STAGE1_MODEL_KEYS = ("size", "speech_arch", "speech_pooling", "speech_input_mean", "speech_input_std",
                     "ser_head_layers", "ser_head_hidden", "num_attributes", "dtype", "remat")
STAGE1_SECTIONS = ("data", "mesh", "distributed")


def enabled(config) -> bool:
  return bool(config.recipe.stage1)


def stage1_workdir(workdir: str) -> str:
  return os.path.join(workdir, STAGE1_DIR)


def stage1_config(config) -> ml_collections.ConfigDict:
  """The stage-1 (SER) config of a recipe run: ``config.recipe.stage1`` with the shared settings of ``config``.

  Raises:
    config_lib.ConfigError: the name is not a config, or not a stage-1 (``stage="ser"``) config.
  """
  name = config.recipe.stage1
  try:
    base = configs.get(name)
  except ValueError as e:
    raise config_lib.ConfigError(f"config.recipe.stage1={name!r}: {e}") from None
  if base.stage != "ser":
    raise config_lib.ConfigError(f"config.recipe.stage1={name!r}: has stage={base.stage!r}; stage 1 must be a "
                                 f"speech-emotion (stage='ser') config such as 'ser_pretrain:demo'")
  overrides = {f"{section}.{key}": value for section in STAGE1_SECTIONS
               for key, value in config_lib.flat_items(config[section])}
  overrides.update({f"model.{key}": config.model[key] for key in STAGE1_MODEL_KEYS})
  overrides.update({"seed": config.seed, "recipe.stage1": "", "data.speech_features": ""})
  if config.recipe.stage1_steps:
    overrides["train.num_steps"] = config.recipe.stage1_steps
  return config_lib.validate(config_lib.apply_overrides(base, overrides, f"config.recipe.stage1={name!r}"))


def cross_modal_config(config, workdir: str) -> ml_collections.ConfigDict:
  """The config every mode of a recipe run uses: speech from ``<workdir>/stage1``, frozen, read from the cache.

  ``config`` itself when it has no recipe. ``data.speech_features`` keeps a directory given on the command line;
  "" becomes ``<workdir>/speech_features``.

  Raises:
    config_lib.ConfigError: ``model.speech_init`` is set too (the recipe trains the speech model itself), or
      ``stage1_config`` refuses ``config.recipe.stage1``.
  """
  if not enabled(config):
    return config
  stage1_config(config)  # a bad stage-1 name or setting stops every mode here, before anything is built
  if config.model.speech_init:
    raise config_lib.ConfigError(
        f"config.recipe.stage1={config.recipe.stage1!r} trains the speech model in <workdir>/{STAGE1_DIR}, and "
        f"config.model.speech_init={config.model.speech_init!r} names another: set one of them (for a "
        f"one-stage run from that model: --config.recipe.stage1=)")
  return config_lib.apply_overrides(config, {
      "model.speech_init": stage1_workdir(workdir),
      "model.freeze_speech": True,
      "data.speech_features": config.data.speech_features or os.path.join(workdir, "speech_features"),
  }, "recipe")


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[recipe] {message}", flush=True)


def prepare(config, workdir: str, *, run_stages: bool) -> ml_collections.ConfigDict:
  """The config a mode runs with; with ``run_stages`` (training modes) stage 1 and the cache are brought up to
  date first (each resumes from what ``workdir`` already holds).

  Returns:
    ``cross_modal_config(config, workdir)``.
  """
  cross = cross_modal_config(config, workdir)
  if not enabled(config) or not run_stages:
    return cross
  first = stage1_config(config)
  first_dir = stage1_workdir(workdir)
  _say(f"stage 1/2: {config.recipe.stage1} (speech emotion model, {first.train.num_steps} steps) in {first_dir}")
  train.train_and_evaluate(first, first_dir)
  _say(f"stage 1 done; its frozen speech representation -> {cross.data.speech_features}")
  cache_speech.cache_speech_features(cross, workdir)
  _say(f"stage 2/2: cross-modal training on the cached features ({cross.train.num_steps} steps) in {workdir}")
  return cross
