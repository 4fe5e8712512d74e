"""CLAP / SER models: output contract, masks (padded == alone), sharding, remat, dtype, dropout, errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from erclap import models, sharding

VOCAB = 50
SAMPLES = 8000  # 0.5 s: 12 frames for the tiny tower


def _config(**overrides):
  c = ml_collections.ConfigDict(dict(
      size="tiny", joint_dim=16, speech_arch="wavlm", text_arch="bert", speech_init="", text_init="",
      tokenizer="descriptions", freeze_speech=False, freeze_text=False, speech_pooling="mean",
      text_pooling="cls",
      projection_hidden=(32,), dropout=0.0, dtype="float32", remat=False, num_attributes=3))
  c.update(overrides)
  return c


def _batch(b=4, samples=SAMPLES, length=10, seed=0, audio_lengths=None, text_lengths=None):
  rng = np.random.default_rng(seed)
  audio_lengths = audio_lengths or [samples] * b
  text_lengths = text_lengths or [length] * b
  audio = np.zeros((b, samples), np.float32)
  amask = np.zeros((b, samples), bool)
  ids = np.zeros((b, length), np.int32)
  tmask = np.zeros((b, length), np.int32)
  for i in range(b):
    audio[i, :audio_lengths[i]] = rng.normal(size=audio_lengths[i])
    amask[i, :audio_lengths[i]] = True
    ids[i, :text_lengths[i]] = rng.integers(4, VOCAB, text_lengths[i])
    ids[i, 0] = 2
    tmask[i, :text_lengths[i]] = 1
  return audio, amask, ids, tmask


def _init(model, batch, seed=0):
  return nn.meta.unbox(jax.jit(lambda: model.init(jax.random.key(seed), *batch))()["params"])


@pytest.fixture(scope="module")
def tiny():
  model = models.build_clap_model(_config(), vocab_size=VOCAB)
  batch = _batch()
  return model, _init(model, batch), batch


@pytest.mark.slow
def test_output_contract(tiny):
  model, params, batch = tiny
  assert set(params) == {"speech_tower", "speech_proj", "text_tower", "text_proj", "log_temperature"}
  out = jax.jit(model.apply)({"params": params}, *batch)
  assert out["speech"].shape == (4, 16) and out["text"].shape == (4, 16)
  assert out["speech"].dtype == jnp.float32 and out["text"].dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out["speech"], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out["text"], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out["temperature"], 0.07, rtol=1e-6)
  assert out["temperature"].shape == ()
  speech = jax.jit(lambda p, a, m: model.apply({"params": p}, a, m, method="embed_audio"))(params, *batch[:2])
  text = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method="embed_text"))(params, *batch[2:])
  np.testing.assert_allclose(speech, out["speech"], atol=1e-6)
  np.testing.assert_allclose(text, out["text"], atol=1e-6)
  assert not np.allclose(out["speech"][0], out["speech"][1])  # inputs reach the output
  hot = model.clone(temperature_init=0.2)
  np.testing.assert_allclose(jnp.exp(_init(hot, batch)["log_temperature"]), 0.2, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("text_arch,pooling", [("bert", "cls"), ("roberta", "mean")])
def test_padded_batch_equals_each_item_alone(text_arch, pooling):
  model = models.build_clap_model(_config(text_arch=text_arch, text_pooling=pooling), vocab_size=VOCAB)
  audio_lengths, text_lengths = [SAMPLES, 5000, 3337], [10, 6, 3]
  batch = _batch(3, audio_lengths=audio_lengths, text_lengths=text_lengths)
  params = _init(model, batch)
  audio, amask, ids, tmask = batch
  # Garbage in the padding must not matter (the audio mask, not zeros, marks it).
  audio = np.where(amask, audio, 3.0).astype(np.float32)
  ids = np.where(tmask == 1, ids, 7).astype(np.int32)
  apply = jax.jit(model.apply)
  out = apply({"params": params}, audio, amask, ids, tmask)
  for i, (n, m) in enumerate(zip(audio_lengths, text_lengths, strict=True)):
    alone = apply({"params": params}, audio[i:i + 1, :n], amask[i:i + 1, :n], ids[i:i + 1, :m],
                        tmask[i:i + 1, :m])
    np.testing.assert_allclose(alone["speech"][0], out["speech"][i], atol=2e-5)
    np.testing.assert_allclose(alone["text"][0], out["text"][i], atol=2e-5)


def test_sharded_forward_equals_single_device(tiny, devices):
  model, params, batch = tiny
  mesh = sharding.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *batch)["params"])
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh,
                                          sharding.logical_axis_rules())
  assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(shardings))
  kernel = shardings["speech_tower"]["layers_0"]["intermediate"]["dense"]["kernel"]
  assert kernel.spec == PartitionSpec("fsdp", "tensor")
  assert shardings["text_tower"]["word_embeddings"]["embedding"].spec == PartitionSpec("tensor", "fsdp")
  sharded_params = jax.device_put(params, shardings)
  sharded_batch = [jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)) for x in batch]
  want = jax.jit(model.apply)({"params": params}, *batch)
  with sharding.use_mesh(mesh):  # activation constraints and batch_local active, as in training
    got = jax.jit(model.apply)({"params": sharded_params}, *sharded_batch)
  assert len(got["speech"].sharding.device_set) == 8
  for k in ("speech", "text", "temperature"):
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=2e-5)


@pytest.mark.slow
def test_remat_gives_same_values_and_gradients(tiny):
  model, params, batch = tiny
  remat = models.build_clap_model(_config(remat=True), vocab_size=VOCAB)

  def loss(m):
    def f(p):
      out = m.apply({"params": p}, *batch)
      return jnp.sum(out["speech"] @ out["text"].T) / out["temperature"]
    return jax.jit(jax.value_and_grad(f))(params)
  (v1, g1), (v2, g2) = loss(model), loss(remat)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  # Same maths, different fusion: allow float32 rounding relative to each gradient's scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + np.abs(b).max())), g1, g2)
  assert jax.tree.structure(g1) == jax.tree.structure(g2)


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny):
  model, params, batch = tiny
  bf16 = models.build_clap_model(_config(dtype="bfloat16"), vocab_size=VOCAB)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(_init(bf16, batch)))
  want = jax.jit(model.apply)({"params": params}, *batch)
  got = jax.jit(bf16.apply)({"params": params}, *batch)
  for k in ("speech", "text"):
    assert got[k].dtype == jnp.float32
    cosine = np.sum(np.asarray(got[k]) * np.asarray(want[k]), axis=-1)
    assert cosine.min() > 0.98, cosine


@pytest.mark.slow
def test_dropout_only_in_training():
  model = models.build_clap_model(_config(dropout=0.3), vocab_size=VOCAB)
  batch = _batch()
  params = _init(model, batch)
  apply = jax.jit(model.apply, static_argnames="train")
  a = apply({"params": params}, *batch, train=True, rngs={"dropout": jax.random.key(1)})
  b = apply({"params": params}, *batch, train=True, rngs={"dropout": jax.random.key(2)})
  e1 = apply({"params": params}, *batch, train=False)
  e2 = apply({"params": params}, *batch, train=False)
  assert not np.allclose(a["speech"], b["speech"]) and not np.allclose(a["text"], b["text"])
  np.testing.assert_array_equal(e1["speech"], e2["speech"])


def test_ser_model_speech_tower_drops_into_clap(tiny):
  clap, clap_params, batch = tiny
  ser = models.build_ser_model(_config())
  ser_params = _init(ser, batch[:2], seed=5)
  assert set(ser_params) == {"speech_tower", "ser_head"}
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  assert shapes(ser_params["speech_tower"]) == shapes(clap_params["speech_tower"])
  out = jax.jit(ser.apply)({"params": ser_params}, *batch[:2])
  assert out["attributes"].shape == (4, 3) and out["attributes"].dtype == jnp.float32
  assert out["embedding"].shape == (4, 128)
  merged = dict(clap_params, speech_tower=ser_params["speech_tower"])
  pooled = jax.jit(lambda p, a, m: clap.apply({"params": p}, a, m, method="pooled_audio"))(merged, *batch[:2])
  np.testing.assert_allclose(pooled, out["embedding"], atol=1e-5)


def test_wavlm_buckets_match_a_direct_reading_of_the_formula():
  """Buckets: exact below max_exact, log-spaced up to max_distance, clamped, direction in the upper half."""
  b = models.layers.relative_position_buckets(300, 32, 100)
  half, max_exact = 16, 8
  for q, k in [(0, 0), (5, 0), (0, 5), (0, 7), (0, 8), (0, 20), (0, 99), (0, 299), (299, 0), (40, 10)]:
    d = k - q
    n = abs(d)
    if n < max_exact:
      want = n
    else:
      scaled = np.log(n / max_exact) / np.log(100 / max_exact) * (half - max_exact)
      want = min(int(max_exact + scaled), half - 1)
    want += half if d > 0 else 0
    assert b[q, k] == want, (q, k, b[q, k], want)


def test_bad_configs_and_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="vocab_size"):
    models.build_clap_model(_config(), vocab_size=None)
  with pytest.raises(ValueError, match="model.size"):
    models.build_clap_model(_config(size="huge"), vocab_size=VOCAB)
  with pytest.raises(ValueError, match="model.text_arch"):
    models.build_clap_model(_config(text_arch="gpt"), vocab_size=VOCAB)
  with pytest.raises(ValueError, match="model.dtype"):
    models.build_clap_model(_config(dtype="int8"), vocab_size=VOCAB)
  model = models.build_clap_model(_config(), vocab_size=VOCAB)
  audio, amask, ids, tmask = _batch(2)
  with pytest.raises(ValueError, match="receptive field"):
    jax.eval_shape(model.init, jax.random.key(0), audio[:, :100], amask[:, :100], ids, tmask)
  with pytest.raises(ValueError, match="positions"):
    jax.eval_shape(model.init, jax.random.key(0), audio, amask, np.zeros((2, 500), np.int32),
                   np.ones((2, 500), np.int32))
  with pytest.raises(ValueError, match="text_pooling"):
    bad = models.build_clap_model(_config(text_pooling="max"), vocab_size=VOCAB)
    jax.eval_shape(bad.init, jax.random.key(0), audio, amask, ids, tmask)


def test_presets_have_the_documented_sizes():
  base = models.speech_preset("base", "wavlm")
  assert (base.hidden_size, base.num_layers, base.feat_extract_norm, base.do_stable_layer_norm) == (
      768, 12, "group", False)
  large = models.speech_preset("large", "wavlm")
  assert (large.hidden_size, large.num_layers, large.do_stable_layer_norm) == (1024, 24, True)
  distil = models.text_preset("base", "distilroberta", 50265)
  assert (distil.model_type, distil.hidden_size, distil.num_layers) == ("roberta", 768, 6)
  tiny = models.speech_preset("tiny", "wavlm")
  assert tiny.total_stride == 640 and dataclasses.is_dataclass(tiny)
  assert models.padded_vocab_size(50265) % 128 == 0
