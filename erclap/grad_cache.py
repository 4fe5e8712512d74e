"""Gradient caching: the gradient of a batch-level loss on embeddings, computed micro-batch by micro-batch.

A contrastive loss couples every pair of the global batch, so plain gradient accumulation (a sum of
per-micro-batch losses) would change the loss. Gradient caching keeps the loss exact with bounded memory:

1. embeddings of the whole batch are computed micro-batch by micro-batch, without keeping activations;
2. the loss and its gradient w.r.t. the embeddings are taken on the full batch;
3. each micro-batch is recomputed and its embedding gradients are pulled back to the parameters (a VJP),
   summed over micro-batches.

The result equals the one-shot gradient (up to float reduction order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def split_micro(x: jax.Array, num_micro: int) -> jax.Array:
  """(N, ...) -> (M, N/M, ...): row r goes to micro-batch r % M.

  With N split into contiguous device blocks, every micro-batch then still has N/(M·P) rows on each of the
  P devices, so all devices stay busy in every micro-step.
  """
  if x.shape[0] % num_micro:
    raise ValueError(f"batch of {x.shape[0]} rows does not split into {num_micro} micro-batches")
  return jnp.moveaxis(x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]), 1, 0)


def merge_micro(x: jax.Array) -> jax.Array:
  """The inverse of ``split_micro``: (M, N/M, ...) -> (N, ...)."""
  return jnp.moveaxis(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def loss_and_grads(embed: Callable[[Any, Any, jax.Array], Any],
                   loss_of_embeddings: Callable[[Any, Any], tuple[jax.Array, Any]],
                   params, inputs, rng: jax.Array, num_micro: int) -> tuple[jax.Array, Any, Any]:
  """Loss and parameter gradient of ``loss_of_embeddings(params, embed(params, inputs, rng))``, cached.

  Args:
    embed: ``embed(params, micro_inputs, key) -> embeddings`` (a pytree of arrays with rows first).
    loss_of_embeddings: ``loss(params, embeddings) -> (scalar, aux)`` on the full batch; ``params`` enter too
      (e.g. a learned temperature); ``aux`` is returned as it is (e.g. the loss's terms).
    params: the parameters to differentiate.
    inputs: pytree of (N, ...) arrays, the model's inputs of the full batch.
    rng: base key; micro-batch i draws ``fold_in(rng, i)`` in both passes (same dropout masks).
    num_micro: number of micro-batches M (divides N).

  Returns:
    ``(loss, aux, grads)`` with ``grads`` shaped like ``params``.
  """
  micro_inputs = jax.tree.map(lambda x: split_micro(x, num_micro), inputs)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_micro))

  def forward(_, xs):  # pass 1: embeddings only, no activations kept
    inp, key = xs
    return None, embed(params, inp, key)
  _, embeddings = jax.lax.scan(forward, None, (micro_inputs, keys))
  embeddings = jax.tree.map(merge_micro, embeddings)
  (loss, aux), (g_params, g_embeddings) = jax.value_and_grad(loss_of_embeddings, argnums=(0, 1),
                                                             has_aux=True)(params, embeddings)
  g_micro = jax.tree.map(lambda g: split_micro(g, num_micro), g_embeddings)

  def backward(acc, xs):  # pass 2: recompute each micro-batch and pull its embedding gradients back
    inp, key, g_emb = xs
    _, vjp = jax.vjp(lambda p: embed(p, inp, key), params)
    (g,) = vjp(g_emb)
    return jax.tree.map(jnp.add, acc, g), None
  grads, _ = jax.lax.scan(backward, g_params, (micro_inputs, keys, g_micro))
  return loss, aux, grads
