"""Building blocks shared by the speech and text towers.

Parameters are float32 and carry logical axis names; activations are pinned with logical names too
(``sharding.constrain``); ``erclap.sharding.LOGICAL_AXIS_RULES`` maps both onto the mesh. Activations run in
``dtype`` (bfloat16 on TPU), while LayerNorm / GroupNorm statistics and softmax are computed in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from erclap import sharding

Dtype = jnp.dtype
NEG_INF = -1e30  # additive mask for padded keys (finite: keeps gradients NaN-free)
# Logical axes of (B, T, E) hidden states. Pinning them at layer boundaries keeps weight shardings
# (``embed`` -> fsdp, ``mlp`` / ``heads`` -> tensor) from propagating into activations; see
# ``erclap.xla_workarounds`` for the miscompilation that these batch-only pins avoid.
HIDDEN_AXES = ("activation_batch", "activation_length", "activation_embed")


def activation(name: str):
  return {
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact (erf) GELU
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "swish": jax.nn.silu,
      "silu": jax.nn.silu,
  }[name]


def dense_init(names: Sequence[str | None], stddev: float = 0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), tuple(names))


def zeros_init(names: Sequence[str | None]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(names))


def ones_init(names: Sequence[str | None]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(names))


class Dense(nn.Module):
  """y = x W + b with W (in, out) named ``names``; the bias takes the output name."""
  features: int
  names: tuple[str | None, str | None]
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=dense_init(self.names), bias_init=zeros_init(self.names[1:]), name="dense")(x)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, computed in float32, result cast to ``dtype``."""
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", ones_init(("norm",)), (d,), jnp.float32)
    bias = self.param("bias", zeros_init(("norm",)), (d,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(self.dtype)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over axis 1 of x (B, T, D) where mask (B, T) is true, in float32 -> (B, D). Empty rows give 0."""
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(m.sum(axis=1), 1.0)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """WavLM's bidirectional log-spaced buckets of key - query offsets -> int32 (length, length).

  Computed on the host in float32 like the PyTorch reference, so bucket boundaries agree exactly.
  """
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  is_small = rel < max_exact
  with np.errstate(divide="ignore"):
    large = np.log(rel.astype(np.float32) / np.float32(max_exact)).astype(np.float32)
  large = large / np.float32(np.log(max_distance / max_exact))
  large = large * np.float32(half - max_exact)
  large = np.minimum(np.where(is_small, 0, (max_exact + large)).astype(np.int64), half - 1)
  return (buckets + np.where(is_small, rel, large)).astype(np.int32)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a key padding mask and, for WavLM, a gated relative position bias.

  WavLM: layer 0 owns the bucket embedding (``has_relative_position_bias``) and returns the ungated bias
  (H, T, T), which every later layer gates with its own per-position gate computed from its input.
  """
  hidden_size: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  deterministic: bool = True
  wavlm: bool = False
  has_relative_position_bias: bool = False
  num_buckets: int = 320
  max_distance: int = 800

  @nn.compact
  def __call__(self, x, mask, position_bias=None):
    """x: (B, T, E); mask: bool (B, T) valid keys; position_bias: (H, T, T) or None -> ((B, T, E), bias)."""
    b, t, _ = x.shape
    h, dh = self.num_heads, self.hidden_size // self.num_heads
    if dh * h != self.hidden_size:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {h}")

    def proj(name):
      return nn.DenseGeneral((h, dh), dtype=self.dtype, param_dtype=jnp.float32, name=name,
                             kernel_init=dense_init(("embed", "heads", "kv")),
                             bias_init=zeros_init(("heads", "kv")))
    q = proj("query")(x) * jnp.asarray(dh ** -0.5, self.dtype)
    k = proj("key")(x)
    v = proj("value")(x)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)

    if self.wavlm:
      if position_bias is None:
        if not self.has_relative_position_bias:
          raise ValueError("WavLM attention without a position bias: layer 0 must own the bucket embedding")
        table = self.param("rel_attn_embed", dense_init((None, "heads")), (self.num_buckets, h), jnp.float32)
        buckets = relative_position_buckets(t, self.num_buckets, self.max_distance)
        position_bias = jnp.transpose(table[buckets], (2, 0, 1))  # (H, T, T)
      # Gate from this layer's input, per head and query position.
      gate_proj = nn.DenseGeneral(8, dtype=jnp.float32, param_dtype=jnp.float32, name="gru_rel_pos_linear",
                                  kernel_init=dense_init(("kv", None)), bias_init=zeros_init((None,)))
      x_heads = sharding.constrain(x, HIDDEN_AXES).reshape(b, t, h, dh)
      g = gate_proj(x_heads.astype(jnp.float32))                          # (B, T, H, 8)
      g = jax.nn.sigmoid(g.reshape(b, t, h, 2, 4).sum(-1))                # (B, T, H, 2)
      const = self.param("gru_rel_pos_const", ones_init(("heads",)), (h,), jnp.float32)
      gate = g[..., 0] * (g[..., 1] * const - 1.0) + 2.0                  # (B, T, H)
      scores = scores + jnp.transpose(gate, (0, 2, 1))[..., None] * position_bias[None]

    scores = jnp.where(mask[:, None, None, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    if not self.deterministic and self.dropout > 0:
      probs = nn.Dropout(self.dropout)(probs, deterministic=False)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    out = nn.DenseGeneral(self.hidden_size, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=dense_init(("heads", "kv", "embed")), bias_init=zeros_init(("embed",)),
                          name="out")(out)
    return sharding.constrain(out, HIDDEN_AXES), position_bias


class TransformerLayer(nn.Module):
  """One encoder layer, post-LN (BERT, wav2vec2-base) or pre-LN (``pre_ln``: wav2vec2 "stable layer norm")."""
  hidden_size: int
  num_heads: int
  intermediate_size: int
  eps: float
  act: str = "gelu"
  pre_ln: bool = False
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  deterministic: bool = True
  wavlm: bool = False
  has_relative_position_bias: bool = False
  num_buckets: int = 320
  max_distance: int = 800

  @nn.compact
  def __call__(self, x, mask, position_bias=None):
    """x: (B, T, E), mask: bool (B, T) -> ((B, T, E), position_bias or None)."""
    attn = SelfAttention(self.hidden_size, self.num_heads, dtype=self.dtype, dropout=self.dropout,
                         deterministic=self.deterministic, wavlm=self.wavlm,
                         has_relative_position_bias=self.has_relative_position_bias,
                         num_buckets=self.num_buckets, max_distance=self.max_distance, name="attention")
    drop = nn.Dropout(self.dropout, deterministic=self.deterministic)
    ln_attn = LayerNorm(self.eps, self.dtype, name="layer_norm")
    ln_ffn = LayerNorm(self.eps, self.dtype, name="final_layer_norm")
    inter = Dense(self.intermediate_size, ("embed", "mlp"), dtype=self.dtype, name="intermediate")
    output = Dense(self.hidden_size, ("mlp", "embed"), dtype=self.dtype, name="output")

    def ffn(y):
      return drop(sharding.constrain(output(drop(activation(self.act)(inter(y)))), HIDDEN_AXES))

    if self.pre_ln:
      a, position_bias = attn(ln_attn(x), mask, position_bias)
      x = x + drop(a)
      x = x + ffn(ln_ffn(x))
    else:
      a, position_bias = attn(x, mask, position_bias)
      x = ln_attn(x + drop(a))
      x = ln_ffn(x + ffn(x))
    return sharding.constrain(x, HIDDEN_AXES), position_bias


def layer_class(remat: bool):
  return nn.remat(TransformerLayer) if remat else TransformerLayer
