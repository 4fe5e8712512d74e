"""The wav2vec2 / HuBERT / WavLM speech encoder on raw 16 kHz waveforms.

conv feature extractor -> (LayerNorm) + feature projection -> convolutional positional embedding ->
transformer encoder (post-LN, or pre-LN for "stable layer norm" checkpoints; WavLM adds a gated relative
position bias). Frames whose receptive field reaches past an utterance's last valid sample are masked,
exactly like Hugging Face's ``_get_feature_vector_attention_mask``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from erclap import sharding, xla_workarounds
from erclap.models import layers
from erclap.models.arch import SpeechArch


def frame_lengths(arch: SpeechArch, num_samples: jax.Array) -> jax.Array:
  """Valid frames per utterance from valid samples (B,) int -> (B,) int32 (HF's conv length formula)."""
  n = num_samples.astype(jnp.int32)
  for k, s in zip(arch.conv_kernel, arch.conv_stride, strict=True):
    n = jnp.maximum(jnp.floor_divide(n - k, s) + 1, 0)
  return n


def normalize_waveform(audio: jax.Array, mask: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Zero mean, unit variance over each utterance's valid samples (HF's do_normalize); padding stays 0."""
  m = mask.astype(jnp.float32)
  count = jnp.maximum(m.sum(-1, keepdims=True), 1.0)
  mean = (audio * m).sum(-1, keepdims=True) / count
  var = (jnp.square(audio - mean) * m).sum(-1, keepdims=True) / count
  return (audio - mean) * jax.lax.rsqrt(var + eps) * m


def strided_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """VALID 1-D convolution, x (B, T, Cin) * kernel (K, Cin, Cout) with stride -> (B, F, Cout).

  XLA's convolution: an im2col formulation (strided slices or block reshapes + one matmul) measured
  1.4-2x slower on CPU for both the tiny and the WavLM-base conv stacks.
  """
  return jax.lax.conv_general_dilated(x, kernel, (stride,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))


class GroupNormPerChannel(nn.Module):
  """GroupNorm with one group per channel: statistics over time, per utterance and channel (f32)."""
  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, T, C)
    c = x.shape[-1]
    scale = self.param("scale", layers.ones_init(("norm",)), (c,), jnp.float32)
    bias = self.param("bias", layers.zeros_init(("norm",)), (c,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = x.mean(1, keepdims=True)
    var = jnp.square(x - mean).mean(1, keepdims=True)
    return ((x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(self.dtype)


class FeatureExtractor(nn.Module):
  """Strided 1-D conv stack: (B, T) samples -> (B, F, C) frames."""
  arch: SpeechArch
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, audio):
    a = self.arch
    x = audio[..., None].astype(self.dtype)
    c_in = 1
    for i, (c, k, s) in enumerate(zip(a.conv_dim, a.conv_kernel, a.conv_stride, strict=True)):
      # PyTorch's (and so HF's) conv initialisation: He-normal kernels, biases uniform in ±1/sqrt(fan_in).
      # With 0.02-normal kernels and zero biases, a fully padded frame (input 0 -> output = bias ~ 0) has
      # almost no variance for the layer norm that follows, which then amplifies its gradient ~300x: random-init
      # training diverged (gradient norms in the hundreds, loss at chance on the demo).
      fan_in = k * c_in
      kernel = self.param(f"conv_{i}_kernel", nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2),
          (None, "conv_in", "conv_out")), (k, c_in, c), jnp.float32)
      x = strided_conv(x, kernel.astype(self.dtype), s)
      if a.conv_bias:
        bound = 1.0 / math.sqrt(fan_in)
        bias = self.param(f"conv_{i}_bias", nn.with_logical_partitioning(
            lambda key, shape, dtype, bound=bound: jax.random.uniform(key, shape, dtype, -bound, bound),
            ("conv_out",)), (c,), jnp.float32)
        x = x + bias.astype(self.dtype)
      if a.feat_extract_norm == "layer":
        x = layers.LayerNorm(1e-5, self.dtype, name=f"conv_{i}_norm")(x)
      elif i == 0:
        x = GroupNormPerChannel(1e-5, self.dtype, name="conv_0_norm")(x)
      x = layers.activation(a.feat_extract_activation)(x)
      c_in = c
    return x


class PositionalConv(nn.Module):
  """Grouped, weight-normalised 'same' convolution over frames (wav2vec2's relative positional embedding)."""
  arch: SpeechArch
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # (B, F, E)
    a = self.arch
    k, g, e = a.num_conv_pos_embeddings, a.num_conv_pos_embedding_groups, a.hidden_size
    if e % g:
      raise ValueError(f"hidden_size {e} is not divisible by num_conv_pos_embedding_groups {g}")
    v = self.param("weight_v", layers.dense_init((None, None, "embed")), (k, e // g, e), jnp.float32)
    # PyTorch weight_norm(dim=2): one gain per kernel tap, norm over (out, in/groups).
    gain = self.param("weight_g", nn.with_logical_partitioning(
        lambda key, shape, dtype: jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2))).astype(dtype), (None,)), (k,),
        jnp.float32)
    w = v * (gain / jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2))))[:, None, None]
    bias = self.param("bias", layers.zeros_init(("embed",)), (e,), jnp.float32)
    # Padding k//2 on both sides; an even kernel drops the last output frame (HF's SamePadLayer).
    pad = (k // 2, k // 2 - 1 if k % 2 == 0 else k // 2)
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1,), [pad], dimension_numbers=("NWC", "WIO", "NWC"),
                                                     feature_group_count=g)
    # Under a mesh, a grouped convolution's weight gradient needs batch_local (erclap.xla_workarounds).
    # Initialisation takes no gradient (the forward partitions correctly), and its dummy batch need not
    # split over the mesh, so it runs the convolution as is.
    run = conv if self.is_initializing() else xla_workarounds.batch_local(conv)
    y = run(x, w.astype(self.dtype))
    return layers.activation(a.feat_extract_activation)(y + bias.astype(self.dtype))


class SpeechEncoder(nn.Module):
  """(B, T) waveform + bool (B, T) valid samples -> hidden (B, F, E) and bool (B, F) valid frames."""
  arch: SpeechArch
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0
  remat: bool = False

  @nn.compact
  def __call__(self, audio, audio_mask, *, train: bool = False):
    a = self.arch
    if audio.ndim != 2 or audio_mask.shape != audio.shape:
      raise ValueError(f"audio must be (B, T) with audio_mask of the same shape; got {audio.shape} and "
                       f"{audio_mask.shape}")
    if a.num_frames(audio.shape[1]) < 1:
      raise ValueError(f"audio of {audio.shape[1]} samples is shorter than the conv stack's receptive field")
    audio_mask = audio_mask.astype(bool)
    audio = jnp.where(audio_mask, audio.astype(jnp.float32), 0.0)
    x = FeatureExtractor(a, self.dtype, name="feature_extractor")(audio)
    lengths = frame_lengths(a, audio_mask.sum(-1))
    frame_mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]

    x = sharding.constrain(x, layers.HIDDEN_AXES)
    if a.feat_proj_layer_norm:
      x = layers.LayerNorm(a.layer_norm_eps, self.dtype, name="feature_projection_norm")(x)
    x = layers.Dense(a.hidden_size, ("conv_out", "embed"), dtype=self.dtype, name="feature_projection")(x)
    x = sharding.constrain(x, layers.HIDDEN_AXES)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    x = drop(x)

    # Padded frames are zeroed so the positional conv sees zeros there, as for an utterance alone.
    x = jnp.where(frame_mask[..., None], x, jnp.zeros((), x.dtype))
    x = x + PositionalConv(a, self.dtype, name="pos_conv_embed")(x)
    if not a.do_stable_layer_norm:
      x = layers.LayerNorm(a.layer_norm_eps, self.dtype, name="encoder_norm")(x)
    x = drop(x)
    layer_cls = layers.layer_class(self.remat)
    position_bias = None
    for i in range(a.num_layers):
      x, position_bias = layer_cls(
          a.hidden_size, a.num_heads, a.intermediate_size, a.layer_norm_eps, act=a.hidden_act,
          pre_ln=a.do_stable_layer_norm, dtype=self.dtype, dropout=self.dropout, deterministic=not train,
          wavlm=a.model_type == "wavlm", has_relative_position_bias=(i == 0), num_buckets=a.num_buckets,
          max_distance=a.max_bucket_distance, name=f"layers_{i}")(x, frame_mask, position_bias)
    if a.do_stable_layer_norm:
      x = layers.LayerNorm(a.layer_norm_eps, self.dtype, name="encoder_norm")(x)
    return x, frame_mask
