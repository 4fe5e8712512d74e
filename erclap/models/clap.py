"""The CLAP model (speech tower + text tower + projections + learnable temperature) and the SER model.

Parameter tree (top level): ``speech_tower``, ``speech_proj``, ``text_tower``, ``text_proj``,
``log_temperature`` (SER: ``speech_tower``, ``ser_head``). The trainer freezes towers and sets learning
rates by these names; a SER (stage 1) ``speech_tower`` drops straight into the CLAP model.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from erclap.models import layers
from erclap.models.arch import SpeechArch, TextArch, hf_arch, is_hf_model_dir, speech_preset, text_preset
from erclap.models.speech import SpeechEncoder, normalize_waveform
from erclap.models.text import TextEncoder


class ProjectionHead(nn.Module):
  """MLP to ``out_dim``: Dense -> GELU -> Dropout per hidden width, then a Dense ((): linear)."""
  hidden: tuple[int, ...]
  out_dim: int
  out_name: str = "joint"
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    in_name = "embed"
    for i, width in enumerate(self.hidden):
      x = layers.Dense(width, (in_name, "mlp"), dtype=self.dtype, name=f"hidden_{i}")(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(jax.nn.gelu(x, approximate=False))
      in_name = "mlp"
    return layers.Dense(self.out_dim, (in_name, self.out_name), dtype=jnp.float32, name="out")(x)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


def _pool_text(hidden, attention_mask, pooling: str):
  if pooling == "cls":
    return hidden[:, 0].astype(jnp.float32)
  if pooling == "mean":
    return layers.masked_mean(hidden, attention_mask.astype(bool))
  raise ValueError(f"model.text_pooling={pooling!r}: use 'cls' or 'mean'")


def _speech_embedding(tower, arch, audio, audio_mask, pooling, train):
  audio_mask = audio_mask.astype(bool)
  if arch.normalize_waveform:
    audio = normalize_waveform(audio.astype(jnp.float32), audio_mask)
  hidden, frame_mask = tower(audio, audio_mask, train=train)
  if pooling != "mean":
    raise ValueError(f"model.speech_pooling={pooling!r}: only 'mean' (over valid frames) is supported")
  return layers.masked_mean(hidden, frame_mask)


class CLAPModel(nn.Module):
  speech_arch: SpeechArch
  text_arch: TextArch
  joint_dim: int = 512
  projection_hidden: tuple[int, ...] = (512,)
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  speech_pooling: str = "mean"
  text_pooling: str = "cls"
  temperature_init: float = 0.07

  def setup(self):
    kw = dict(dtype=self.dtype, dropout=self.dropout, remat=self.remat)
    self.speech_tower = SpeechEncoder(self.speech_arch, **kw)
    self.text_tower = TextEncoder(self.text_arch, **kw)
    head = dict(hidden=tuple(self.projection_hidden), out_dim=self.joint_dim, dtype=self.dtype,
                dropout=self.dropout)
    self.speech_proj = ProjectionHead(**head)
    self.text_proj = ProjectionHead(**head)
    if not self.temperature_init > 0:
      raise ValueError(f"temperature_init must be > 0, got {self.temperature_init}")
    self.log_temperature = self.param(
        "log_temperature", nn.with_logical_partitioning(
            lambda key: jnp.asarray(jnp.log(self.temperature_init), jnp.float32), ()))

  def pooled_audio(self, audio, audio_mask, *, train: bool = False):
    """The speech tower's pooled output before projection (B, H) float32 (= SERModel's "embedding")."""
    return _speech_embedding(self.speech_tower, self.speech_arch, audio, audio_mask, self.speech_pooling,
                             train)

  def embed_audio(self, audio, audio_mask, *, train: bool = False):
    """audio float32 (B, T) at 16 kHz, audio_mask bool (B, T) -> L2-normalised (B, D) float32."""
    return l2_normalize(self.speech_proj(self.pooled_audio(audio, audio_mask, train=train), train=train))

  def embed_text(self, input_ids, attention_mask, *, train: bool = False):
    """input_ids int32 (B, L), attention_mask int32 (B, L) -> L2-normalised (B, D) float32."""
    hidden = self.text_tower(input_ids, attention_mask, train=train)
    pooled = _pool_text(hidden, attention_mask, self.text_pooling)
    return l2_normalize(self.text_proj(pooled, train=train))

  def __call__(self, audio, audio_mask, input_ids, attention_mask, *, train: bool = False):
    return dict(speech=self.embed_audio(audio, audio_mask, train=train),
                text=self.embed_text(input_ids, attention_mask, train=train),
                temperature=jnp.exp(self.log_temperature))


class SERModel(nn.Module):
  """Stage 1: the speech tower + mean-pooled embedding + a head scoring ``num_attributes`` attributes."""
  speech_arch: SpeechArch
  num_attributes: int = 3
  head_hidden: tuple[int, ...] = (512,)
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  speech_pooling: str = "mean"

  def setup(self):
    self.speech_tower = SpeechEncoder(self.speech_arch, dtype=self.dtype, dropout=self.dropout,
                                      remat=self.remat)
    self.ser_head = ProjectionHead(hidden=tuple(self.head_hidden), out_dim=self.num_attributes, out_name=None,
                                   dtype=self.dtype, dropout=self.dropout)

  def __call__(self, audio, audio_mask, *, train: bool = False):
    """-> dict(attributes=(B, A) float32, embedding=(B, H) float32 pooled tower output)."""
    pooled = _speech_embedding(self.speech_tower, self.speech_arch, audio, audio_mask, self.speech_pooling,
                               train)
    return dict(attributes=self.ser_head(pooled, train=train).astype(jnp.float32), embedding=pooled)


# --------------------------------------------------------------------------- builders from config.model


def _dtype(name: str):
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"model.dtype={name!r}: use 'float32', 'bfloat16' or 'float16'")
  return jnp.dtype(name)


def speech_arch_for(model_config) -> SpeechArch:
  """The speech architecture: from ``speech_init``'s config.json if it is a HF directory, else the preset."""
  init = model_config.get("speech_init", "")
  if is_hf_model_dir(init):
    arch = hf_arch(init)
    if not isinstance(arch, SpeechArch):
      raise ValueError(f"model.speech_init={init!r} holds a {arch.model_type} (text) model, "
                       f"not a speech model")
    return arch
  return speech_preset(model_config.size, model_config.speech_arch)


def text_arch_for(model_config, vocab_size: int | None) -> TextArch:
  """The text architecture: from ``text_init``'s config.json if it is a HF directory, else the preset."""
  init = model_config.get("text_init", "")
  if is_hf_model_dir(init):
    arch = hf_arch(init)
    if not isinstance(arch, TextArch):
      raise ValueError(f"model.text_init={init!r} holds a {arch.model_type} (speech) model, not a text model")
    if vocab_size is not None and vocab_size > arch.vocab_size:
      raise ValueError(f"the tokenizer has {vocab_size} tokens but model.text_init={init!r} embeds only "
                       f"{arch.vocab_size}: use that checkpoint's tokenizer (model.tokenizer)")
    return arch
  if vocab_size is None:
    raise ValueError("build_clap_model needs vocab_size (the tokenizer's) when model.text_init is not a "
                     "HF directory")
  return text_preset(model_config.size, model_config.text_arch, vocab_size)


def build_clap_model(model_config, *, vocab_size: int | None) -> CLAPModel:
  """The CLAP model that ``config.model`` describes (``vocab_size``: the tokenizer's)."""
  return CLAPModel(
      speech_arch=speech_arch_for(model_config), text_arch=text_arch_for(model_config, vocab_size),
      joint_dim=int(model_config.joint_dim),
      projection_hidden=tuple(int(h) for h in model_config.projection_hidden),
      dropout=float(model_config.dropout), dtype=_dtype(model_config.dtype), remat=bool(model_config.remat),
      speech_pooling=model_config.speech_pooling, text_pooling=model_config.text_pooling)


def build_ser_model(model_config) -> SERModel:
  """Stage-1 SER model on the speech tower that ``config.model`` describes."""
  return SERModel(
      speech_arch=speech_arch_for(model_config), num_attributes=int(model_config.num_attributes),
      head_hidden=tuple(int(h) for h in model_config.projection_hidden), dropout=float(model_config.dropout),
      dtype=_dtype(model_config.dtype), remat=bool(model_config.remat),
      speech_pooling=model_config.speech_pooling)
