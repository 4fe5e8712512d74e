"""The two-stage recipe (erclap.recipe): stage 1 → frozen, cached speech representation → cross-modal stage."""

import os

import jax
import numpy as np
import pytest
import train_helpers as th

from erclap import checkpointing, config_lib, configs, recipe, speech_features, tower_init, train
from erclap.configs import demo, ser_pretrain


def test_named_configs_resolve_like_the_config_files():
  assert configs.get("ser_pretrain:demo").to_dict() == ser_pretrain.get_config("demo").to_dict()
  assert configs.get("demo").to_dict() == demo.get_config().to_dict()
  for bad in ("nope", "sweeps", "ser_pretrain/demo", "../demo"):
    with pytest.raises(ValueError, match="config"):
      configs.get(bad)


def test_demo_is_two_stage_and_single_stage_is_available():
  assert demo.get_config().recipe.stage1 == "ser_pretrain:demo"
  single = demo.get_config("single_stage")
  assert single.recipe.stage1 == ""
  assert recipe.prepare(single, "/unused", run_stages=True) is single  # nothing to run, nothing changed
  assert ser_pretrain.get_config("demo").recipe.stage1 == ""            # stage 1 itself is one stage


def test_stage1_takes_the_corpus_devices_seed_and_speech_model_of_the_run():
  run = config_lib.apply_overrides(demo.get_config(), {
      "seed": 7, "data.max_seconds": 2.0, "data.embedded.num_train": 123, "data.speech_features": "/elsewhere",
      "model.speech_pooling": "attentive_stats", "model.ser_head_layers": 2, "mesh.shape": (4, 2, 1),
      "recipe.stage1_steps": 5, "train.learning_rate": 3e-3})
  first = recipe.stage1_config(run)
  own = ser_pretrain.get_config("demo")
  assert first.stage == "ser" and first.recipe.stage1 == "" and first.data.speech_features == ""
  assert first.seed == 7 and first.train.num_steps == 5
  assert first.data.max_seconds == 2.0 and first.data.embedded.num_train == 123 and tuple(first.mesh.shape) == (4, 2, 1)
  assert first.model.speech_pooling == "attentive_stats" and first.model.ser_head_layers == 2
  # Stage 1's own training settings and losses stay its own.
  assert first.train.learning_rate == own.train.learning_rate
  assert first.loss_options.rank_margin == own.loss_options.rank_margin
  assert first.checkpoint.best_metric == own.checkpoint.best_metric
  assert recipe.stage1_config(config_lib.apply_overrides(run, {"recipe.stage1_steps": 0})).train.num_steps == \
      own.train.num_steps


def test_cross_modal_config_reads_stage1_frozen_from_the_cache():
  cross = recipe.cross_modal_config(demo.get_config(), "/runs/a")
  assert cross.model.speech_init == "/runs/a/stage1" and cross.model.freeze_speech
  assert cross.data.speech_features == "/runs/a/speech_features"
  given = config_lib.apply_overrides(demo.get_config(), {"data.speech_features": "/fast/disk/features"})
  assert recipe.cross_modal_config(given, "/runs/a").data.speech_features == "/fast/disk/features"
  config_lib.validate(cross)


@pytest.mark.parametrize("overrides, message", [
    ({"recipe.stage1": "nope"}, r"recipe.stage1='nope'.*no erclap/configs/nope.py"),
    ({"recipe.stage1": "demo"}, r"recipe.stage1='demo': has stage='clap'"),
    ({"model.speech_init": "/some/odyssey"}, r"model.speech_init='/some/odyssey' names another"),
])
def test_bad_recipe_settings_are_refused_naming_the_key(overrides, message):
  config = config_lib.apply_overrides(demo.get_config(), overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    recipe.prepare(config, "/unused", run_stages=False)


def _mtimes(directory: str) -> dict[str, float]:
  return {name: os.path.getmtime(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


@pytest.mark.slow
def test_two_stages_train_cache_and_resume(data_dir, devices, tmp_path):
  """Stage 1 trains, its representation is cached, the cross-modal stage trains on the cache with stage 1's
  speech parameters untouched; a rerun retrains and recomputes nothing."""
  workdir = str(tmp_path / "run")
  config = th.tiny_config(data_dir, **{"recipe.stage1": "ser_pretrain:demo", "recipe.stage1_steps": 2,
                                       "train.num_steps": 2})
  cross = recipe.prepare(config, workdir, run_stages=True)
  stage1_step, stage1_params = tower_init.read_workdir_params(recipe.stage1_workdir(workdir))
  assert stage1_step == 2
  cache = cross.data.speech_features
  assert cache == os.path.join(workdir, "speech_features")
  written = _mtimes(cache)
  fingerprint = speech_features.read_fingerprint(cache)
  for split in ("train", "validation", "test"):
    assert speech_features.split_is_cached(cache, split, fingerprint), split

  train.train_and_evaluate(cross, workdir)
  step, params = tower_init.read_workdir_params(workdir)
  assert step == 2
  for part in ("speech_tower", "speech_pool"):
    if part in stage1_params:
      jax.tree.map(np.testing.assert_array_equal, params[part], stage1_params[part])

  again = recipe.prepare(config, workdir, run_stages=True)
  assert again.to_dict() == cross.to_dict()
  assert tower_init.read_workdir_params(recipe.stage1_workdir(workdir))[0] == 2
  assert _mtimes(cache) == written
  manager = checkpointing.make_manager(recipe.stage1_workdir(workdir), config.checkpoint, with_data_iter=False,
                                       read_only=True)
  try:
    assert list(manager.all_steps()) == [2]
  finally:
    manager.close()
