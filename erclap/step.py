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

The batch and the model method it goes through are the speech source's (``erclap.speech_source``: audio, or
cached speech features); what the gradient reaches is ``erclap.trainable``'s (the rest is behind
``stop_gradient``, so XLA drops its backward pass). Each function takes the source explicitly where a caller
needs another than the config's (the plan compiles the cached step of a config that reads audio).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from erclap import grad_cache, sharding, speech_source, stages, trainable
from erclap.models import LOG_TEMPERATURE
from erclap.optim import learning_rate_schedule
from erclap.speech_source import SpeechSource
from erclap.state import TrainState

LossAndGrads = Callable[..., tuple[jax.Array, dict, dict]]


def _outputs(model, config, source: SpeechSource, params, inputs, rng) -> dict:
  """The model outputs the stage's loss reads, in training mode (dropout from ``rng``)."""
  out = model.apply({"params": trainable.of(config).frozen_view(params)}, **inputs, train=True,
                    rngs={"dropout": rng}, method=source.forward_method)
  return {k: out[k] for k in stages.of(config).output_keys}


def _loss_of(config, mesh, batch, params, outputs) -> tuple[jax.Array, dict]:
  return stages.of(config).loss(config, mesh, trainable.of(config).frozen_view(params), outputs, batch)


def loss_and_grads(model, config, mesh, source: SpeechSource, params, batch, rng) -> tuple[jax.Array, dict, dict]:
  """The stage's loss and its gradient from one forward/backward pass of the whole batch.

  Args:
    model: the stage's model.
    config: the run's config.
    mesh: the device mesh.
    source: where the batch's speech comes from (``speech_source.of(config)`` for a run).
    params: the parameters.
    batch: the global batch (``source.step_keys``: audio or cached speech features).
    rng: the step's dropout key.

  Returns:
    ``(loss, loss terms by name, grads)``.
  """
  inputs = source.model_inputs(stages.of(config), batch)

  def loss_of(p):
    return _loss_of(config, mesh, batch, p, _outputs(model, config, source, p, inputs, rng))
  (loss, parts), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  return loss, parts, grads


def grad_cached_loss_and_grads(model, config, mesh, source: SpeechSource, params, batch,
                               rng) -> tuple[jax.Array, dict, dict]:
  """``loss_and_grads`` with bounded memory: gradient caching over ``train.micro_batch_size`` rows.

  Args and Returns: as ``loss_and_grads``. Micro-batch i draws dropout key ``fold_in(rng, i)``.
  """
  num_micro = config.train.global_batch_size // config.train.micro_batch_size
  loss, parts, grads = grad_cache.loss_and_grads(
      functools.partial(_outputs, model, config, source), functools.partial(_loss_of, config, mesh, batch),
      params, source.model_inputs(stages.of(config), batch), rng, num_micro)
  return loss, parts, grads


def _source(config, source: SpeechSource | None) -> SpeechSource:
  """``source``, else the config's; ValueError when the config cannot read its speech from it."""
  source = speech_source.of(config) if source is None else source
  problems = source.problems(config)
  if problems:
    raise ValueError("; ".join(problems))
  return source


def make_loss_and_grads(model, config, mesh, source: SpeechSource | None = None) -> LossAndGrads:
  """The loss-and-gradient function of ``config``: ``f(params, batch, rng) -> (loss, terms, grads)``.

  ``source``: where the batch's speech comes from (None: ``speech_source.of(config)``)."""
  micro, n = config.train.micro_batch_size, config.train.global_batch_size
  fn = grad_cached_loss_and_grads if micro and micro < n else loss_and_grads
  return functools.partial(fn, model, config, mesh, _source(config, source))


def make_train_step(model, config, mesh, optimizer,
                    source: SpeechSource | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The train step, to be jitted (``jit_train_step``).

  Args:
    model: the model of the config's stage.
    config: the run's config.
    mesh: the device mesh.
    optimizer: the optax transformation (``erclap.optim.make_optimizer``).
    source: where the batch's speech comes from (None: ``speech_source.of(config)``). ValueError when the config
      cannot read it from there (a cache where part of the speech path trains: ``trainable.of(config).cached``).

  Returns:
    ``train_step(state, batch) -> (new_state, metrics)``. A step with a non-finite loss or gradient norm
    leaves the state untouched and reports ``finite=0``; the host stops the run.
  """
  loss_and_grads_fn = make_loss_and_grads(model, config, mesh, source)
  schedule = learning_rate_schedule(config)

  def train_step(state: TrainState, batch):
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


def batch_shardings(config, mesh, source: SpeechSource | None = None) -> dict:
  """The NamedSharding of every key of a train-step batch (``source.step_keys``): split along the batch."""
  source = speech_source.of(config) if source is None else source
  return {k: sharding.batch_sharding(mesh, v.ndim) for k, v in source.dummy_batch(config).items()}


def jit_train_step(model, config, mesh, optimizer, state_shardings: TrainState, source: SpeechSource | None = None):
  """The train step jitted with the run's shardings: state in and out as ``state_shardings`` (donated, so the
  new state reuses its buffers), the batch split along its rows. The training loop calls it; the plan lowers
  and compiles it on abstract inputs.

  Args:
    model, config, mesh, optimizer, source: as ``make_train_step``.
    state_shardings: a TrainState of NamedShardings (``erclap.state.abstract_sharded_state``).

  Returns:
    The jitted ``train_step(state, batch) -> (new_state, metrics)``.
  """
  return jax.jit(make_train_step(model, config, mesh, optimizer, source),
                 in_shardings=(state_shardings, batch_shardings(config, mesh, source)),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))
