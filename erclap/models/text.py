"""The BERT / RoBERTa (DistilRoBERTa, MiniLM) text encoder: embeddings + post-LN transformer."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from erclap import sharding
from erclap.models import layers
from erclap.models.arch import TextArch

# Embedding rows are padded up to a multiple of this, so the vocab axis splits evenly over tensor-parallel
# devices (e.g. RoBERTa's 50265 rows); the extra rows are never indexed by a valid tokenizer.
VOCAB_MULTIPLE = 128


def padded_vocab_size(vocab_size: int) -> int:
  return -(-int(vocab_size) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


class TextEncoder(nn.Module):
  """input_ids int (B, L), attention_mask int (B, L) -> hidden (B, L, E)."""
  arch: TextArch
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0
  remat: bool = False

  @nn.compact
  def __call__(self, input_ids, attention_mask, *, train: bool = False):
    a = self.arch
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
      raise ValueError(f"input_ids must be (B, L) with attention_mask of the same shape; got "
                       f"{input_ids.shape} and {attention_mask.shape}")
    length = input_ids.shape[1]
    mask = attention_mask.astype(bool)
    if a.model_type == "roberta":
      # RoBERTa numbers valid tokens from pad_token_id + 1 and gives padding the pad position.
      positions = jnp.cumsum(mask.astype(jnp.int32), axis=1) * mask + a.pad_token_id
      max_position = length + a.pad_token_id + 1
    else:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), input_ids.shape)
      max_position = length
    if max_position > a.max_position_embeddings:
      raise ValueError(f"input_ids of length {length} need {max_position} positions; the text tower has "
                       f"{a.max_position_embeddings} (lower data.max_text_tokens)")

    def embed(rows, name, axis):
      return nn.Embed(rows, a.hidden_size, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
                      embedding_init=layers.dense_init((axis, "embed")))
    x = embed(padded_vocab_size(a.vocab_size), "word_embeddings", "vocab")(input_ids.astype(jnp.int32))
    x = x + embed(a.max_position_embeddings, "position_embeddings", "length")(positions)
    token_types = jnp.zeros_like(input_ids, dtype=jnp.int32)
    x = x + embed(a.type_vocab_size, "token_type_embeddings", None)(token_types)
    x = sharding.constrain(x, layers.HIDDEN_AXES)
    x = layers.LayerNorm(a.layer_norm_eps, self.dtype, name="embeddings_norm")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    layer_cls = layers.layer_class(self.remat)
    for i in range(a.num_layers):
      x, _ = layer_cls(a.hidden_size, a.num_heads, a.intermediate_size, a.layer_norm_eps, act=a.hidden_act,
                       pre_ln=False, dtype=self.dtype, dropout=self.dropout, deterministic=not train,
                       name=f"layers_{i}")(x, mask)
    return x
