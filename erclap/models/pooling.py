"""Utterance pooling of speech frames (mean, attentive statistics) and the waveform standardisation of SER models.

Every pooling sees only an utterance's valid frames, so a padded batch gives each utterance the result it gets
alone; statistics are float32 whatever the compute dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from erclap.models import layers

POOLINGS = ("mean", "attentive_stats")         # ``model.speech_pooling``
TRAINABLE_POOLINGS = ("attentive_stats",)       # the poolings with parameters (erclap.trainable trains them)
VAR_FLOOR = 1e-5   # variance floor of attentive statistics pooling (the Odyssey SER baseline's clamp)
INPUT_STD_EPS = 1e-6


def pooled_size(pooling: str, hidden_size: int) -> int:
  """Width of the pooled vector: H for "mean", 2H ([mean || std]) for "attentive_stats"."""
  check_pooling(pooling)
  return 2 * hidden_size if pooling == "attentive_stats" else hidden_size


def check_pooling(pooling: str) -> str:
  if pooling not in POOLINGS:
    raise ValueError(f"model.speech_pooling={pooling!r}: use one of {POOLINGS}")
  return pooling


def standardize_waveform(audio: jax.Array, mask: jax.Array, mean: float, std: float) -> jax.Array:
  """``(x - mean) / (std + 1e-6)`` with corpus-level scalars (not per utterance); padding stays 0.

  SER checkpoints trained on globally standardised audio (the Odyssey baselines) expect exactly this input.
  """
  scaled = (audio.astype(jnp.float32) - mean) / (std + INPUT_STD_EPS)
  return jnp.where(mask.astype(bool), scaled, 0.0)


class MeanPooling(nn.Module):
  """Mean over valid frames (no parameters)."""

  @nn.compact
  def __call__(self, x, mask):
    """x (B, T, H), mask bool (B, T) -> (B, H) float32."""
    return layers.masked_mean(x, mask.astype(bool))


class AttentiveStatisticsPooling(nn.Module):
  """Attentive statistics pooling (Okabe et al. 2018) over each utterance's valid frames.

  ``h = tanh(W x + b)``, ``w = softmax_t(h . attention)``, ``mu = sum_t w x``,
  ``sigma = sqrt(max(sum_t w (x - mu)^2, 1e-5))`` -> ``[mu || sigma]`` (B, 2H) float32. Parameters:
  ``sap_linear`` (kernel (H, H), bias (H,)) and ``attention`` (H, 1).
  """
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    """x (B, T, H), mask bool (B, T) valid frames -> (B, 2H) float32 (an empty row gives mu = 0)."""
    h_dim = x.shape[-1]
    mask = mask.astype(bool)
    h = nn.Dense(h_dim, dtype=self.dtype, param_dtype=jnp.float32, name="sap_linear",
                 kernel_init=layers.dense_init(("embed", "mlp")), bias_init=layers.zeros_init(("mlp",)))(x)
    attention = self.param("attention", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("mlp", None)),
                           (h_dim, 1), jnp.float32)
    scores = (jnp.tanh(h.astype(jnp.float32)) @ attention)[..., 0]   # (B, T)
    scores = jnp.where(mask, scores, layers.NEG_INF)
    # Zeroing after the softmax keeps an all-padding row at exactly 0 instead of a uniform average of padding.
    w = jax.nn.softmax(scores, axis=-1) * mask
    x = x.astype(jnp.float32)
    mu = jnp.einsum("bt,bth->bh", w, x)
    # Centred second moment: the same value as sum w x^2 - mu^2 without its cancellation for large means.
    var = jnp.einsum("bt,bth->bh", w, jnp.square(x - mu[:, None, :]))
    return jnp.concatenate([mu, jnp.sqrt(jnp.maximum(var, VAR_FLOOR))], axis=-1)


def make_pooling(pooling: str, dtype=jnp.float32) -> nn.Module:
  """The pooling module ``model.speech_pooling`` names (unbound; assign it in ``setup``)."""
  if check_pooling(pooling) == "attentive_stats":
    return AttentiveStatisticsPooling(dtype=dtype)
  return MeanPooling()
