"""The SER head: the Odyssey-2024 MSP-Podcast baseline's regression / classification MLP.

Input dropout, then ``layers`` blocks of Dense -> LayerNorm -> ReLU -> Dropout of width ``hidden``, then a Dense
to ``out_dim`` scores. Parameters: ``fc_{i}`` (Dense), ``fc_{i}_norm`` (LayerNorm), ``out`` (Dense).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from erclap.models import layers

HEAD_LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which the Odyssey head uses


class SERHead(nn.Module):
  """Pooled (B, D) -> (hidden (B, hidden) float32 after the last block, scores (B, out_dim) float32)."""
  out_dim: int
  hidden: int
  num_layers: int = 1
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.num_layers < 1 or self.hidden < 1:
      raise ValueError(f"SER head: num_layers={self.num_layers} and hidden={self.hidden} must be >= 1")
    drop = nn.Dropout(self.dropout, deterministic=not train)
    x = drop(x)
    in_name = "embed"
    for i in range(self.num_layers):
      out_name = "mlp" if in_name == "embed" else "embed"  # alternate, so no kernel names one mesh axis twice
      x = layers.Dense(self.hidden, (in_name, out_name), dtype=self.dtype, name=f"fc_{i}")(x)
      x = layers.LayerNorm(HEAD_LN_EPS, self.dtype, name=f"fc_{i}_norm")(x)
      x = drop(jax.nn.relu(x))
      in_name = out_name
    scores = layers.Dense(self.out_dim, (in_name, None), dtype=jnp.float32, name="out")(x)
    return x.astype(jnp.float32), scores.astype(jnp.float32)
