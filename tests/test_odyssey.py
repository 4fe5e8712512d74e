"""Odyssey SER checkpoint import and the attentive-statistics / SER-head path, against a PyTorch replica.

The replica follows the published baseline: a transformers WavLMModel on the globally standardised waveform, then
attentive statistics pooling and the MLP head, run on each utterance alone (no padding). ERCLAP runs a padded
batch. torch is the oracle only.
"""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as torch_save_file

from erclap import config_lib, models, odyssey_import, validation
from erclap.configs import default

HIDDEN, CLASSES, HEAD_LAYERS = 32, 3, 2
MEAN, STD = 0.03, 0.4
LENGTHS = [4000, 2500, 3130]
TOL = 1e-4  # relative to each output's largest magnitude


class TorchPoolAndHead(torch.nn.Module):
  """Attentive statistics pooling + Odyssey MLP head, written from the format description."""

  def __init__(self, hidden, layers, classes):
    super().__init__()
    self.pool_model = torch.nn.Module()
    self.pool_model.sap_linear = torch.nn.Linear(hidden, hidden)
    self.pool_model.attention = torch.nn.Parameter(torch.randn(hidden, 1))
    self.ser_model = torch.nn.Module()
    self.ser_model.fc = torch.nn.ModuleList([
        torch.nn.Sequential(torch.nn.Linear(2 * hidden if i == 0 else hidden, hidden), torch.nn.LayerNorm(hidden),
                            torch.nn.ReLU(), torch.nn.Dropout(0.5)) for i in range(layers)])
    self.ser_model.out = torch.nn.Sequential(torch.nn.Linear(hidden, classes))

  def pool(self, x):  # x: (T, H), one utterance
    h = torch.tanh(self.pool_model.sap_linear(x))
    w = torch.softmax((h @ self.pool_model.attention)[:, 0], dim=0)[:, None]
    mu = (w * x).sum(0)
    sigma = torch.sqrt(((w * x * x).sum(0) - mu * mu).clamp(min=1e-5))
    return torch.cat([mu, sigma])

  def head(self, pooled):
    for block in self.ser_model.fc:
      pooled = block(pooled)
    return self.ser_model.out(pooled)


def _perturb(module, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.2 * torch.randn(p.shape, generator=g))


def _write_odyssey(root, *, head_layers=HEAD_LAYERS, ssl_type=None):
  """A random WavLM backbone dir + an Odyssey dir (config.json, model.safetensors); returns (dir, wavlm, head)."""
  torch.manual_seed(0)
  config = transformers.WavLMConfig(
      hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, conv_dim=(16, 16, 16),
      conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), conv_bias=False, feat_extract_norm="layer",
      do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=16,
      max_bucket_distance=40, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
      feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
  wavlm = transformers.WavLMModel(config).eval()
  _perturb(wavlm, 1)
  backbone = root / "backbone"
  wavlm.save_pretrained(str(backbone), safe_serialization=True)
  head = TorchPoolAndHead(HIDDEN, head_layers, CLASSES).eval()
  _perturb(head, 2)
  tensors = {f"ssl_model.{k}": v for k, v in wavlm.state_dict().items()}
  tensors.update(head.state_dict())
  odyssey = root / "odyssey"
  odyssey.mkdir()
  torch_save_file({k: v.contiguous() for k, v in tensors.items()}, str(odyssey / "model.safetensors"))
  cfg = dict(ssl_type=ssl_type or str(backbone), hidden_size=HIDDEN, classifier_hidden_layers=head_layers,
             num_classes=CLASSES, classifier_dropout_prob=0.5, mean=MEAN, std=STD, sampling_rate=16000,
             id2label={"0": "arousal", "1": "dominance", "2": "valence"}, model_type="ser")
  (odyssey / "config.json").write_text(json.dumps(cfg))
  return str(odyssey), wavlm, head


@pytest.fixture(scope="module")
def odyssey(tmp_path_factory):
  return _write_odyssey(tmp_path_factory.mktemp("odyssey"))


def _padded_audio(seed=0):
  rng = np.random.default_rng(seed)
  audio = rng.normal(size=(len(LENGTHS), max(LENGTHS))).astype(np.float32) * 3.0  # garbage in the padding
  mask = np.arange(audio.shape[1])[None, :] < np.asarray(LENGTHS)[:, None]
  clean = [0.5 * rng.normal(size=n).astype(np.float32) + 0.1 for n in LENGTHS]
  for i, wav in enumerate(clean):
    audio[i, :len(wav)] = wav
  return audio, mask, clean


def _rel_err(got, want):
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def test_imported_model_matches_pytorch_replica_on_a_padded_batch(odyssey):
  path, wavlm, head = odyssey
  ckpt = odyssey_import.import_odyssey(path)
  assert ckpt.label_names == ("arousal", "dominance", "valence")
  assert ckpt.label_indices(("arousal", "valence", "dominance")) == (0, 2, 1)
  assert (ckpt.num_classes, ckpt.hidden_size, ckpt.head_layers, ckpt.sampling_rate) == (3, HIDDEN, 2, 16000)
  assert (ckpt.mean, ckpt.std, ckpt.head_dropout) == (MEAN, STD, 0.5)
  assert not ckpt.speech_arch.normalize_waveform and ckpt.speech_arch.do_stable_layer_norm

  audio, mask, clean = _padded_audio()
  want_pooled, want_scores = [], []
  with torch.no_grad():
    for wav in clean:
      x = torch.from_numpy((wav - MEAN) / (STD + 1e-6))[None]
      hidden = wavlm(x).last_hidden_state[0]
      pooled = head.pool(hidden)
      want_pooled.append(pooled.numpy())
      want_scores.append(head.head(pooled).numpy())
  want_pooled, want_scores = np.stack(want_pooled), np.stack(want_scores)

  model = ckpt.ser_model()
  out = jax.jit(lambda p, a, m: model.apply({"params": p}, a, m))(ckpt.params, audio, mask)
  assert out["embedding"].shape == (3, 2 * HIDDEN) and out["attributes"].shape == (3, CLASSES)
  assert np.abs(want_pooled[:, HIDDEN:]).min() > 1e-3  # the std half is not the floor everywhere
  assert _rel_err(out["embedding"], want_pooled) < TOL, _rel_err(out["embedding"], want_pooled)
  assert _rel_err(out["attributes"], want_scores) < TOL, _rel_err(out["attributes"], want_scores)

  # Built from config (the keys the checkpoint names), the same parameters give the same scores.
  config = config_lib.apply_overrides(default.get_config(), ckpt.config_overrides())
  validation.validate(config)
  built = models.build_ser_model(config.model, speech_arch=ckpt.speech_arch)
  fields = ("speech_arch", "num_attributes", "ser_head_hidden", "ser_head_layers", "speech_pooling",
            "speech_input_mean", "speech_input_std", "dtype")
  assert [getattr(built, f) for f in fields] == [getattr(model, f) for f in fields]


def test_clap_speech_path_reads_the_ser_head(odyssey):
  ckpt = odyssey_import.import_odyssey(odyssey[0])
  config = config_lib.apply_overrides(default.get_config(), ckpt.config_overrides())
  config.model.speech_representation = "ser_output"
  config.model.joint_dim, config.model.projection_hidden = 8, ()
  clap = models.build_clap_model(config.model, vocab_size=40, speech_arch=ckpt.speech_arch)
  audio, mask, _ = _padded_audio()
  ids, tmask = np.full((3, 5), 3, np.int32), np.ones((3, 5), np.int32)
  params = nn.meta.unbox(jax.jit(lambda: clap.init(jax.random.key(0), audio, mask, ids, tmask))()["params"])
  assert {"speech_tower", "speech_pool", "ser_head", "speech_proj"} <= set(params)
  assert params["speech_proj"]["out"]["dense"]["kernel"].shape == (CLASSES, 8)  # reads the 3 scores
  params = dict(params, **ckpt.params)
  feature = jax.jit(lambda p, a, m: clap.apply({"params": p}, a, m, method="speech_feature"))(params, audio, mask)
  scores = jax.jit(lambda p, a, m: ckpt.ser_model().apply({"params": p}, a, m))(ckpt.params, audio, mask)
  np.testing.assert_allclose(feature, scores["attributes"], rtol=0, atol=1e-6)


def test_builtin_backbones_and_bad_ssl_type(tmp_path):
  large = odyssey_import.backbone_arch("microsoft/wavlm-large")
  assert (large.hidden_size, large.num_layers, large.num_heads, large.feat_extract_norm) == (1024, 24, 16, "layer")
  assert large.do_stable_layer_norm and not large.normalize_waveform and large.total_stride == 320
  base = odyssey_import.backbone_arch("wavlm-base-plus")
  assert (base.hidden_size, base.num_layers, base.feat_extract_norm, base.do_stable_layer_norm) == (
      768, 12, "group", False)
  with pytest.raises(ValueError, match="ssl_type='nowhere'"):
    odyssey_import.backbone_arch("nowhere", str(tmp_path))


def test_mismatched_tensors_are_listed_in_one_error(odyssey, tmp_path):
  src = odyssey[0]
  bad = tmp_path / "bad"
  bad.mkdir()
  shutil.copy(os.path.join(src, "config.json"), bad / "config.json")
  tensors = load_file(os.path.join(src, "model.safetensors"))
  del tensors["pool_model.attention"]
  del tensors["ssl_model.encoder.layers.1.feed_forward.output_dense.bias"]
  tensors["ser_model.fc.0.1.weight"] = np.ones((7,), np.float32)
  tensors["ser_model.extra.weight"] = np.zeros((2, 2), np.float32)
  save_file(tensors, str(bad / "model.safetensors"))
  with pytest.raises(odyssey_import.OdysseyImportError) as e:
    odyssey_import.import_odyssey(str(bad))
  msg = str(e.value)
  assert "missing: pool_model.attention (for attention (32, 1))" in msg
  assert "missing: ssl_model.encoder.layers.1.feed_forward.output_dense.bias" in msg
  assert "wrong shape: ser_model.fc.0.1.weight (7,)" in msg
  assert "unexpected: ser_model.extra.weight (2, 2)" in msg

  config = json.loads((bad / "config.json").read_text())
  (bad / "config.json").write_text(json.dumps(dict(config, hidden_size=64)))
  with pytest.raises(ValueError, match="hidden_size=64"):
    odyssey_import.import_odyssey(str(bad))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    odyssey_import.import_odyssey(str(tmp_path / "nowhere"))


def _numpy_pooling(x, n, kernel, bias, attention):
  """Attentive statistics of x[:n] (T, H), naive float64."""
  x = x[:n].astype(np.float64)
  s = np.tanh(x @ kernel + bias) @ attention[:, 0]
  w = np.exp(s - s.max())
  w /= w.sum()
  mu = w @ x
  var = w @ (x * x) - mu * mu
  return np.concatenate([mu, np.sqrt(np.maximum(var, 1e-5))])


def test_attentive_pooling_sees_only_valid_frames():
  rng = np.random.default_rng(3)
  b, t, h = 4, 9, 6
  x = rng.normal(size=(b, t, h)).astype(np.float32) + 1.5
  lengths = np.array([9, 4, 1, 6])
  mask = np.arange(t)[None, :] < lengths[:, None]
  x_garbage = np.where(mask[..., None], x, 100.0).astype(np.float32)
  pool = models.AttentiveStatisticsPooling()
  params = nn.meta.unbox(pool.init(jax.random.key(1), x, mask)["params"])
  assert set(params) == {"sap_linear", "attention"} and params["attention"].shape == (h, 1)
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(np.float32), params)
  got = np.asarray(pool.apply({"params": params}, x_garbage, mask))
  assert got.shape == (b, 2 * h) and got.dtype == np.float32
  k, bias, att = (np.asarray(params["sap_linear"]["kernel"]), np.asarray(params["sap_linear"]["bias"]),
                  np.asarray(params["attention"]))
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(got[i], _numpy_pooling(x[i], n, k, bias, att), rtol=1e-5, atol=1e-5)
  # One frame: zero variance -> sqrt of the floor.
  np.testing.assert_allclose(got[2, h:], np.sqrt(1e-5), rtol=1e-5)
  empty = np.asarray(pool.apply({"params": params}, x, np.zeros((b, t), bool)))
  assert np.isfinite(empty).all() and np.all(empty[:, :h] == 0)


def test_config_keys_validate():
  config = default.get_config()
  config.model.speech_pooling = "attentive_stats"
  validation.validate(config)
  for key, value, match in [("model.speech_pooling", "max", "speech_pooling"),
                            ("model.speech_representation", "cls", "speech_representation"),
                            ("model.ser_head_layers", 0, "ser_head_layers"),
                            ("model.speech_input_std", -1.0, "speech_input_std"),
                            ("model.speech_input_mean", 0.5, "speech_input_mean")]:
    with pytest.raises(config_lib.ConfigError, match=match):
      validation.validate(config_lib.apply_overrides(config, {key: value}))


def test_mean_pooling_ser_model_keeps_its_tree():
  c = ml_collections.ConfigDict(default.get_config().model.to_dict())
  audio, mask, _ = _padded_audio()
  ser = models.build_ser_model(c)
  params = jax.eval_shape(lambda: nn.meta.unbox(ser.init(jax.random.key(0), audio, mask)["params"]))
  assert set(params) == {"speech_tower", "ser_head"}
  assert params["ser_head"]["fc_0"]["dense"]["kernel"].shape == (128, 128)  # tiny tower width
  c.speech_input_std = 2.0
  attentive = models.build_ser_model(c).clone(speech_pooling="attentive_stats")
  out = jax.jit(lambda: attentive.init_with_output(jax.random.key(0), audio, mask))()[0]
  assert out["embedding"].shape == (3, 256)
  assert jnp.isfinite(out["attributes"]).all()
