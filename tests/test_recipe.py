"""Config resolution (erclap.resolve) and the two-stage recipe it derives (erclap.recipe): stage 1 → frozen,
cached speech representation → cross-modal stage."""

import glob
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
import train_helpers as th

from erclap import checkpointing, config_lib, configs, recipe, resolve, speech_cache_mode, tower_init, train
from erclap.configs import demo, ser_pretrain
from erclap.speech_cache import store


def test_named_configs_resolve_like_the_config_files():
  assert configs.get("ser_pretrain:demo").to_dict() == ser_pretrain.get_config("demo").to_dict()
  assert configs.get("demo").to_dict() == demo.get_config().to_dict()
  for bad in ("nope", "sweeps", "ser_pretrain/demo", "../demo"):
    with pytest.raises(ValueError, match="config"):
      configs.get(bad)


def test_a_one_stage_config_resolves_to_itself_frozen_and_written(tmp_path):
  single = demo.get_config("single_stage")
  resolved = resolve.resolve(single, str(tmp_path), "train")
  assert isinstance(resolved, ml_collections.FrozenConfigDict)
  assert resolved.to_dict() == single.to_dict()
  with pytest.raises(AttributeError, match="immutable"):
    resolved.seed = 3
  record = json.loads((tmp_path / "config.train.json").read_text())
  assert record["mode"] == "train" and record["changed_by_resolution"] == {}
  assert record["config"] == json.loads(resolved.to_json_best_effort())
  with pytest.raises(TypeError, match="resolved already"):  # nothing resolves (or un-resolves) it again
    resolve.resolve(resolved, "/elsewhere", "eval")
  resolve.require(resolved, "eval")
  with pytest.raises(TypeError, match=r"--mode=export takes a resolved config: pass erclap.resolve.resolve\(config, "
                                      r"workdir, 'export'\)"):
    resolve.require(single, "export")
  assert ser_pretrain.get_config("demo").recipe.stage1 == ""           # stage 1 itself is one stage


def test_stage1_takes_the_corpus_devices_and_speech_model_of_the_run_and_its_own_seed():
  run = config_lib.apply_overrides(demo.get_config(), {
      "seed": 7, "recipe.stage1_seed": 3, "data.max_seconds": 2.0, "data.embedded.num_train": 123,
      "data.speech_features": "/elsewhere", "model.speech_pooling": "attentive_stats", "model.ser_head_layers": 2,
      "mesh.shape": (4, 2, 1), "recipe.stage1_steps": 5, "train.learning_rate": 3e-3})
  first = resolve.stage1_config(run)
  own = ser_pretrain.get_config("demo")
  assert first.stage == "ser" and first.recipe.stage1 == "" and first.data.speech_features == ""
  assert first.seed == 3 and first.train.num_steps == 5
  assert first.data.max_seconds == 2.0 and first.data.embedded.num_train == 123 and tuple(first.mesh.shape) == (4, 2, 1)
  assert first.model.speech_pooling == "attentive_stats" and first.model.ser_head_layers == 2
  # Stage 1's own training settings and losses stay its own.
  assert first.train.learning_rate == own.train.learning_rate
  assert first.loss_options.rank_margin == own.loss_options.rank_margin
  assert first.checkpoint.best_metric == own.checkpoint.best_metric
  assert resolve.stage1_config(config_lib.apply_overrides(run, {"recipe.stage1_steps": 0})).train.num_steps == \
      own.train.num_steps


def test_runs_that_differ_in_seed_or_descriptions_derive_one_stage1():
  """The run's seed is the cross-modal stage's: stage 1 is the same for every seed (and for every setting only the
  text side reads), and changes with recipe.stage1_seed."""
  given = demo.get_config()
  first = resolve.stage1_config(given).to_dict()
  assert resolve.stage1_config(given).seed == given.recipe.stage1_seed == 0
  for overrides in ({"seed": 5}, {"data.descriptions": "/some/llm.jsonl", "data.descriptions_per_example": 2,
                                  "data.max_text_tokens": 40}):
    assert resolve.stage1_config(config_lib.apply_overrides(given, overrides)).to_dict() == first, overrides
  other = resolve.stage1_config(config_lib.apply_overrides(given, {"recipe.stage1_seed": 1}))
  assert other.seed == 1 and {**other.to_dict(), "seed": 0} == first


def test_prepare_speech_needs_a_two_stage_config_and_writes_where_the_runs_read(tmp_path):
  prepared = resolve.resolve(demo.get_config(), str(tmp_path / "shared"), "prepare_speech")
  run = resolve.resolve(demo.get_config(), str(tmp_path / "shared"), "train")
  assert prepared.to_dict() == run.to_dict()  # the same stage 1 and cache as the recipe's training run
  with pytest.raises(config_lib.ConfigError, match=r"--mode=prepare_speech .* config.recipe.stage1 is empty"):
    resolve.resolve(demo.get_config("single_stage"), str(tmp_path / "one"), "prepare_speech")
  # A run pointed at a stage 1 elsewhere (a sweep's shared one), with the recipe off, reads it as the recipe would.
  elsewhere = config_lib.apply_overrides(demo.get_config(), {
      "recipe.stage1": "", **resolve.stage1_overrides(demo.get_config(), f"{tmp_path}/shared/stage1",
                                                      f"{tmp_path}/shared/speech_features")})
  pointed = resolve.resolve(elsewhere, str(tmp_path / "run"), "train")
  for key in ("model.speech_init", "model.freeze_speech", "data.speech_features"):
    assert config_lib.get(pointed, key) == config_lib.get(run, key), key
  pooling = config_lib.apply_overrides(demo.get_config(), POOLING)
  assert resolve.stage1_overrides(pooling, "/s/stage1", "/s/cache") == {"model.speech_init": "/s/stage1",
                                                                        "model.freeze_speech": True}


def test_a_recipe_run_reads_stage1_frozen_from_the_cache(tmp_path):
  workdir = str(tmp_path / "a")
  given = demo.get_config()
  cross = resolve.resolve(given, workdir, "eval")
  assert cross.model.speech_init == f"{workdir}/stage1" and cross.model.freeze_speech
  assert cross.data.speech_features == f"{workdir}/speech_features"
  assert given.model.speech_init == "" and not given.model.freeze_speech  # the given config is untouched
  record = json.loads((tmp_path / "a" / "config.eval.json").read_text())
  assert record["changed_by_resolution"] == {"model.speech_init": f"{workdir}/stage1", "model.freeze_speech": True,
                                             "data.speech_features": f"{workdir}/speech_features"}
  elsewhere = config_lib.apply_overrides(given, {"data.speech_features": "/fast/disk/features"})
  assert resolve.resolve(elsewhere, workdir, "eval").data.speech_features == "/fast/disk/features"


def test_the_cache_mode_writes_where_the_run_reads(tmp_path):
  frozen = config_lib.apply_overrides(demo.get_config("single_stage"), {"model.freeze_speech": True})
  resolved = resolve.resolve(frozen, str(tmp_path), "cache_speech")
  assert resolved.data.speech_features == str(tmp_path / "speech_features")
  assert resolve.mode_problems(resolved, "cache_speech") == []
  with pytest.raises(config_lib.ConfigError, match=r"speech_features=.*a speech-feature cache stands for a frozen "
                                                   r"speech path, but config.model.freeze_speech=False"):
    resolve.resolve(demo.get_config("single_stage"), str(tmp_path), "cache_speech")
  with pytest.raises(config_lib.ConfigError, match=r"stage 1 \(the speech emotion model\) reads audio"):
    resolve.resolve(config_lib.apply_overrides(ser_pretrain.get_config("demo"), {"model.freeze_speech": True}),
                    str(tmp_path), "cache_speech")
  # A config resolved for another mode, without a cache to write, is refused by the mode itself.
  plain = resolve.resolve(frozen, str(tmp_path), "train")
  assert "it is empty" in resolve.mode_problems(plain, "cache_speech")[0]


POOLING = {"model.train_speech_pooling": True, "model.speech_pooling": "attentive_stats",
           "model.speech_representation": "ser_hidden"}


def test_a_pooling_that_trains_on_the_frozen_tower_refuses_every_cache(tmp_path):
  single = config_lib.apply_overrides(demo.get_config("single_stage"), {**POOLING, "model.freeze_speech": True})
  resolve.resolve(single, str(tmp_path / "a"), "train")  # on audio: valid
  for config, mode in [(config_lib.apply_overrides(single, {"data.speech_features": "/a/cache"}), "train"),
                       (single, "cache_speech")]:
    with pytest.raises(config_lib.ConfigError) as e:
      resolve.resolve(config, str(tmp_path / "b"), mode)
    assert "config.data.speech_features=" in str(e.value)
    assert "config.model.train_speech_pooling=True: speech_pool and ser_head train on the frozen tower" in str(e.value)
  # The two-stage recipe with it: stage 1 frozen, no cache; the cross-modal stage reads audio.
  workdir = str(tmp_path / "c")
  cross = resolve.resolve(config_lib.apply_overrides(demo.get_config(), POOLING), workdir, "train")
  assert cross.model.speech_init == f"{workdir}/stage1" and cross.model.freeze_speech
  assert cross.data.speech_features == ""
  with pytest.raises(config_lib.ConfigError, match="train_speech_pooling"):
    resolve.resolve(config_lib.apply_overrides(demo.get_config(), POOLING), workdir, "cache_speech")
  for bad, needle in [({"model.freeze_speech": False}, "set config.model.freeze_speech=True too"),
                      ({"model.speech_pooling": "mean", "model.speech_representation": "pooled"},
                       "nothing after the tower has parameters")]:
    with pytest.raises(config_lib.ConfigError, match=needle):
      resolve.resolve(config_lib.apply_overrides(single, bad), str(tmp_path / "d"), "train")
  with pytest.raises(config_lib.ConfigError, match="always trains its pooling and head"):
    resolve.resolve(config_lib.apply_overrides(ser_pretrain.get_config("demo"), {
        "model.freeze_speech": True, "model.train_speech_pooling": True}), str(tmp_path / "e"), "train")


@pytest.mark.parametrize("overrides, message", [
    ({"recipe.stage1": "nope"}, r"recipe.stage1='nope'.*no erclap/configs/nope.py"),
    ({"recipe.stage1": "demo"}, r"recipe.stage1='demo': has stage='clap'"),
    ({"model.speech_init": "/some/odyssey"}, r"model.speech_init='/some/odyssey' names another"),
])
def test_bad_recipe_settings_are_refused_naming_the_key(overrides, message, tmp_path):
  config = config_lib.apply_overrides(demo.get_config(), overrides)
  with pytest.raises(config_lib.ConfigError, match=message):
    resolve.resolve(config, str(tmp_path), "eval")
  assert not (tmp_path / "config.eval.json").exists()  # nothing is written for a config that is refused


def test_every_problem_is_listed_at_once(tmp_path):
  config = config_lib.apply_overrides(demo.get_config(), {
      "recipe.stage1": "nope", "train.global_batch_size": 12, "checkpoint.best_metric": "aoc_mean"})
  with pytest.raises(config_lib.ConfigError) as e:
    resolve.resolve(config, str(tmp_path), "train")
  message = str(e.value)
  assert "3 problems" in message and "recipe.stage1='nope'" in message
  assert "config.train.global_batch_size=12 must be a multiple of 8" in message
  assert "metric 'aoc_mean' was renamed 'anchor_tau_arousal'" in message


def _mtimes(directory: str) -> dict[str, float]:
  return {name: os.path.getmtime(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


# The two-stage runs below share one stage 1 (the pooling and SER head that the second one trains on its tower).
TWO_STAGES = {"recipe.stage1": "ser_pretrain:demo", "recipe.stage1_steps": 2, "train.num_steps": 2,
              "model.speech_pooling": "attentive_stats", "model.speech_representation": "ser_hidden"}


@pytest.fixture(scope="module")
def two_stage_run(data_dir, tmp_path_factory):
  """A two-stage run as --mode=train runs it: (config as given, its workdir, the resolved cross-modal config)."""
  workdir = str(tmp_path_factory.mktemp("two_stages") / "run")
  config = th.tiny_config(data_dir, **TWO_STAGES)
  cross = resolve.resolve(config, workdir, "train")
  recipe.run_train(cross, workdir)
  return config, workdir, cross


@pytest.mark.slow
def test_moved_two_stage_workdir_resumes(two_stage_run, tmp_path, capsys):
  """A two-stage workdir (stage 1, its speech cache, the cross-modal stage) copied elsewhere resumes its cross-modal
  stage there: no checkpoint names the old place, nothing is set aside, nothing is retrained."""
  given, shared, _ = two_stage_run
  moved = str(tmp_path / "moved")
  shutil.copytree(shared, moved)
  stored = [p for p in glob.glob(os.path.join(moved, "**", "checkpoints", "*", "*", "*"), recursive=True)
            if os.path.isfile(p) and not p.endswith("commit_success.txt")]  # Orbax's marker text, never read
  assert stored and [p for p in stored if shared.encode() in open(p, "rb").read()] == []
  capsys.readouterr()
  recipe.run_train(resolve.resolve(config_lib.apply_overrides(given, {"train.num_steps": 4}), moved, "train"), moved)
  out = capsys.readouterr().out
  assert "[train] step 3/4" in out and "[train] step 1/4" not in out  # resumed after step 2
  assert sorted(os.listdir(os.path.join(moved, "checkpoints"))) == ["2", "4"]
  assert os.listdir(os.path.join(moved, "stage1", "checkpoints")) == ["2"]


@pytest.mark.slow
def test_two_stages_train_cache_and_resume(two_stage_run, devices):
  """Stage 1 trains, its representation is cached, the cross-modal stage trains on the cache with stage 1's
  speech parameters untouched; a rerun retrains and recomputes nothing."""
  config, workdir, cross = two_stage_run
  stage1_step, stage1_params = tower_init.read_workdir_params(resolve.stage1_workdir(workdir))
  assert stage1_step == 2
  assert os.path.isfile(os.path.join(resolve.stage1_workdir(workdir), "config.train.json"))
  cache = cross.data.speech_features
  assert cache == os.path.join(workdir, "speech_features")
  written = _mtimes(cache)
  fingerprint = store.read_fingerprint(cache)
  for split in ("train", "validation", "test"):
    assert store.split_is_cached(cache, split, fingerprint), split
  step, params = tower_init.read_workdir_params(workdir)
  assert step == 2
  for part in ("speech_tower", "speech_pool", "ser_head"):
    jax.tree.map(np.testing.assert_array_equal, params[part], stage1_params[part])

  # Resolved again: nothing is retrained or recomputed.
  recipe.run_train(resolve.resolve(config, workdir, "train"), workdir)
  assert tower_init.read_workdir_params(resolve.stage1_workdir(workdir))[0] == 2
  assert tower_init.read_workdir_params(workdir)[0] == 2
  assert _mtimes(cache) == written
  manager = checkpointing.make_manager(resolve.stage1_workdir(workdir), config.checkpoint, with_data_iter=False,
                                       read_only=True)
  try:
    assert list(manager.all_steps()) == [2]
  finally:
    manager.close()


@pytest.mark.slow
def test_two_stages_with_a_pooling_trained_on_the_frozen_tower_read_audio(two_stage_run, devices, tmp_path,
                                                                          capsys):
  """With model.train_speech_pooling the recipe makes no cache: the cross-modal stage reads audio through stage 1's
  frozen tower (bit for bit), and trains the pooling and SER head it took from stage 1 (the shared stage 1, whose
  run is complete: it is not retrained)."""
  given, shared, _ = two_stage_run
  workdir = str(tmp_path / "run")
  shutil.copytree(resolve.stage1_workdir(shared), resolve.stage1_workdir(workdir))
  config = config_lib.apply_overrides(given, {"model.train_speech_pooling": True})
  capsys.readouterr()
  recipe.run_train(resolve.resolve(config, workdir, "train"), workdir)
  out = capsys.readouterr().out
  assert "[recipe] stage 1 done; no speech cache: config.model.train_speech_pooling=True" in out
  assert "stage 2/2: cross-modal training on audio through the frozen stage-1 tower" in out
  assert not os.path.exists(os.path.join(workdir, "speech_features"))
  _, stage1_params = tower_init.read_workdir_params(resolve.stage1_workdir(workdir))
  _, params = tower_init.read_workdir_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, params["speech_tower"], stage1_params["speech_tower"])
  for part in ("speech_pool", "ser_head"):
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), params[part], stage1_params[part]))
    assert any(moved), part


@pytest.mark.slow
def test_a_stage1_trained_further_is_never_used_through_the_old_cache_or_checkpoints(two_stage_run, devices, tmp_path):
  """Stage 1 retrained with more steps: an unfinished stage 1 is not cached; once it is finished, the cache and the
  cross-modal checkpoint made from the old one are refused (caching, --mode=cache_speech, training), naming the
  parts and the fix, and nothing is moved; with both moved aside, the cache is rebuilt and the cross-modal stage
  trains afresh on the new stage 1."""
  given, shared, _ = two_stage_run
  workdir = str(tmp_path / "run")
  shutil.copytree(shared, workdir)  # a copy resumes like the original
  cache, checkpoints = os.path.join(workdir, "speech_features"), os.path.join(workdir, "checkpoints")
  written = _mtimes(cache)
  more = config_lib.apply_overrides(given, {"recipe.stage1_steps": 3, "train.num_steps": 3})

  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"stage 1 of this run stopped at step 2 of 3"):
    speech_cache_mode.cache_speech_features(resolve.resolve(more, workdir, "cache_speech"), workdir)

  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    recipe.run_train(resolve.resolve(more, workdir, "train"), workdir)  # stage 1 goes on to step 3, then caching
  message = str(e.value)
  assert f"the checkpoint at step 2 in {checkpoints} was trained with frozen speech_tower, speech_pool, ser_head " \
         f"other than config.model.speech_init='{workdir}/stage1' gives now" in message
  assert f"move {checkpoints} and the speech-feature cache {cache} aside" in message
  assert tower_init.read_workdir_params(resolve.stage1_workdir(workdir))[0] == 3
  for refused in (lambda: speech_cache_mode.cache_speech_features(resolve.resolve(more, workdir, "cache_speech"),
                                                                  workdir),
                  lambda: train.train_and_evaluate(resolve.resolve(more, workdir, "train"), workdir)):
    with pytest.raises(checkpointing.CheckpointMismatchError, match="frozen speech_tower, speech_pool, ser_head"):
      refused()
  assert _mtimes(cache) == written and sorted(os.listdir(checkpoints)) == ["2"]  # nothing moved or rewritten

  os.rename(cache, cache + ".old")
  os.rename(checkpoints, checkpoints + ".old")
  recipe.run_train(resolve.resolve(more, workdir, "train"), workdir)
  _, stage1_params = tower_init.read_workdir_params(resolve.stage1_workdir(workdir))
  step, params = tower_init.read_workdir_params(workdir)
  assert step == 3
  for part in ("speech_tower", "speech_pool", "ser_head"):
    jax.tree.map(np.testing.assert_array_equal, params[part], stage1_params[part])
  assert store.read_fingerprint(cache) != store.read_fingerprint(cache + ".old")


@pytest.mark.slow
def test_a_finished_stage1_and_its_cache_serve_another_seed(two_stage_run, devices, tmp_path, capsys):
  """The cross-modal stage under another --config.seed reuses stage 1 and its cache as they are (neither is
  retrained nor recomputed) and trains with its own seed."""
  given, shared, _ = two_stage_run
  workdir = str(tmp_path / "run")
  for part in (resolve.STAGE1_DIR, "speech_features"):
    shutil.copytree(os.path.join(shared, part), os.path.join(workdir, part))
  stage1_checkpoints = os.path.join(resolve.stage1_workdir(workdir), "checkpoints")
  stage1_files, cache_files = _mtimes(stage1_checkpoints), _mtimes(os.path.join(workdir, "speech_features"))
  config = config_lib.apply_overrides(given, {"seed": 1})
  capsys.readouterr()
  recipe.run_train(resolve.resolve(config, workdir, "train"), workdir)
  out = capsys.readouterr().out
  assert "speech emotion model, 2 steps, seed 0)" in out
  assert _mtimes(os.path.join(workdir, "speech_features")) == cache_files
  assert _mtimes(stage1_checkpoints) == stage1_files
  assert tower_init.read_workdir_params(workdir)[0] == 2
  assert json.loads(open(os.path.join(workdir, "config.train.json")).read())["config"]["seed"] == 1


@pytest.mark.slow
def test_a_stage1_trained_under_the_runs_seed_by_an_earlier_release_resumes(data_dir, devices, tmp_path):
  """Earlier releases gave stage 1 the run's seed and text settings: a stage 1 so trained under seed 0 resumes
  as it is (the derivation's seed is recipe.stage1_seed, 0); one trained under another seed is refused naming the
  key that resumes it."""
  config = th.tiny_config(data_dir, **TWO_STAGES)
  stage1_dir = resolve.stage1_workdir(str(tmp_path / "run"))
  earlier = config_lib.apply_overrides(resolve.stage1_config(config), {
      "seed": config.seed, **{f"data.{k}": config.data[k] for k in resolve.STAGE1_TEXT_DATA_KEYS}})
  assert earlier.data.max_text_tokens != resolve.stage1_config(config).data.max_text_tokens  # recorded otherwise
  train.train_and_evaluate(resolve.resolve(earlier, stage1_dir, "train"), stage1_dir)
  written = _mtimes(os.path.join(stage1_dir, "checkpoints"))
  train.train_and_evaluate(resolve.resolve(resolve.stage1_config(config), stage1_dir, "train"), stage1_dir)
  assert _mtimes(os.path.join(stage1_dir, "checkpoints")) == written
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    recipe.prepare_stages(resolve.resolve(config_lib.apply_overrides(config, {"recipe.stage1_seed": 3}),
                                          str(tmp_path / "run"), "train"), str(tmp_path / "run"))
  message = str(e.value)
  assert f"stage 1 in {stage1_dir}" in message and "--config.recipe.stage1_seed=<that seed>" in message
  assert "config.data.seed (the shuffling seed; -1: config.seed): checkpoint 0, this run 3" in message
  assert _mtimes(os.path.join(stage1_dir, "checkpoints")) == written
