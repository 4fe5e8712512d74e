"""The CLAP model (speech tower + text tower + projections + learnable temperature) and the SER model.

Parameter tree (top level, the names below): ``speech_tower``, ``speech_proj``, ``text_tower``, ``text_proj``,
``log_temperature`` (SER: ``speech_tower``, ``ser_head``); with ``speech_pooling="attentive_stats"`` also
``speech_pool``, and a CLAP model fed by the SER head (``speech_representation``) also ``ser_head``. What trains
is decided by these names (``erclap.trainable``); a SER (stage 1) ``speech_tower`` / ``speech_pool`` / ``ser_head``
drop straight into the CLAP model.

The speech side has two entries: from audio (``__call__``, ``embed_audio``; ``speech_feature`` is the
representation the projection reads) and from that representation precomputed (``from_speech_features``,
``embed_speech_features``: a speech-feature cache, ``erclap.speech_source``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from erclap.models import layers
from erclap.models.arch import SpeechArch, TextArch, hf_arch, is_hf_model_dir, speech_preset, text_preset
from erclap.models.pooling import make_pooling, standardize_waveform
from erclap.models.ser_head import SERHead
from erclap.models.speech import SpeechEncoder, normalize_waveform
from erclap.models.text import TextEncoder

# Top-level parameter names (the models' ``setup`` attribute names; checkpoints are stored under them).
SPEECH_TOWER, SPEECH_POOL, SER_HEAD, SPEECH_PROJ = "speech_tower", "speech_pool", "ser_head", "speech_proj"
TEXT_TOWER, TEXT_PROJ, LOG_TEMPERATURE = "text_tower", "text_proj", "log_temperature"
# The speech path from audio to the representation the speech projection reads, in order (those the model has).
SPEECH_PATH: tuple[str, ...] = (SPEECH_TOWER, SPEECH_POOL, SER_HEAD)

# What the CLAP speech projection reads (``model.speech_representation``): the pooled tower output, or the SER
# head's last hidden block / scores.
SPEECH_REPRESENTATIONS = ("pooled", "ser_hidden", "ser_output")
TEXT_POOLINGS = ("cls", "mean")                    # ``model.text_pooling``
DTYPES = ("float32", "bfloat16", "float16")        # ``model.dtype``: the compute dtype (parameters stay float32)


def speech_feature_width(params) -> int:
  """Width of the speech representation the CLAP model's projection reads (a speech-feature cache row): the
  input width of ``speech_proj``'s first kernel. ``params``: arrays or ShapeDtypeStructs."""
  kernels = [leaf for leaf in jax.tree.leaves(params[SPEECH_PROJ]) if len(leaf.shape) == 2]
  return int(kernels[0].shape[0])


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
  raise ValueError(f"model.text_pooling={pooling!r}: use one of {TEXT_POOLINGS}")


def _speech_embedding(model, audio, audio_mask, train):
  """Waveform -> (input standardisation) -> tower -> pooling over valid frames, (B, P) float32."""
  audio_mask = audio_mask.astype(bool)
  if model.speech_input_std > 0:  # 0 = off; else the corpus statistics the speech model was trained with
    audio = standardize_waveform(audio, audio_mask, model.speech_input_mean, model.speech_input_std)
  if model.speech_arch.normalize_waveform:
    audio = normalize_waveform(audio.astype(jnp.float32), audio_mask)
  hidden, frame_mask = model.speech_tower(audio, audio_mask, train=train)
  return model.speech_pool(hidden, frame_mask)


def _ser_head(model, out_dim: int, hidden: int, num_layers: int) -> SERHead:
  return SERHead(out_dim=out_dim, hidden=hidden or model.speech_arch.hidden_size, num_layers=num_layers,
                 dropout=model.dropout, dtype=model.dtype)


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
  speech_input_mean: float = 0.0
  speech_input_std: float = 0.0         # > 0: standardise the waveform with these corpus statistics
  speech_representation: str = "pooled"  # one of SPEECH_REPRESENTATIONS
  num_attributes: int = 3               # SER head (speech_representation != "pooled")
  ser_head_layers: int = 1
  ser_head_hidden: int = 0              # 0: the speech tower's hidden size

  def setup(self):
    kw = dict(dtype=self.dtype, dropout=self.dropout, remat=self.remat)
    self.speech_tower = SpeechEncoder(self.speech_arch, **kw)
    self.speech_pool = make_pooling(self.speech_pooling, self.dtype)
    if self.speech_representation not in SPEECH_REPRESENTATIONS:
      raise ValueError(f"model.speech_representation={self.speech_representation!r}: use one of "
                       f"{SPEECH_REPRESENTATIONS}")
    if self.speech_representation != "pooled":
      self.ser_head = _ser_head(self, self.num_attributes, self.ser_head_hidden, self.ser_head_layers)
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
    """The speech tower's pooled output (B, H or 2H) float32 (= SERModel's "embedding")."""
    return _speech_embedding(self, audio, audio_mask, train)

  def speech_feature(self, audio, audio_mask, *, train: bool = False):
    """What the speech projection reads (``speech_representation``): pooled output, SER head hidden or scores."""
    pooled = self.pooled_audio(audio, audio_mask, train=train)
    if self.speech_representation == "pooled":
      return pooled
    hidden, scores = self.ser_head(pooled, train=train)
    return hidden if self.speech_representation == "ser_hidden" else scores

  def embed_audio(self, audio, audio_mask, *, train: bool = False):
    """audio float32 (B, T) at 16 kHz, audio_mask bool (B, T) -> L2-normalised (B, D) float32."""
    return l2_normalize(self.speech_proj(self.speech_feature(audio, audio_mask, train=train), train=train))

  def embed_text(self, input_ids, attention_mask, *, train: bool = False):
    """input_ids int32 (B, L), attention_mask int32 (B, L) -> L2-normalised (B, D) float32."""
    hidden = self.text_tower(input_ids, attention_mask, train=train)
    pooled = _pool_text(hidden, attention_mask, self.text_pooling)
    return l2_normalize(self.text_proj(pooled, train=train))

  def embed_speech_features(self, speech_features, *, train: bool = False):
    """A precomputed speech representation (B, F) float32 (what ``speech_feature`` returns: a speech-feature
    cache row) -> L2-normalised (B, D) float32: the projection only, no tower."""
    return l2_normalize(self.speech_proj(speech_features.astype(jnp.float32), train=train))

  def _outputs(self, speech, input_ids, attention_mask, train):
    return dict(speech=speech, text=self.embed_text(input_ids, attention_mask, train=train),
                temperature=jnp.exp(self.log_temperature))

  def __call__(self, audio, audio_mask, input_ids, attention_mask, *, train: bool = False):
    """Speech from ``audio`` / ``audio_mask`` -> dict(speech=(B, D), text=(B, D), temperature=())."""
    return self._outputs(self.embed_audio(audio, audio_mask, train=train), input_ids, attention_mask, train)

  def from_speech_features(self, speech_features, input_ids, attention_mask, *, train: bool = False):
    """``__call__`` from the precomputed speech representation (B, F) instead of audio (the projection only).

    Parameters are always initialised through ``__call__`` (from audio): the tree is the same for both."""
    return self._outputs(self.embed_speech_features(speech_features, train=train), input_ids, attention_mask, train)


class SERModel(nn.Module):
  """Stage 1 (or an imported Odyssey SER model): speech tower + pooling + the SER head's ``num_attributes`` scores."""
  speech_arch: SpeechArch
  num_attributes: int = 3
  ser_head_hidden: int = 0              # 0: the speech tower's hidden size (the Odyssey head's width)
  ser_head_layers: int = 1
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  speech_pooling: str = "mean"
  speech_input_mean: float = 0.0
  speech_input_std: float = 0.0         # > 0: standardise the waveform with these corpus statistics

  def setup(self):
    self.speech_tower = SpeechEncoder(self.speech_arch, dtype=self.dtype, dropout=self.dropout,
                                      remat=self.remat)
    self.speech_pool = make_pooling(self.speech_pooling, self.dtype)
    self.ser_head = _ser_head(self, self.num_attributes, self.ser_head_hidden, self.ser_head_layers)

  def __call__(self, audio, audio_mask, *, train: bool = False):
    """-> dict(attributes=(B, A) float32 scores, embedding=(B, H or 2H) float32 pooled tower output)."""
    pooled = _speech_embedding(self, audio, audio_mask, train)
    _, scores = self.ser_head(pooled, train=train)
    return dict(attributes=scores, embedding=pooled)

  def predict_attributes(self, audio, audio_mask, *, train: bool = False):
    """-> (B, A) float32 scores: ``__call__``'s ``attributes``."""
    return self(audio, audio_mask, train=train)["attributes"]


# --------------------------------------------------------------------------- builders from config.model


def _dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"model.dtype={name!r}: use one of {DTYPES}")
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


def _speech_head_fields(model_config) -> dict:
  """Input standardisation fields (``.get``: model sections written before these keys existed)."""
  return dict(speech_input_mean=float(model_config.get("speech_input_mean", 0.0)),
              speech_input_std=float(model_config.get("speech_input_std", 0.0)))


def build_clap_model(model_config, *, vocab_size: int | None, speech_arch: SpeechArch | None = None) -> CLAPModel:
  """The CLAP model that ``config.model`` describes (``vocab_size``: the tokenizer's; ``speech_arch``: overrides
  the one ``config.model`` implies, e.g. an imported Odyssey SER checkpoint's backbone)."""
  return CLAPModel(
      speech_arch=speech_arch or speech_arch_for(model_config), text_arch=text_arch_for(model_config, vocab_size),
      joint_dim=int(model_config.joint_dim),
      projection_hidden=tuple(int(h) for h in model_config.projection_hidden),
      dropout=float(model_config.dropout), dtype=_dtype(model_config.dtype), remat=bool(model_config.remat),
      speech_pooling=model_config.speech_pooling, text_pooling=model_config.text_pooling,
      speech_representation=model_config.get("speech_representation", "pooled"),
      num_attributes=int(model_config.num_attributes), ser_head_layers=int(model_config.get("ser_head_layers", 1)),
      ser_head_hidden=int(model_config.get("ser_head_hidden", 0)), **_speech_head_fields(model_config))


def build_ser_model(model_config, *, speech_arch: SpeechArch | None = None) -> SERModel:
  """Stage-1 SER model on the speech tower that ``config.model`` describes (``speech_arch``: as for CLAP)."""
  return SERModel(
      speech_arch=speech_arch or speech_arch_for(model_config), num_attributes=int(model_config.num_attributes),
      ser_head_hidden=int(model_config.get("ser_head_hidden", 0)),
      ser_head_layers=int(model_config.get("ser_head_layers", 1)),
      dropout=float(model_config.dropout), dtype=_dtype(model_config.dtype), remat=bool(model_config.remat),
      speech_pooling=model_config.speech_pooling, **_speech_head_fields(model_config))
