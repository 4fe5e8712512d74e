"""The train step of every stage (``erclap.stages``), its loss and gradient, and the jitted step.

The loss and gradient come one of two ways, both top-level functions of the same signature
``(model, config, mesh, params, batch, rng) -> (loss, loss terms, grads)``:

* ``loss_and_grads``: one forward/backward pass of the whole batch: the model's outputs the stage's loss reads
  (``Stage.output_keys``: speech and text embeddings, or predicted attributes), then ``Stage.loss``;
* ``grad_cached_loss_and_grads``: the same loss and gradient for global batches beyond memory
  (``train.micro_batch_size``), by gradient caching (``erclap.grad_cache``): the outputs micro-batch by
  micro-batch, the loss on the whole batch, the backward pass micro-batch by micro-batch.

``make_train_step`` wraps the one the config asks for with the optimizer update and a non-finite guard;
``jit_train_step`` jits it with the run's shardings and a donated state, the one signature the training loop
runs and the plan compiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from erclap import grad_cache, schema, sharding, stages
from erclap.optim import LOG_TEMPERATURE, frozen_view, learning_rate_schedule, trainable_mask
from erclap.state import TrainState

LossAndGrads = Callable[..., tuple[jax.Array, dict, dict]]


def _outputs(model, config, params, inputs, rng) -> dict:
  """The model outputs the stage's loss reads, in training mode (dropout from ``rng``)."""
  out = model.apply({"params": frozen_view(params, config)}, **inputs, train=True, rngs={"dropout": rng})
  return {k: out[k] for k in stages.of(config).output_keys}


def _loss_of(config, mesh, batch, params, outputs) -> tuple[jax.Array, dict]:
  return stages.of(config).loss(config, mesh, frozen_view(params, config), outputs, batch)


def loss_and_grads(model, config, mesh, params, batch, rng) -> tuple[jax.Array, dict, dict]:
  """The stage's loss and its gradient from one forward/backward pass of the whole batch.

  Args:
    model: the stage's model.
    config: the run's config.
    mesh: the device mesh.
    params: the parameters.
    batch: the global batch (``schema.step_keys(config)``: audio or cached speech features).
    rng: the step's dropout key.

  Returns:
    ``(loss, loss terms by name, grads)``.
  """
  inputs = stages.of(config).model_inputs(config, batch)

  def loss_of(p):
    return _loss_of(config, mesh, batch, p, _outputs(model, config, p, inputs, rng))
  (loss, parts), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  return loss, parts, grads


def grad_cached_loss_and_grads(model, config, mesh, params, batch, rng) -> tuple[jax.Array, dict, dict]:
  """``loss_and_grads`` with bounded memory: gradient caching over ``train.micro_batch_size`` rows.

  Args and Returns: as ``loss_and_grads``. Micro-batch i draws dropout key ``fold_in(rng, i)``.
  """
  num_micro = config.train.global_batch_size // config.train.micro_batch_size
  loss, parts, grads = grad_cache.loss_and_grads(
      functools.partial(_outputs, model, config), functools.partial(_loss_of, config, mesh, batch),
      params, stages.of(config).model_inputs(config, batch), rng, num_micro)
  return loss, parts, grads


def check_cached_speech_is_frozen(config, param_names) -> None:
  """Training on cached speech features needs every parameter they were computed from to stay fixed.

  Args:
    config: the run's config (``data.speech_features``).
    param_names: the model's top-level parameter names.

  Raises:
    ValueError naming the representation's parameters that the optimizer would update (the cache would
    describe weights the model no longer has after the first step).
  """
  if not schema.uses_speech_cache(config):
    return
  trained = trainable_mask(config, param_names)
  moving = [k for k in schema.SPEECH_REPRESENTATION if trained.get(k, False)]
  if moving:
    raise ValueError(f"config.data.speech_features={config.data.speech_features!r}: the cached speech "
                     f"representation is computed from {moving}, which this config trains (model.freeze_speech="
                     f"{config.model.freeze_speech}); train without the cache, or freeze them")


def make_loss_and_grads(model, config, mesh) -> LossAndGrads:
  """The loss-and-gradient function of ``config``: ``f(params, batch, rng) -> (loss, terms, grads)``."""
  micro, n = config.train.micro_batch_size, config.train.global_batch_size
  fn = grad_cached_loss_and_grads if micro and micro < n else loss_and_grads
  return functools.partial(fn, model, config, mesh)


def make_train_step(model, config, mesh, optimizer) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The train step, to be jitted (``jit_train_step``).

  Args:
    model: the model of the config's stage.
    config: the run's config.
    mesh: the device mesh.
    optimizer: the optax transformation (``erclap.optim.make_optimizer``).

  Returns:
    ``train_step(state, batch) -> (new_state, metrics)``. A step with a non-finite loss or gradient norm
    leaves the state untouched and reports ``finite=0``; the host stops the run.
  """
  loss_and_grads_fn = make_loss_and_grads(model, config, mesh)
  schedule = learning_rate_schedule(config)

  def train_step(state: TrainState, batch):
    check_cached_speech_is_frozen(config, tuple(state.params))
    rng = jax.random.fold_in(state.rng, state.step)
    loss, parts, grads = loss_and_grads_fn(state.params, batch, rng)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(step=state.step + jnp.where(finite, 1, 0), params=keep(new_params, state.params),
                              opt_state=keep(new_opt_state, state.opt_state))
    metrics = dict(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   finite=finite.astype(jnp.float32), **parts)
    if LOG_TEMPERATURE in state.params:
      metrics["temperature"] = jnp.exp(state.params[LOG_TEMPERATURE])
    return new_state, metrics

  return train_step


def batch_shardings(config, mesh) -> dict:
  """The NamedSharding of every key of a train-step batch (``schema.step_keys``): split along the batch."""
  return {k: sharding.batch_sharding(mesh, v.ndim) for k, v in schema.dummy_batch(config).items()}


def jit_train_step(model, config, mesh, optimizer, state_shardings: TrainState):
  """The train step jitted with the run's shardings: state in and out as ``state_shardings`` (donated, so the
  new state reuses its buffers), the batch split along its rows. The training loop calls it; the plan lowers
  and compiles it on abstract inputs.

  Args:
    model, config, mesh, optimizer: as ``make_train_step``.
    state_shardings: a TrainState of NamedShardings (``erclap.state.abstract_sharded_state``).

  Returns:
    The jitted ``train_step(state, batch) -> (new_state, metrics)``.
  """
  return jax.jit(make_train_step(model, config, mesh, optimizer),
                 in_shardings=(state_shardings, batch_shardings(config, mesh)), out_shardings=(state_shardings, None),
                 donate_argnums=(0,))
