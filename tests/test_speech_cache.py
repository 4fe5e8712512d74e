"""The speech-feature cache (erclap.speech_features, --mode=cache_speech): format, refusals, interrupted writes,
and the same embeddings, metrics and train steps as the uncached path for a frozen speech tower."""

from __future__ import annotations

import os
import pickle

import jax
import numpy as np
import pytest
import train_helpers as th

from erclap import (
    cache_speech,
    config_lib,
    evaluate,
    export,
    input_pipeline,
    optim,
    runtime,
    schema,
    sharding,
    speech_features,
    state,
    step,
    train,
)

# Clips of the tiny corpus are 0.4-0.8 s: a 1 s crop holds every clip whole, so the uncached pipeline's random
# training crop and the cache's centre crop are the same padded clip, and train steps compare exactly.
FROZEN = {"model.freeze_speech": True, "data.max_seconds": 1.0}


def _fingerprint(**changes) -> dict:
  fields = dict(params_digest="abc", representation="pooled", speech_pooling="mean", speech_arch="SpeechArch()",
                speech_input=(0.0, 0.0), dtype="float32", crop_seconds=1.0, sample_rate=16000,
                corpus={"name": "embedded", "version": "1.0.0"}, width=3)
  fields.update(changes)
  return speech_features.make_fingerprint(**fields)


# ----------------------------------------------------------------------------- format (numpy only)


def test_params_digest_sees_every_value_path_and_dtype():
  tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.zeros(2, np.float32)}
  digest = speech_features.params_digest(tree)
  assert digest == speech_features.params_digest({"b": np.zeros(2, np.float32), "a": dict(tree["a"])})
  changed = {"a": {"kernel": tree["a"]["kernel"].copy()}, "b": tree["b"]}
  changed["a"]["kernel"][1, 2] += 1e-6
  assert speech_features.params_digest(changed) != digest
  assert speech_features.params_digest({"a": tree["a"], "c": tree["b"]}) != digest
  assert speech_features.params_digest({"a": tree["a"], "b": tree["b"].astype(np.float64)}) != digest


def test_split_round_trip_and_lookup_by_id(tmp_path):
  fp = _fingerprint()
  speech_features.prepare_directory(str(tmp_path), fp)
  rows = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
  ids = [f"clip{i}" for i in (4, 2, 0, 1, 3)]
  with speech_features.SplitWriter(str(tmp_path), "test", fp, 5) as writer:
    writer.write(rows[:2], ids[:2])
    writer.write(rows[2:], ids[2:])
  assert speech_features.split_is_cached(str(tmp_path), "test", fp)
  cached = speech_features.CachedSplit(str(tmp_path), "test", fp)
  assert isinstance(cached.features, np.memmap)
  for row, clip in enumerate(ids):
    np.testing.assert_array_equal(cached.lookup(clip), rows[row])
  clone = pickle.loads(pickle.dumps(cached))  # Grain workers: no array in the pickle, reopened there
  assert clone._features is None
  np.testing.assert_array_equal(clone.lookup("clip3"), rows[4])
  with pytest.raises(speech_features.SpeechCacheError, match="'clip9'.*no cached speech features"):
    cached.lookup("clip9")
  records = [{"id": clip, "audio": np.zeros(4, np.int16), "arousal": 1.0} for clip in ("clip0", "clip1")]
  with pytest.raises(speech_features.SpeechCacheError, match="has 2 clips.*caches 5"):
    speech_features.CachedSpeechSource(records, cached)
  source = speech_features.CachedSpeechSource(records * 2 + records[:1], cached)
  assert "audio" not in source[1] and source[1]["arousal"] == 1.0
  np.testing.assert_array_equal(source[1]["speech_features"], rows[3])


def test_mismatched_fingerprint_names_what_differs(tmp_path):
  fp = _fingerprint()
  speech_features.prepare_directory(str(tmp_path), fp)
  with speech_features.SplitWriter(str(tmp_path), "test", fp, 1) as writer:
    writer.write(np.ones((1, 3), np.float32), ["a"])
  other = _fingerprint(params_digest="def", crop_seconds=2.0)
  with pytest.raises(speech_features.SpeechCacheError) as info:
    speech_features.CachedSplit(str(tmp_path), "test", other)
  message = str(info.value)
  assert "parameters" in message and "crop_seconds: cache 1.0 vs now 2.0" in message
  assert "width" not in message
  with pytest.raises(speech_features.SpeechCacheError, match="another model or config"):
    speech_features.prepare_directory(str(tmp_path), other)
  with pytest.raises(speech_features.SpeechCacheError, match="'validation' is not cached"):
    speech_features.CachedSplit(str(tmp_path), "validation", fp)


def test_incomplete_writer_leaves_nothing(tmp_path):
  fp = _fingerprint()
  speech_features.prepare_directory(str(tmp_path), fp)
  with pytest.raises(speech_features.SpeechCacheError, match="1 of 2 clips written"):
    with speech_features.SplitWriter(str(tmp_path), "train", fp, 2) as writer:
      writer.write(np.ones((1, 3), np.float32), ["a"])
  assert sorted(os.listdir(tmp_path)) == [speech_features.FINGERPRINT_FILE]
  assert not speech_features.split_is_cached(str(tmp_path), "train", fp)


def test_config_refuses_cache_without_frozen_speech(tmp_path):
  config = th.tiny_config(str(tmp_path), **{"data.speech_features": str(tmp_path)})
  with pytest.raises(config_lib.ConfigError, match="data.speech_features.*freeze_speech=True"):
    config_lib.validate(config)
  config_lib.validate(th.tiny_config(str(tmp_path), **FROZEN, **{"data.speech_features": str(tmp_path)}))


def test_step_refuses_a_trained_representation_under_the_cache(tmp_path):
  cached = {"data.speech_features": str(tmp_path), "model.speech_pooling": "attentive_stats"}
  # model.freeze_speech freezes the whole representation (tower, pooling, SER head): the cache is accepted.
  config = th.tiny_config(str(tmp_path), **FROZEN, **cached)
  step.check_cached_speech_is_frozen(config, ("speech_tower", "speech_pool", "ser_head", "speech_proj", "text_tower"))
  # Without it every representation parameter would move; the step refuses (second line behind config_lib).
  config = th.tiny_config(str(tmp_path), **cached)
  with pytest.raises(ValueError, match=r"\['speech_tower', 'speech_pool', 'ser_head'\]"):
    step.check_cached_speech_is_frozen(config, ("speech_tower", "speech_pool", "ser_head", "speech_proj", "text_tower"))


# ----------------------------------------------------------------------------- model and pipeline


@pytest.mark.slow
def test_cached_model_has_the_uncached_parameter_tree(tiny_embedded, devices):
  config, data_dir = tiny_embedded
  config = config_lib.apply_overrides(config, FROZEN)
  cached = config_lib.apply_overrides(config, {"data.speech_features": "/unused"})
  model = runtime.build_model(config, vocab_size=64)
  mesh = runtime.make_mesh(config)
  plain_params = state.init_params(model, config, mesh, jax.random.key(3))
  cached_params = state.init_params(model, cached, mesh, jax.random.key(3))
  assert jax.tree.structure(plain_params) == jax.tree.structure(cached_params)
  for a, b in zip(jax.tree.leaves(plain_params), jax.tree.leaves(cached_params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def frozen_run(data_dir, tmp_path_factory):
  """A frozen-tower tiny run on the suite's tiny corpus: the step-0 cache, 3 training steps, the cache from the
  final checkpoint.

  Returns (config, workdir, step-0 cache dir, final cache dir)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = th.tiny_config(data_dir, **FROZEN, **{"train.num_steps": 3, "checkpoint.every_steps": 3})
  step0_dir = str(tmp_path_factory.mktemp("cache_step0"))
  cache_speech.cache_speech_features(config_lib.apply_overrides(config, {"data.speech_features": step0_dir}),
                                     workdir)
  train.train_and_evaluate(config, workdir)
  final_dir = cache_speech.cache_speech_features(config, workdir)
  return config, workdir, step0_dir, final_dir


@pytest.mark.slow
def test_export_through_the_cache_equals_the_uncached_export(frozen_run):
  config, workdir, step0_dir, final_dir = frozen_run
  assert final_dir == os.path.join(workdir, "speech_features")
  # A frozen tower (mean pooling: no other parameters) gives the same features before and after training.
  assert speech_features.read_fingerprint(step0_dir) == speech_features.read_fingerprint(final_dir)
  assert sorted(f for f in os.listdir(final_dir) if f.endswith(".npy")) == ["test.npy", "train.npy",
                                                                            "validation.npy"]
  out = os.path.join(workdir, "export")
  plain_metrics = export.export_embeddings(config, workdir)["test"]
  plain_speech = np.load(os.path.join(out, "test_speech.npy"))
  plain_text = np.load(os.path.join(out, "test_text.npy"))
  cached_config = config_lib.apply_overrides(config, {"data.speech_features": final_dir})
  cached_metrics = export.export_embeddings(cached_config, workdir)["test"]
  cached_speech = np.load(os.path.join(out, "test_speech.npy"))
  np.testing.assert_allclose(cached_speech, plain_speech, atol=1e-5)
  np.testing.assert_array_equal(np.load(os.path.join(out, "test_text.npy")), plain_text)
  assert sorted(cached_metrics) == sorted(plain_metrics)
  for key, value in plain_metrics.items():
    assert cached_metrics[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key


def _global(config, host: dict, mesh) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, np.ndim(host[k])),
                                                    np.asarray(host[k])) for k in schema.step_keys(config)}


@pytest.mark.slow
def test_cached_train_steps_equal_uncached_steps(frozen_run):
  config, _, step0_dir, _ = frozen_run
  cached = config_lib.apply_overrides(config, {"data.speech_features": step0_dir})
  results = []
  for cfg in (config, cached):
    mesh, tokenizer, model = runtime.setup(cfg, "")
    optimizer = optim.make_optimizer(cfg)
    train_state, shardings = state.create_train_state(model, cfg, mesh, optimizer, jax.random.key(cfg.seed))
    iterator = input_pipeline.create_train_iterator(cfg, tokenizer)
    train_step = jax.jit(step.make_train_step(model, cfg, mesh, optimizer))
    losses = []
    with sharding.use_mesh(mesh, cfg.mesh.logical_axis_rules):
      for _ in range(2):
        batch = next(iterator)
        train_state, metrics = train_step(train_state, _global(cfg, batch, mesh))
        losses.append(float(metrics["loss"]))
    results.append((batch, losses, jax.device_get(train_state.params)))
  (plain_batch, plain_losses, plain_params), (cached_batch, cached_losses, cached_params) = results
  assert "audio" in plain_batch and "audio" not in cached_batch
  width = speech_features.read_fingerprint(step0_dir)["width"]
  assert width == 128 and cached_batch["speech_features"].shape == (config.train.global_batch_size, width)
  np.testing.assert_array_equal(cached_batch["input_ids"], plain_batch["input_ids"])
  np.testing.assert_array_equal(cached_batch["labels"], plain_batch["labels"])
  np.testing.assert_allclose(cached_losses, plain_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(plain_params), jax.tree.leaves(cached_params), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


@pytest.mark.slow
def test_cache_of_other_tower_weights_is_refused(frozen_run):
  config, workdir, step0_dir, _ = frozen_run
  cached = config_lib.apply_overrides(config, {"data.speech_features": step0_dir})
  mesh, tokenizer, model = runtime.setup(cached, workdir)
  _, params, _ = runtime.restore_params(cached, workdir, model, mesh)
  tower = jax.tree.map(lambda x: x, params["speech_tower"])
  first = jax.tree_util.tree_leaves_with_path(tower)[0][0]
  other = dict(params, speech_tower=jax.tree_util.tree_map_with_path(
      lambda p, x: x + 1e-3 if p == first else x, tower))
  embedder = evaluate.Embedder(model, cached, mesh, tokenizer)
  with pytest.raises(speech_features.SpeechCacheError, match="speech representation's parameters"):
    evaluate.embed_split(embedder, other, cached, "test")
  longer = config_lib.apply_overrides(cached, {"data.eval_max_seconds": 0.9})
  with pytest.raises(speech_features.SpeechCacheError, match="crop_seconds: cache 1.0 vs now 0.9"):
    input_pipeline.create_eval_iterator(longer, tokenizer, "test", batch_size=16)


@pytest.mark.slow
def test_interrupted_split_is_not_trusted_and_the_rerun_completes(frozen_run, tmp_path):
  config, workdir, step0_dir, _ = frozen_run
  directory = str(tmp_path / "cache")
  plain = config
  mesh, tokenizer, model = runtime.setup(plain, workdir)
  params, _ = cache_speech.representation_params(plain, workdir, model, mesh)
  fingerprint = input_pipeline.representation_fingerprint(plain, params)
  speech_features.prepare_directory(directory, fingerprint)
  embedder = evaluate.Embedder(model, plain, mesh, tokenizer)

  def fail_after_first(batch_index, written):
    if batch_index == 0:
      raise KeyboardInterrupt("interrupted after the first batch")

  with pytest.raises(KeyboardInterrupt):
    cache_speech.cache_split(embedder, params, plain, "train", directory, fingerprint, on_batch=fail_after_first)
  assert os.listdir(directory) == [speech_features.FINGERPRINT_FILE]
  assert not speech_features.split_is_cached(directory, "train", fingerprint)
  with pytest.raises(speech_features.SpeechCacheError, match="not cached"):
    speech_features.CachedSplit(directory, "train")
  written = cache_speech.cache_speech_features(config_lib.apply_overrides(config, {"data.speech_features": directory}),
                                               workdir)
  for split in ("train", "validation", "test"):
    assert speech_features.split_is_cached(written, split, fingerprint)
    np.testing.assert_array_equal(speech_features.CachedSplit(written, split).features,
                                  speech_features.CachedSplit(step0_dir, split).features)
