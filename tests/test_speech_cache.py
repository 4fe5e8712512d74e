"""The speech-feature cache (erclap.speech_cache, speech_source.CACHED, --mode=cache_speech): format, refusals,
interrupted writes, and the same embeddings, metrics and train steps as the uncached path for a frozen speech
tower."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import jax
import numpy as np
import optax
import pytest
import train_helpers as th

from erclap import (
  checkpointing,
  config_lib,
  data,
  descriptions,
  evaluate,
  export,
  fileio,
  input_pipeline,
  optim,
  runtime,
  sharding,
  speech_cache_mode,
  speech_source,
  state,
  step,
  tokenization,
  train,
  validation,
)
from erclap.speech_cache import fingerprint as cache_fingerprint
from erclap.speech_cache import store

# Clips of the tiny corpus are 0.4-0.8 s: a 1 s crop holds every clip whole, so the uncached pipeline's random
# training crop and the cache's centre crop are the same padded clip, and train steps compare exactly.
FROZEN = {"model.freeze_speech": True, "data.max_seconds": 1.0}


def _fingerprint(**changes) -> dict:
  fields = dict(params_digest="abc", representation="pooled", speech_pooling="mean", speech_arch="SpeechArch()",
                speech_input=(0.0, 0.0), dtype="float32", crop_seconds=1.0, sample_rate=16000,
                corpus={"name": "embedded", "version": "1.0.0"}, width=3)
  fields.update(changes)
  return cache_fingerprint.make_fingerprint(**fields)


# ----------------------------------------------------------------------------- format (numpy only)


def test_params_digest_sees_every_value_path_and_dtype():
  tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.zeros(2, np.float32)}
  digest = cache_fingerprint.params_digest(tree)
  assert digest == cache_fingerprint.params_digest({"b": np.zeros(2, np.float32), "a": dict(tree["a"])})
  changed = {"a": {"kernel": tree["a"]["kernel"].copy()}, "b": tree["b"]}
  changed["a"]["kernel"][1, 2] += 1e-6
  assert cache_fingerprint.params_digest(changed) != digest
  assert cache_fingerprint.params_digest({"a": tree["a"], "c": tree["b"]}) != digest
  assert cache_fingerprint.params_digest({"a": tree["a"], "b": tree["b"].astype(np.float64)}) != digest


COLUMNS = {"score": np.float32, "kind": np.int32}


def test_split_round_trip_by_row(tmp_path):
  fp = _fingerprint()
  store.prepare_directory(str(tmp_path), fp)
  rng = np.random.default_rng(0)
  rows = rng.standard_normal((5, 3)).astype(np.float32)
  score, kind = rng.standard_normal(5).astype(np.float32), np.array([3, -1, 0, 7, 2], np.int32)
  ids = [f"clip{i}" for i in (4, 2, 0, 1, 3)]
  with store.SplitWriter(str(tmp_path), "test", fp, 5, COLUMNS) as writer:
    writer.write(rows[:2], ids[:2], dict(score=score[:2], kind=kind[:2]))
    # Rows may arrive in any order (gathered from several processes): written at their row numbers.
    at = np.array([4, 2, 3])
    writer.write(rows[at], [ids[i] for i in at], dict(score=score[at], kind=kind[at]), at=at)
  assert store.split_is_cached(str(tmp_path), "test", fp)
  cached = store.CachedSplit(str(tmp_path), "test", fp)
  assert isinstance(cached.features, np.memmap) and isinstance(cached.columns, np.memmap)
  assert cached.ids == ids and cached.column_names == ("score", "kind")
  for row in range(5):
    record = cached.record(row)
    assert sorted(record) == ["id", "kind", "score", "speech_features"] and record["id"] == ids[row]
    assert record["score"] == score[row] and record["score"].dtype == np.float32
    assert record["kind"] == kind[row] and record["kind"].dtype == np.int32
    np.testing.assert_array_equal(record["speech_features"], rows[row])
  clone = pickle.loads(pickle.dumps(cached))  # Grain workers: no array in the pickle, reopened there
  assert clone._features is None and clone._columns is None
  assert clone.record(3)["kind"] == 7
  np.testing.assert_array_equal(clone.record(3)["speech_features"], rows[3])
  with pytest.raises(IndexError, match="row 5 out of range"):
    cached.record(5)
  records = [{"id": clip, "audio": np.zeros(4, np.int16)} for clip in ids]
  with pytest.raises(store.SpeechCacheError, match="has 2 clips.*caches 5"):
    store.CachedSpeechSource(records[:2], cached)
  source = store.CachedSpeechSource(records, cached)
  assert len(source) == 5 and source.ids() == ids and input_pipeline.source_ids(source) == ids
  assert "audio" not in source[1] and source[1]["kind"] == -1


def test_split_writer_refuses_bad_writes(tmp_path):
  fp = _fingerprint()
  store.prepare_directory(str(tmp_path), fp)
  good = dict(score=np.zeros(2, np.float32), kind=np.zeros(2, np.int32))
  with store.SplitWriter(str(tmp_path), "test", fp, 3, COLUMNS) as writer:
    with pytest.raises(store.SpeechCacheError, match=r"columns \['score'\], expected \['kind', 'score'\]"):
      writer.write(np.zeros((2, 3)), ["a", "b"], dict(score=good["score"]))
    with pytest.raises(store.SpeechCacheError, match="column 'kind' of shape \\(2,\\), dtype float64"):
      writer.write(np.zeros((2, 3)), ["a", "b"], dict(good, kind=np.zeros(2)))
    with pytest.raises(store.SpeechCacheError, match="row numbers"):
      writer.write(np.zeros((2, 3)), ["a", "b"], good, at=[1, 3])
    writer.write(np.zeros((2, 3)), ["a", "b"], good, at=[2, 0])
    with pytest.raises(store.SpeechCacheError, match="written twice"):
      writer.write(np.zeros((1, 3)), ["c"], {k: v[:1] for k, v in good.items()}, at=[0])
    writer.write(np.ones((1, 3)), ["c"], {k: v[:1] for k, v in good.items()}, at=[1])
  assert store.CachedSplit(str(tmp_path), "test").ids == ["b", "c", "a"]
  with pytest.raises(store.SpeechCacheError, match="not a numeric scalar type"):
    store.SplitWriter(str(tmp_path), "other", fp, 1, {"name": object})


def _write_old_format_cache(directory: str, fp: dict) -> None:
  """A cache as format version 1 wrote it: features and ids, no columns, rows in any order."""
  old = dict(fp, format_version=1)
  fileio.write_json(os.path.join(directory, store.FINGERPRINT_FILE), old)
  np.save(os.path.join(directory, "test.npy"), np.ones((2, fp["width"]), np.float32))
  fileio.write_json(os.path.join(directory, "test_ids.json"), ["a", "b"])
  fileio.write_json(os.path.join(directory, "test.json"), dict(
      split="test", num_examples=2, width=fp["width"], fingerprint_digest=cache_fingerprint.fingerprint_digest(old),
      ids_digest=hashlib.sha256(b"a\nb").hexdigest()))


def test_old_format_cache_is_refused(tmp_path):
  fp = _fingerprint()
  _write_old_format_cache(str(tmp_path), fp)
  for current in (None, fp):
    with pytest.raises(store.SpeechCacheError, match="does not match") as info:
      store.CachedSplit(str(tmp_path), "test", current)
    assert f"format_version: cache 1 vs now {cache_fingerprint.FORMAT_VERSION}" in str(info.value)
    assert "Rebuild it with --mode=cache_speech" in str(info.value)
  with pytest.raises(store.SpeechCacheError, match="another model or config:\n  format_version"):
    store.prepare_directory(str(tmp_path), fp)


def test_mismatched_fingerprint_names_what_differs(tmp_path):
  fp = _fingerprint()
  store.prepare_directory(str(tmp_path), fp)
  with store.SplitWriter(str(tmp_path), "test", fp, 1, COLUMNS) as writer:
    writer.write(np.ones((1, 3), np.float32), ["a"], dict(score=np.ones(1, np.float32), kind=np.ones(1, np.int32)))
  other = _fingerprint(params_digest="def", crop_seconds=2.0)
  with pytest.raises(store.SpeechCacheError) as info:
    store.CachedSplit(str(tmp_path), "test", other)
  message = str(info.value)
  assert "parameters" in message and "crop_seconds: cache 1.0 vs now 2.0" in message
  assert "width" not in message
  with pytest.raises(store.SpeechCacheError, match="another model or config"):
    store.prepare_directory(str(tmp_path), other)
  with pytest.raises(store.SpeechCacheError, match="'validation' is not cached"):
    store.CachedSplit(str(tmp_path), "validation", fp)


def test_incomplete_writer_leaves_nothing(tmp_path):
  fp = _fingerprint()
  store.prepare_directory(str(tmp_path), fp)
  with pytest.raises(store.SpeechCacheError, match="1 of 2 clips written"):
    with store.SplitWriter(str(tmp_path), "train", fp, 2, COLUMNS) as writer:
      writer.write(np.ones((1, 3), np.float32), ["a"], dict(score=np.ones(1, np.float32), kind=np.ones(1, np.int32)))
  assert sorted(os.listdir(tmp_path)) == [store.FINGERPRINT_FILE]
  assert not store.split_is_cached(str(tmp_path), "train", fp)


def test_config_refuses_cache_without_frozen_speech(tmp_path):
  config = th.tiny_config(str(tmp_path), **{"data.speech_features": str(tmp_path)})
  assert speech_source.of(config) is speech_source.CACHED
  with pytest.raises(config_lib.ConfigError, match=r"data.speech_features=.*stands for a frozen speech path, but "
                                                   r"config.model.freeze_speech=False: the speech path trains"):
    validation.validate(config)
  validation.validate(th.tiny_config(str(tmp_path), **FROZEN, **{"data.speech_features": str(tmp_path)}))


def test_step_refuses_a_trained_representation_under_the_cache(tmp_path):
  cached = {"data.speech_features": str(tmp_path), "model.speech_pooling": "attentive_stats"}
  # model.freeze_speech freezes the whole representation (tower, pooling, SER head): the cache is accepted.
  config = th.tiny_config(str(tmp_path), **FROZEN, **cached)
  step.make_train_step(None, config, None, optax.identity())
  # Without it the representation would move; the step refuses (the library's guard behind validation).
  for config in (th.tiny_config(str(tmp_path), **cached),
                 th.tiny_config(str(tmp_path), **FROZEN, **cached, **{"model.train_speech_pooling": True})):
    with pytest.raises(ValueError, match="stands for a frozen speech path"):
      step.make_train_step(None, config, None, optax.identity())
    with pytest.raises(ValueError, match="stands for a frozen speech path"):  # asked for explicitly, too
      step.make_train_step(None, config_lib.apply_overrides(config, {"data.speech_features": ""}), None,
                           optax.identity(), speech_source.CACHED)


# ----------------------------------------------------------------------------- the cache on the tiny corpus

WIDTH = 4


class CountingSource:
  """A corpus source that counts its record reads; ``order`` (indices) reorders or shortens it."""

  def __init__(self, source, order=None):
    self.source, self.order = source, list(range(len(source))) if order is None else list(order)
    self.reads = 0

  def __len__(self) -> int:
    return len(self.order)

  def __getitem__(self, index) -> dict:
    self.reads += 1
    return self.source[self.order[int(index)]]


@pytest.fixture
def tiny_cache(tiny_embedded, tmp_path):
  """A cache of the tiny corpus written the way --mode=cache_speech writes it with 2 processes (each process's
  contiguous share, batch by batch, gathered process after process), with random features.

  Returns (cached config, {split: (N, WIDTH) features of corpus record i at row i})."""
  config, _ = tiny_embedded
  directory = str(tmp_path / "cache")
  cached_config = config_lib.apply_overrides(config, {**FROZEN, "data.speech_features": directory})
  fp = cache_fingerprint.config_fingerprint(cached_config, params_digest="random", width=WIDTH)
  store.prepare_directory(directory, fp)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  rng = np.random.default_rng(5)
  features = {}
  for split in ("train", "validation", "test"):
    n = len(data.get_data_source(config.data, split))
    features[split] = rng.standard_normal((n, WIDTH)).astype(np.float32)
    shares = [input_pipeline.create_eval_iterator(config, tokenizer, split, batch_size=5, process_index=p,
                                                  process_count=2) for p in range(2)]
    with store.SplitWriter(directory, split, fp, n, speech_source.CACHED_COLUMNS) as writer:
      for b, batches in enumerate(zip(*shares, strict=True)):
        gathered = {k: np.concatenate([np.asarray(x[k]) for x in batches]) for k in ("valid", "labels", "class_id",
                                                                                      "id")}
        keep = gathered["valid"].astype(bool)
        at = np.concatenate([share.batch_rows(b) for share in shares])[keep]
        writer.write(features[split][at], list(gathered["id"][keep]),
                     speech_source.cache_columns(gathered["labels"][keep], gathered["class_id"][keep]), at=at)
  return cached_config, features


def test_cached_source_serves_every_record_without_reading_the_corpus(tiny_cache):
  config, features = tiny_cache
  for split in ("train", "validation", "test"):
    reference = data.get_data_source(config.data, split)
    corpus = CountingSource(data.get_data_source(config.data, split))
    source = store.CachedSpeechSource(corpus, speech_source.open_split(config, split))
    guard_reads = corpus.reads
    assert 2 <= guard_reads <= 8
    clone = pickle.loads(pickle.dumps(source))  # what a Grain worker process gets
    for i in range(len(reference)):
      expected = reference[i]
      for record in (source[i], clone[i]):
        assert sorted(record) == sorted(["id", "speech_features", *speech_source.CACHED_COLUMNS])
        assert record["id"] == expected["id"]
        for key in speech_source.CACHED_COLUMNS:
          assert record[key] == expected[key] and record[key].dtype == expected[key].dtype, (split, i, key)
        np.testing.assert_array_equal(record["speech_features"], features[split][i])
    assert corpus.reads == guard_reads


def test_reordered_or_shortened_corpus_is_refused(tiny_cache):
  config, _ = tiny_cache
  corpus = data.get_data_source(config.data, "train")
  cached = speech_source.open_split(config, "train")
  n = len(corpus)
  with pytest.raises(store.SpeechCacheError, match=f"'train' has {n - 1} clips, but .* caches {n}: the "
                     "corpus changed since --mode=cache_speech; rebuild the cache"):
    store.CachedSpeechSource(CountingSource(corpus, range(n - 1)), cached)
  for order in (range(n - 1, -1, -1), [*range(1, n), 0], [*range(n // 2), n - 1, *range(n // 2, n - 1)]):
    with pytest.raises(store.SpeechCacheError) as info:
      store.CachedSpeechSource(CountingSource(corpus, order), cached)
    message = str(info.value)
    assert "the corpus changed since --mode=cache_speech; rebuild the cache" in message
    assert "'train'" in message and cached.directory in message


def test_pipelines_on_the_cache_give_the_uncached_batches_with_llm_descriptions(tiny_cache, tmp_path):
  config, _ = tiny_cache
  table = {}
  for split in ("train", "test"):
    source = data.get_data_source(config.data, split)
    table.update({source[i]["id"]: [f"clip {i} of {split}", f"take {i} of {split}"] for i in range(len(source))})
  path = str(tmp_path / "llm.jsonl")
  descriptions.write_jsonl(path, table)
  cached = config_lib.apply_overrides(config, {"data.descriptions": path, "data.worker_count": 1})
  plain = config_lib.apply_overrides(cached, {"data.speech_features": "", "data.worker_count": 0})
  tokenizer = tokenization.build_tokenizer(plain.model, plain.data.max_text_tokens)
  # The cache holds a 1 s centre crop: every tiny clip whole, as in the uncached pipeline's 1 s crops.
  trains = [input_pipeline.create_train_iterator(c, tokenizer, process_index=0, process_count=1)
            for c in (plain, cached)]
  for _ in range(2):
    a, b = (next(it) for it in trains)
    assert "speech_features" in b and "audio" not in b
    for key in ("labels", "class_id", "input_ids", "valid"):
      np.testing.assert_array_equal(b[key], a[key], err_msg=key)
  a, b = (list(input_pipeline.create_eval_iterator(c, tokenizer, "test", batch_size=6)) for c in (plain, cached))
  for x, y in zip(a, b, strict=True):
    assert x["description"] == y["description"] and list(x["id"]) == list(y["id"])
    for key in ("labels", "class_id", "input_ids", "valid"):
      np.testing.assert_array_equal(y[key], x[key], err_msg=key)


def test_old_format_cache_is_refused_by_the_pipeline(tiny_embedded, tmp_path):
  config, _ = tiny_embedded
  config = config_lib.apply_overrides(config, {**FROZEN, "data.speech_features": str(tmp_path)})
  _write_old_format_cache(str(tmp_path), cache_fingerprint.config_fingerprint(config, width=WIDTH))
  with pytest.raises(store.SpeechCacheError, match="format_version: cache 1 vs now"):
    speech_source.open_split(config, "test")


def test_cache_without_the_pipeline_columns_is_refused(tiny_embedded, tmp_path):
  config, _ = tiny_embedded
  config = config_lib.apply_overrides(config, {**FROZEN, "data.speech_features": str(tmp_path)})
  fp = cache_fingerprint.config_fingerprint(config, width=WIDTH)
  store.prepare_directory(str(tmp_path), fp)
  with store.SplitWriter(str(tmp_path), "test", fp, 1, {"arousal": np.float32}) as writer:
    writer.write(np.zeros((1, WIDTH)), ["a"], {"arousal": np.ones(1, np.float32)})
  with pytest.raises(store.SpeechCacheError,
                     match=r"'test' of the speech-feature cache .* lacks the columns \['valence', 'dominance', "
                           r"'class_id'\]"):
    speech_source.open_split(config, "test")


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
  step0 = config_lib.apply_overrides(config, {"data.speech_features": step0_dir})
  speech_cache_mode.cache_speech_features(th.resolved(step0, workdir, "cache_speech"), workdir)
  train.train_and_evaluate(th.resolved(config, workdir), workdir)
  final_dir = speech_cache_mode.cache_speech_features(th.resolved(config, workdir, "cache_speech"), workdir)
  return config, workdir, step0_dir, final_dir


@pytest.mark.slow
def test_export_through_the_cache_equals_the_uncached_export(frozen_run):
  config, workdir, step0_dir, final_dir = frozen_run
  assert final_dir == os.path.join(workdir, "speech_features")
  # A frozen tower (mean pooling: no other parameters) gives the same features before and after training.
  assert store.read_fingerprint(step0_dir) == store.read_fingerprint(final_dir)
  assert sorted(os.listdir(final_dir)) == sorted([store.FINGERPRINT_FILE] + [
      split + suffix for split in ("test", "train", "validation")
      for suffix in (".npy", "_columns.npy", "_ids.json", ".json")])
  out = os.path.join(workdir, "export")
  plain_metrics = export.export_embeddings(th.resolved(config, workdir, "export"), workdir)["test"]
  plain_speech = np.load(os.path.join(out, "test_speech.npy"))
  plain_text = np.load(os.path.join(out, "test_text.npy"))
  cached_config = config_lib.apply_overrides(config, {"data.speech_features": final_dir})
  cached_metrics = export.export_embeddings(th.resolved(cached_config, workdir, "export"), workdir)["test"]
  cached_speech = np.load(os.path.join(out, "test_speech.npy"))
  np.testing.assert_allclose(cached_speech, plain_speech, atol=1e-5)
  np.testing.assert_array_equal(np.load(os.path.join(out, "test_text.npy")), plain_text)
  assert sorted(cached_metrics) == sorted(plain_metrics)
  for key, value in plain_metrics.items():
    assert cached_metrics[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key


@pytest.mark.slow
def test_cache_rows_are_the_corpus_records(frozen_run):
  config, _, step0_dir, _ = frozen_run
  for split in ("train", "validation", "test"):
    corpus = data.get_data_source(config.data, split)
    cached = store.CachedSplit(step0_dir, split)
    assert len(cached) == len(corpus)
    for i in range(len(corpus)):
      record, expected = cached.record(i), corpus[i]
      assert record["id"] == expected["id"], (split, i)
      for key in speech_source.CACHED_COLUMNS:
        assert record[key] == expected[key], (split, i, key)


def _global(config, host: dict, mesh) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, np.ndim(host[k])),
                                                    np.asarray(host[k])) for k in speech_source.of(config).step_keys}


@pytest.mark.slow
def test_cached_train_steps_equal_uncached_steps(frozen_run):
  config, _, step0_dir, _ = frozen_run
  cached = config_lib.apply_overrides(config, {"data.speech_features": step0_dir})
  results = []
  for cfg in (config, cached):
    mesh, tokenizer, model = runtime.setup(cfg)
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
  width = store.read_fingerprint(step0_dir)["width"]
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
  mesh, tokenizer, model = runtime.setup(cached)
  _, params, _ = runtime.restore_params(cached, workdir, model, mesh)
  tower = jax.tree.map(lambda x: x, params["speech_tower"])
  first = jax.tree_util.tree_leaves_with_path(tower)[0][0]
  other = dict(params, speech_tower=jax.tree_util.tree_map_with_path(
      lambda p, x: x + 1e-3 if p == first else x, tower))
  embedder = evaluate.Embedder(model, cached, mesh, tokenizer)
  with pytest.raises(store.SpeechCacheError, match="speech representation's parameters"):
    evaluate.embed_split(embedder, other, cached, "test")
  longer = config_lib.apply_overrides(cached, {"data.eval_max_seconds": 0.9})
  with pytest.raises(store.SpeechCacheError, match="crop_seconds: cache 1.0 vs now 0.9"):
    input_pipeline.create_eval_iterator(longer, tokenizer, "test", batch_size=16)


@pytest.mark.slow
def test_interrupted_split_is_not_trusted_and_the_rerun_completes(frozen_run, tmp_path):
  config, workdir, step0_dir, _ = frozen_run
  directory = str(tmp_path / "cache")
  plain = config
  mesh, tokenizer, model = runtime.setup(plain)
  params, _ = speech_cache_mode.representation_params(plain, workdir, model, mesh)
  fingerprint = cache_fingerprint.representation_fingerprint(plain, params)
  store.prepare_directory(directory, fingerprint)
  embedder = evaluate.Embedder(model, plain, mesh, tokenizer, source=speech_source.AUDIO)

  def fail_after_first(batch_index, written):
    if batch_index == 0:
      raise KeyboardInterrupt("interrupted after the first batch")

  with pytest.raises(KeyboardInterrupt):
    speech_cache_mode.cache_split(embedder, params, plain, "train", directory, fingerprint,
                                  on_batch=fail_after_first)
  assert os.listdir(directory) == [store.FINGERPRINT_FILE]
  assert not store.split_is_cached(directory, "train", fingerprint)
  with pytest.raises(store.SpeechCacheError, match="not cached"):
    store.CachedSplit(directory, "train")
  rerun = config_lib.apply_overrides(config, {"data.speech_features": directory})
  written = speech_cache_mode.cache_speech_features(th.resolved(rerun, workdir, "cache_speech"), workdir)
  for split in ("train", "validation", "test"):
    assert store.split_is_cached(written, split, fingerprint)
    np.testing.assert_array_equal(store.CachedSplit(written, split).features,
                                  store.CachedSplit(step0_dir, split).features)


def _saved_iterator(config, tokenizer, workdir: str, batches: int = 2):
  """The training iterator on ``config`` checkpointed after ``batches`` batches; returns the batch after them."""
  it = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  for _ in range(batches):
    next(it)
  manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=True)
  checkpointing.save(manager, 1, {"w": np.zeros(2, np.float32)}, data_iter=it, force=True)
  manager.wait_until_finished()
  manager.close()
  return next(it)


def _resumed_batch(config, tokenizer, workdir: str) -> dict:
  it = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=True)
  try:
    restored = checkpointing.restore_latest(manager, {"w": jax.ShapeDtypeStruct((2,), np.float32)}, data_iter=it)
  finally:
    manager.close()
  assert restored is not None and restored[0] == 1
  return next(it)


def test_iterator_state_names_the_cache_by_content_so_a_moved_workdir_resumes(tiny_cache, tmp_path):
  config, _ = tiny_cache
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  workdir = str(tmp_path / "run")
  expected = _saved_iterator(config, tokenizer, workdir)
  state = (tmp_path / "run" / "checkpoints" / "1" / "data_iter" / "process_0-of-1.json").read_text()
  assert str(tmp_path) not in state and "ids sha256" in state
  moved = str(tmp_path / "moved")
  os.rename(workdir, moved)
  os.rename(config.data.speech_features, str(tmp_path / "moved_cache"))  # the cache moved along
  there = config_lib.apply_overrides(config, {"data.speech_features": str(tmp_path / "moved_cache")})
  resumed = _resumed_batch(there, tokenizer, moved)
  np.testing.assert_array_equal(resumed["speech_features"], expected["speech_features"])
  np.testing.assert_array_equal(resumed["input_ids"], expected["input_ids"])


def test_iterator_state_that_names_the_cache_by_its_path_still_resumes(tiny_cache, tmp_path):
  """Checkpoints written before the state named the cache by content: their record of the source is the cache's
  absolute directory."""
  config, _ = tiny_cache
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  workdir = str(tmp_path / "run")
  expected = _saved_iterator(config, tokenizer, workdir)
  path = tmp_path / "run" / "checkpoints" / "1" / "data_iter" / "process_0-of-1.json"
  state = json.loads(path.read_text())
  corpus = data.get_data_source(config.data, config.data.train_split)
  state["data_source"] = f"CachedSpeechSource({corpus!r}, {os.path.abspath(config.data.speech_features)})"
  path.write_text(json.dumps(state, indent=4))
  resumed = _resumed_batch(config, tokenizer, workdir)
  np.testing.assert_array_equal(resumed["speech_features"], expected["speech_features"])
  np.testing.assert_array_equal(resumed["labels"], expected["labels"])
  plain = config_lib.apply_overrides(config, {"data.speech_features": "", "model.freeze_speech": False})
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"the training data: checkpoint CachedSpeech"):
    _resumed_batch(plain, tokenizer, workdir)  # the corpus records themselves are another source
