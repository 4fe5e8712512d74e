"""Architecture descriptions of the two towers: size presets and Hugging Face ``config.json`` parsing.

An architecture is a frozen (hashable) dataclass, so it can be a Flax module attribute. The size presets
(``tiny`` / ``base`` / ``large``) give random-init towers; a Hugging Face model directory overrides the
preset with the values of its ``config.json`` (hidden size, layers, heads, conv layout, norm placement,
vocabulary).
"""

from __future__ import annotations

import dataclasses
import json
import os

SPEECH_TYPES = ("wav2vec2", "hubert", "wavlm")
TEXT_TYPES = ("bert", "roberta")
TEXT_ARCHS = ("bert", "roberta", "distilroberta")
SIZES = ("tiny", "base", "large")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "swish", "silu")


@dataclasses.dataclass(frozen=True)
class SpeechArch:
  """A wav2vec2 / HuBERT / WavLM encoder (the fields of their HF configs that change the computation)."""
  model_type: str = "wavlm"
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  feat_extract_norm: str = "group"      # "group": GroupNorm on the first conv only; "layer": LN on every conv
  feat_proj_layer_norm: bool = True     # HuBERT may switch it off
  do_stable_layer_norm: bool = False    # True: pre-LN transformer (large models); False: post-LN (base)
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  layer_norm_eps: float = 1e-5
  hidden_act: str = "gelu"
  feat_extract_activation: str = "gelu"
  num_buckets: int = 320                # WavLM relative position buckets
  max_bucket_distance: int = 800
  normalize_waveform: bool = False      # zero-mean / unit-variance per utterance before the conv stack

  @property
  def total_stride(self) -> int:
    out = 1
    for s in self.conv_stride:
      out *= s
    return out

  def num_frames(self, num_samples: int) -> int:
    """Frames the conv stack emits for ``num_samples`` input samples (0 if too short)."""
    n = num_samples
    for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
      n = (n - k) // s + 1 if n >= k else 0
    return max(n, 0)


@dataclasses.dataclass(frozen=True)
class TextArch:
  """A BERT / RoBERTa encoder (DistilRoBERTa and MiniLM are instances with fewer layers / smaller widths)."""
  model_type: str = "roberta"
  vocab_size: int = 50265
  hidden_size: int = 768
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 514
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1
  hidden_act: str = "gelu"


_SPEECH_PRESETS = {
    # Small and fast on a 2-core CPU: 640x total stride (25 frames/s), 2 layers of width 128.
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                 conv_dim=(32, 64, 128), conv_kernel=(40, 8, 4), conv_stride=(20, 8, 4),
                 conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16, num_buckets=64,
                 max_bucket_distance=128, normalize_waveform=True),
    # WavLM-base-plus class.
    "base": dict(),
    # WavLM-large class.
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, conv_bias=True,
                  feat_extract_norm="layer", do_stable_layer_norm=True, normalize_waveform=True),
}

_TEXT_PRESETS = {
    ("bert", "tiny"): dict(model_type="bert", hidden_size=128, num_layers=2, num_heads=4,
                           intermediate_size=256, max_position_embeddings=128, type_vocab_size=2,
                           layer_norm_eps=1e-12, pad_token_id=0),
    ("bert", "base"): dict(model_type="bert", vocab_size=30522, num_layers=12, max_position_embeddings=512,
                           type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0),
    ("bert", "large"): dict(model_type="bert", vocab_size=30522, hidden_size=1024, num_layers=24,
                            num_heads=16, intermediate_size=4096, max_position_embeddings=512,
                            type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0),
    ("roberta", "tiny"): dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                              max_position_embeddings=130),
    ("roberta", "base"): dict(num_layers=12),
    ("roberta", "large"): dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    ("distilroberta", "tiny"): dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256,
                                    max_position_embeddings=130),
    ("distilroberta", "base"): dict(num_layers=6),
    ("distilroberta", "large"): dict(hidden_size=1024, num_layers=12, num_heads=16, intermediate_size=4096),
}


def speech_preset(size: str, speech_arch: str) -> SpeechArch:
  if size not in SIZES:
    raise ValueError(f"model.size={size!r}: use one of {SIZES}")
  if speech_arch not in SPEECH_TYPES:
    raise ValueError(f"model.speech_arch={speech_arch!r}: use one of {SPEECH_TYPES}")
  return SpeechArch(model_type=speech_arch, **_SPEECH_PRESETS[size])


def text_preset(size: str, text_arch: str, vocab_size: int | None = None) -> TextArch:
  if size not in SIZES:
    raise ValueError(f"model.size={size!r}: use one of {SIZES}")
  if text_arch not in TEXT_ARCHS:
    raise ValueError(f"model.text_arch={text_arch!r}: use one of {TEXT_ARCHS}")
  arch = TextArch(**_TEXT_PRESETS[(text_arch, size)])
  if vocab_size is not None:
    arch = dataclasses.replace(arch, vocab_size=int(vocab_size))
  return arch


def is_hf_model_dir(path: str) -> bool:
  return bool(path) and os.path.isfile(os.path.join(path, "config.json"))


def read_hf_config(path: str) -> dict:
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path!r} is not a Hugging Face model directory: {file} does not exist")
  with open(file) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{file}: not valid JSON ({e})") from e


def _check_activation(file: str, key: str, value) -> str:
  if value not in ACTIVATIONS:
    raise ValueError(f"{file}: {key}={value!r} is not supported (use one of {ACTIVATIONS})")
  return value


def arch_from_hf_config(cfg: dict, path: str = "config.json") -> SpeechArch | TextArch:
  """A SpeechArch or TextArch from a parsed HF ``config.json`` (``path`` only names it in errors)."""
  model_type = cfg.get("model_type")
  if model_type in SPEECH_TYPES:
    if cfg.get("add_adapter"):
      raise ValueError(f"{path}: add_adapter=True is not supported")
    if cfg.get("conv_pos_batch_norm"):
      raise ValueError(f"{path}: conv_pos_batch_norm=True is not supported")
    norm = cfg.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
      raise ValueError(f"{path}: feat_extract_norm={norm!r}: expected 'group' or 'layer'")
    conv_dim, kernel, stride = (tuple(int(v) for v in cfg[k])
                                for k in ("conv_dim", "conv_kernel", "conv_stride"))
    if not len(conv_dim) == len(kernel) == len(stride):
      raise ValueError(f"{path}: conv_dim, conv_kernel and conv_stride have different lengths")
    return SpeechArch(
        model_type=model_type, hidden_size=int(cfg["hidden_size"]), num_layers=int(cfg["num_hidden_layers"]),
        num_heads=int(cfg["num_attention_heads"]), intermediate_size=int(cfg["intermediate_size"]),
        conv_dim=conv_dim, conv_kernel=kernel, conv_stride=stride,
        conv_bias=bool(cfg.get("conv_bias", False)),
        feat_extract_norm=norm,
        feat_proj_layer_norm=bool(cfg.get("feat_proj_layer_norm", True)) if model_type == "hubert" else True,
        do_stable_layer_norm=bool(cfg.get("do_stable_layer_norm", False)),
        num_conv_pos_embeddings=int(cfg.get("num_conv_pos_embeddings", 128)),
        num_conv_pos_embedding_groups=int(cfg.get("num_conv_pos_embedding_groups", 16)),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
        hidden_act=_check_activation(path, "hidden_act", cfg.get("hidden_act", "gelu")),
        feat_extract_activation=_check_activation(path, "feat_extract_activation",
                                                  cfg.get("feat_extract_activation", "gelu")),
        num_buckets=int(cfg.get("num_buckets", 320)),
        max_bucket_distance=int(cfg.get("max_bucket_distance", 800)),
        # The HF processor, not the model, normalises; large (stable-LN) checkpoints expect it.
        normalize_waveform=bool(cfg.get("do_stable_layer_norm", False)))
  if model_type in TEXT_TYPES:
    pos_type = cfg.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
      raise ValueError(f"{path}: position_embedding_type={pos_type!r}: only 'absolute' is supported")
    return TextArch(
        model_type=model_type, vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
        intermediate_size=int(cfg["intermediate_size"]),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
        type_vocab_size=int(cfg.get("type_vocab_size", 2)),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(cfg.get("pad_token_id", 0 if model_type == "bert" else 1) or 0),
        hidden_act=_check_activation(path, "hidden_act", cfg.get("hidden_act", "gelu")))
  raise ValueError(f"{path}: model_type={model_type!r} is not supported; use one of "
                   f"{SPEECH_TYPES + TEXT_TYPES} (DistilRoBERTa and MiniLM checkpoints are roberta / bert)")


def hf_arch(path: str) -> SpeechArch | TextArch:
  """The architecture of a HF model directory (its ``config.json``; ``preprocessor_config.json`` if any)."""
  arch = arch_from_hf_config(read_hf_config(path), os.path.join(path, "config.json"))
  pre = os.path.join(path, "preprocessor_config.json")
  if isinstance(arch, SpeechArch) and os.path.isfile(pre):
    with open(pre) as f:
      do_normalize = json.load(f).get("do_normalize")
    if do_normalize is not None:
      arch = dataclasses.replace(arch, normalize_waveform=bool(do_normalize))
  return arch
