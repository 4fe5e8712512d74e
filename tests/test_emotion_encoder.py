"""The emotion rank encoder API and the cross-modal stage initialised from a speech emotion model.

The Odyssey directory and its PyTorch replica (a transformers WavLMModel + attentive statistics pooling + MLP
head, run on each utterance alone) come from tests/test_odyssey.py; ERCLAP encodes padded, bucketed batches.
torch is the oracle only.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
import test_odyssey as replica
import torch
import train_helpers as th
from scipy.io import wavfile

from erclap import (
  checkpointing,
  config_lib,
  model_export,
  models,
  odyssey_import,
  optim,
  resolve,
  runtime,
  state,
  tokenization,
  tower_init,
  train,
  trainable,
  validation,
)
from erclap.configs import paper, ser_pretrain
from erclap.data import audio as audio_io
from erclap.emotion_encoder import EmotionRankEncoder, bucket_lengths, plan_batches
from erclap.inference import EmotionRankEncoder as ReExported
from erclap.schema import LABEL_NAMES

TOL = 1e-4  # relative to each output's largest magnitude
# Two batches (8 + 2 rows on 8 devices) over three length buckets (16000, 22628, 32000 at max_seconds=2).
LENGTHS = [4000, 2500, 31000, 3130, 900, 17000, 12000, 800, 6000, 23000]


@pytest.fixture(scope="module")
def odyssey(tmp_path_factory):
  return replica._write_odyssey(tmp_path_factory.mktemp("odyssey"))


@pytest.fixture(scope="module")
def encoder(odyssey):
  return EmotionRankEncoder.load(odyssey[0], batch_size=8, max_seconds=2.0)


def _waves(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [(0.5 * rng.normal(size=n) + 0.1 * np.sin(np.arange(n) / 7.0)).astype(np.float32) for n in lengths]


def _replica(wavlm, head, wav):
  """(pooled, scores) of one utterance alone, as the published baseline computes them."""
  with torch.no_grad():
    x = torch.from_numpy((wav - replica.MEAN) / (replica.STD + 1e-6))[None]
    pooled = head.pool(wavlm(x).last_hidden_state[0])
    return pooled.numpy(), head.head(pooled).numpy()


def _assert_close(got, want):
  err = replica._rel_err(got, want)
  assert err < TOL, err


def test_odyssey_directory_matches_the_replica_on_padded_batches(odyssey, encoder):
  _, wavlm, head = odyssey
  assert ReExported is EmotionRankEncoder
  waves = _waves(LENGTHS)
  out = encoder.encode(waves)
  want = [_replica(wavlm, head, w) for w in waves]
  assert out["embedding"].shape == (len(LENGTHS), 2 * replica.HIDDEN) and out["embedding"].dtype == np.float32
  assert out["head"].shape == (len(LENGTHS), replica.CLASSES)
  _assert_close(out["embedding"], np.stack([p for p, _ in want]))
  _assert_close(out["head"], np.stack([s for _, s in want]))
  np.testing.assert_array_equal(encoder.embed(waves[:3]), out["embedding"][:3])  # batch-independent
  attrs = encoder.predict_attributes(waves)
  assert list(attrs) == ["arousal", "dominance", "valence"]  # id2label order
  for i, name in enumerate(attrs):
    np.testing.assert_array_equal(attrs[name], out["head"][:, i])


def test_a_44k_wav_file_is_resampled_like_the_reader(odyssey, encoder, tmp_path):
  _, wavlm, head = odyssey
  rng = np.random.default_rng(5)
  t = np.arange(int(0.7 * 44100)) / 44100
  wave = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
  path = str(tmp_path / "clip.wav")
  wavfile.write(path, 44100, wave)
  resampled = audio_io.read_audio(path, 16000)  # ERCLAP's reader: the reference resampling for both
  assert abs(resampled.size - 0.7 * 16000) <= 1
  out = encoder.encode([path, resampled, _waves([3000])[0]])
  pooled, scores = _replica(wavlm, head, resampled)
  _assert_close(out["embedding"][0], pooled)
  _assert_close(out["head"][0], scores)
  np.testing.assert_array_equal(out["head"][0], out["head"][1])


def test_bad_audio_is_named(encoder, tmp_path):
  with pytest.raises(ValueError, match=r"audio\[1\]: 2.50 s is longer than max_seconds=2"):
    encoder.embed([np.zeros(3000), np.zeros(40000)])
  with pytest.raises(ValueError, match=r"audio\[0\]: 30 samples is shorter than the speech model's receptive"):
    encoder.embed([np.zeros(30, np.float32)])
  with pytest.raises(ValueError, match="audio file not found"):
    encoder.embed([str(tmp_path / "missing.wav")])
  with pytest.raises(FileNotFoundError, match="neither an ERCLAP workdir"):
    EmotionRankEncoder.load(str(tmp_path))


def test_buckets_and_batch_plan():
  buckets = bucket_lengths(480000, 16000)
  assert buckets[0] == 16000 and buckets[-1] == 480000 and len(buckets) == 11
  assert all(a < b <= math.ceil(a * math.sqrt(2)) for a, b in zip(buckets, buckets[1:], strict=False))
  lengths = [5, 70000, 16000, 16001, 300, 480000, 9, 250000, 22000]
  plan = plan_batches(lengths, 4, buckets, divisor=2)
  assert sorted(i for idx, _, _ in plan for i in idx) == list(range(len(lengths)))
  for idx, rows, length in plan:
    assert length == min(b for b in buckets if b >= max(lengths[i] for i in idx))
    assert rows % 2 == 0 and len(idx) <= rows < 2 * max(len(idx), 2)
  assert [len(idx) for idx, _, _ in plan] == [4, 4, 1]
  assert plan[0][0][0] == 5 and plan[-1][0] == [0]  # longest first


# --------------------------------------------------------------------------- stage-1 (ser) workdirs


def _ser_config(**overrides):
  base = {**th.TINY_OVERRIDES, "data.data_dir": "unused", "model.speech_pooling": "attentive_stats",
          "model.speech_input_mean": 0.02, "model.speech_input_std": 0.5, "model.ser_head_layers": 2}
  return config_lib.apply_overrides(ser_pretrain.get_config("demo"), {**base, **overrides})


@pytest.fixture(scope="module")
def ser_workdir(tmp_path_factory):
  """A stage-1 workdir as the trainer writes it (state + metadata with the config), random weights."""
  config = _ser_config()
  model = runtime.build_model(config)
  mesh = runtime.make_mesh(config)
  optimizer = optim.make_optimizer(config)
  train_state, _ = state.create_train_state(model, config, mesh, optimizer, jax.random.key(7))
  rng = np.random.default_rng(1)  # away from the initialisation's zeros and ones
  params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.normal(size=x.shape).astype(np.float32),
                        jax.device_get(train_state.params))
  train_state = train_state.replace(params=jax.device_put(params), step=jax.device_put(np.int32(3)))
  workdir = str(tmp_path_factory.mktemp("ser") / "run")
  manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=False)
  meta = dict(stage="ser", config=config.to_json_best_effort(), vocab_size=0, step=3)
  checkpointing.save(manager, 3, train_state, meta=meta, force=True)
  manager.wait_until_finished()
  manager.close()
  return workdir, config, model, params


@pytest.mark.slow
def test_stage1_workdir_loads_through_the_same_api(ser_workdir, tmp_path):
  workdir, _, model, params = ser_workdir
  enc = EmotionRankEncoder.load(workdir, batch_size=8, max_seconds=1.0)
  assert enc.label_names == LABEL_NAMES and enc.sample_rate == 16000
  waves = _waves([16000, 5000, 9000, 1200])
  out = enc.encode(waves)
  apply = jax.jit(lambda p, a, m: model.apply({"params": p}, a, m))
  for i, w in enumerate(waves):  # each utterance alone, unpadded
    alone = apply(params, w[None], np.ones((1, w.size), bool))
    _assert_close(out["embedding"][i], np.asarray(alone["embedding"][0]))
    _assert_close(out["head"][i], np.asarray(alone["attributes"][0]))
  assert out["embedding"].shape == (4, 2 * model.speech_arch.hidden_size)
  by_step = EmotionRankEncoder.load(f"{workdir}/checkpoints/3", batch_size=8, max_seconds=1.0)
  np.testing.assert_array_equal(by_step.predict_attributes(waves)["valence"], out["head"][:, 1])
  config = tower_init.read_workdir_config(workdir)  # the stage-1 model as a model directory (--mode=export_model)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  model_dir = model_export.write_model_dir(str(tmp_path / "model"), config, 3, params, tokenizer)
  exported = EmotionRankEncoder.load(model_dir, batch_size=8, max_seconds=1.0)
  assert exported.label_names == LABEL_NAMES
  np.testing.assert_array_equal(exported.encode(waves)["head"], out["head"])


def _clap_params(config):
  """Zeros in the shape of the CLAP model's parameters (a host tree, as tower loading receives it)."""
  model = runtime.build_model(config, vocab_size=64)
  shapes = nn.meta.unbox(state.abstract_params(model, config))
  return model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_cross_modal_stage_takes_the_stage1_representation(ser_workdir):
  workdir, ser_config, _, source = ser_workdir
  keep = {k: config_lib.get(ser_config, k) for k in
          ("model.speech_pooling", "model.speech_input_mean", "model.speech_input_std", "model.ser_head_layers")}
  config = th.tiny_config("unused", **keep, **{"model.speech_init": workdir, "model.freeze_speech": True,
                                               "model.speech_representation": "ser_hidden"})
  _, params = _clap_params(config)
  loaded = tower_init.load_tower_weights(params, config)
  for name in models.SPEECH_PATH:
    for a, b in zip(jax.tree.leaves(source[name]), jax.tree.leaves(loaded[name]), strict=True):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded["speech_proj"]["out"]["dense"]["kernel"], 0)  # the rest untouched

  other = config_lib.apply_overrides(config, {"model.speech_input_std": 0.0, "model.speech_input_mean": 0.0,
                                              "model.speech_pooling": "mean"})
  with pytest.raises(tower_init.TowerMismatchError) as e:
    tower_init.load_tower_weights(_clap_params(other)[1], other)
  assert "model.speech_input_std: the checkpoint has 0.5, this config 0.0" in str(e.value)
  assert "model.speech_pooling: the checkpoint has 'attentive_stats', this config 'mean'" in str(e.value)
  wide = config_lib.apply_overrides(config, {"model.ser_head_layers": 1})
  with pytest.raises(tower_init.TowerMismatchError, match=r"unexpected in checkpoint: ser_head/fc_1"):
    tower_init.load_tower_weights(_clap_params(wide)[1], wide)


def test_freeze_groups_follow_the_stage():
  clap, ser = trainable.of(th.tiny_config("unused")), trainable.of(_ser_config())
  for name in models.SPEECH_PATH:
    assert clap.group(name) == "speech"
  assert ser.group("speech_pool") == "head"
  assert ser.group("ser_head") == "head"
  assert ser.group("speech_tower") == "speech"
  assert clap.group("speech_proj") == "head"
  names = ("speech_tower", "speech_pool", "ser_head", "speech_proj", "text_tower", "text_proj", "log_temperature")
  frozen = th.tiny_config("unused", **{"model.freeze_speech": True, "train.learn_temperature": False})
  assert trainable.of(frozen).mask(names) == dict(speech_tower=False, speech_pool=False, ser_head=False,
                                                  speech_proj=True, text_tower=True, text_proj=True,
                                                  log_temperature=False)
  ser = _ser_config(**{"model.freeze_speech": True})
  assert trainable.of(ser).mask(("speech_tower", "speech_pool", "ser_head")) == dict(
      speech_tower=False, speech_pool=True, ser_head=True)
  # The pooling (and SER head) on a frozen tower: the tower alone is frozen, and nothing can come from a cache.
  pooling = trainable.of(th.tiny_config("unused", **{
      "model.freeze_speech": True, "model.train_speech_pooling": True, "model.speech_pooling": "attentive_stats",
      "model.speech_representation": "ser_hidden"}))
  assert pooling.mask(names[:3]) == dict(speech_tower=False, speech_pool=True, ser_head=True)
  assert pooling.cached == () and "speech_pool and ser_head train" in pooling.uncached_because
  assert trainable.of(frozen).cached == ("speech_tower",)  # mean pooling, pooled: the tower is the whole path


# --------------------------------------------------------------------------- the paper's recipe


def _paper_config(speech_init, data_dir="unused", **overrides):
  return config_lib.apply_overrides(paper.get_config("tiny"), th.tiny_overrides(
      data_dir, **{"model.speech_init": speech_init, **overrides}))


def test_paper_config_requires_the_speech_model(odyssey):
  config = paper.get_config()
  validation.validate(config)  # a template with its required values left to the command line
  with pytest.raises(config_lib.ConfigError) as e:
    validation.validate(config, validation.Devices(8))
  assert "config.model.speech_init is required" in str(e.value) and "Odyssey" in str(e.value)
  assert "config.model.text_init is required" in str(e.value)
  assert config.model.freeze_speech and config.model.joint_dim == 512 and config.loss == "rnc"
  assert config.loss_options.joint and config.loss_options.same_modality_weight == 0.1  # the form evidence supports
  assert config.model.text_arch == "distilroberta" and config.data.name == "msp_podcast"
  tiny = paper.get_config("tiny")
  with pytest.raises(config_lib.ConfigError, match="config.model.speech_init is required"):
    resolve.resolve(tiny, "/unused", "train")
  with pytest.raises(ValueError, match="unknown variant"):
    paper.get_config("huge")


def test_odyssey_directory_completes_the_config_and_lands(odyssey, tmp_path):
  path = odyssey[0]
  ckpt = odyssey_import.import_odyssey(path)
  given = _paper_config(path, **{"model.speech_representation": "ser_output"})
  assert given.model.speech_input_std == 0.0
  config = resolve.resolve(given, str(tmp_path), "train")
  assert given.model.speech_input_std == 0.0  # the given config is not changed
  model, params = _clap_params(config)
  assert model.speech_arch == ckpt.speech_arch
  assert (config.model.speech_input_mean, config.model.speech_input_std) == (replica.MEAN, replica.STD)
  assert (config.model.ser_head_layers, config.model.ser_head_hidden, config.model.num_attributes) == (
      replica.HEAD_LAYERS, replica.HIDDEN, replica.CLASSES)
  loaded = tower_init.load_tower_weights(params, config)
  for name in models.SPEECH_PATH:
    for a, b in zip(jax.tree.leaves(ckpt.params[name]), jax.tree.leaves(loaded[name]), strict=True):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(tower_init.TowerMismatchError, match="speech_input_std: the Odyssey model has 0.4"):
    tower_init.load_tower_weights(params, config_lib.apply_overrides(config, {"model.speech_input_std": 1.0}))


@pytest.mark.slow
def test_paper_recipe_trains_with_a_frozen_speech_representation(odyssey, data_dir, tmp_path):
  path = odyssey[0]
  config = _paper_config(path, data_dir, **{"model.speech_representation": "ser_hidden", "train.num_steps": 3,
                                           "checkpoint.every_steps": 3})
  workdir = str(tmp_path / "paper")
  config = resolve.resolve(config, workdir, "train")
  train.train_and_evaluate(config, workdir)
  step, params = tower_init.read_workdir_params(workdir)
  assert step == 3
  before = odyssey_import.import_odyssey(path).params
  for name in models.SPEECH_PATH:
    for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(params[name]), strict=True):
      np.testing.assert_array_equal(a, b)
  vocab_size = tokenization.build_tokenizer(config.model, config.data.max_text_tokens).vocab_size
  model = runtime.build_model(config, vocab_size=vocab_size)
  initial, _ = state.create_train_state(model, config, runtime.make_mesh(config), optim.make_optimizer(config),
                                        jax.random.key(config.seed))  # the run's step-0 projection
  assert not np.array_equal(params["speech_proj"]["out"]["dense"]["kernel"],
                            jax.device_get(initial.params["speech_proj"]["out"]["dense"]["kernel"]))
  stored = tower_init.read_workdir_config(workdir)
  assert stored.model.speech_input_std == replica.STD and stored.model.speech_pooling == "attentive_stats"
