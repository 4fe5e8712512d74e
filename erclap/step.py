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

from erclap import grad_cache, members, optim, sharding, speech_source, stages, trainable, xla_workarounds
from erclap import state as state_lib
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


def _loss_of(config, mesh, batch, params, outputs, options=None) -> tuple[jax.Array, dict]:
  return stages.of(config).loss(config, mesh, trainable.of(config).frozen_view(params), outputs, batch, options)


def _joined(shared: dict | None) -> Callable[[dict], dict]:
  """``p -> shared | p``: the model's whole tree from the differentiated parameters and the shared rest."""
  return (lambda p: p) if not shared else (lambda p: {**shared, **p})


def loss_and_grads(model, config, mesh, source: SpeechSource, params, batch, rng, *, shared: dict | None = None,
                   options=None) -> tuple[jax.Array, dict, dict]:
  """The stage's loss and its gradient from one forward/backward pass of the whole batch.

  Args:
    model: the stage's model.
    config: the run's config.
    mesh: the device mesh.
    source: where the batch's speech comes from (``speech_source.of(config)`` for a run).
    params: the parameters.
    batch: the global batch (``source.step_keys``: audio or cached speech features).
    rng: the step's dropout key.
    shared: parameters the model reads but that are not differentiated (a program with members: the frozen
      entries every member shares); None: ``params`` is the whole tree.
    options: the loss options (None: ``config.loss_options``; a member's: ``erclap.members.loss_options``).

  Returns:
    ``(loss, loss terms by name, grads)``, ``grads`` shaped like ``params``.
  """
  inputs = source.model_inputs(stages.of(config), batch)
  whole = _joined(shared)

  def loss_of(p):
    return _loss_of(config, mesh, batch, whole(p), _outputs(model, config, source, whole(p), inputs, rng), options)
  (loss, parts), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  return loss, parts, grads


def grad_cached_loss_and_grads(model, config, mesh, source: SpeechSource, params, batch, rng, *,
                               shared: dict | None = None, options=None) -> tuple[jax.Array, dict, dict]:
  """``loss_and_grads`` with bounded memory: gradient caching over ``train.micro_batch_size`` rows.

  Args and Returns: as ``loss_and_grads``. Micro-batch i draws dropout key ``fold_in(rng, i)``.
  """
  num_micro = config.train.global_batch_size // config.train.micro_batch_size
  whole = _joined(shared)
  loss, parts, grads = grad_cache.loss_and_grads(
      lambda p, inputs, key: _outputs(model, config, source, whole(p), inputs, key),
      lambda p, outputs: _loss_of(config, mesh, batch, whole(p), outputs, options),
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
  """The loss-and-gradient function of ``config``: ``f(params, batch, rng, *, shared=None, options=None) -> (loss,
  terms, grads)`` (``loss_and_grads``).

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
  if members.count(config):
    return _member_train_step(model, config, mesh, optimizer, source)
  loss_and_grads_fn = make_loss_and_grads(model, config, mesh, source)
  schedule = learning_rate_schedule(config)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    params, opt_state, finite, metrics = _update(loss_and_grads_fn, optimizer, schedule, state.params,
                                                 state.opt_state, rng, state.step, batch)
    new_state = state.replace(step=state.step + jnp.where(finite, 1, 0), params=params, opt_state=opt_state)
    if LOG_TEMPERATURE in state.params:
      metrics[stages.TEMPERATURE_METRIC] = jnp.exp(state.params[LOG_TEMPERATURE])
    return new_state, metrics

  return train_step


def _update(loss_and_grads_fn, optimizer, schedule, params, opt_state, rng, step, batch, *, shared=None,
            options=None, temperature_factor=None):
  """One run's (one member's) update: ``(params, opt_state, finite, metrics)`` after the step, the old ones where
  the loss or the gradient norm is not finite. ``temperature_factor``: a member's 0 / 1 on the log temperature's
  gradient (``members.learn_temperature``), applied before the gradient is clipped, as a frozen temperature's
  zero gradient is."""
  loss, parts, grads = loss_and_grads_fn(params, batch, rng, shared=shared, options=options)
  if temperature_factor is not None:
    grads = {**grads, LOG_TEMPERATURE: grads[LOG_TEMPERATURE] * temperature_factor}
  grad_norm = optax.tree.norm(grads)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  metrics = dict(loss=loss, grad_norm=grad_norm, learning_rate=schedule(step), finite=finite.astype(jnp.float32),
                 **parts)
  return keep(new_params, params), keep(new_opt_state, opt_state), finite, metrics


def _member_train_step(model, config, mesh, optimizer, source):
  """The train step of a program with members (``erclap.members``): one member's update mapped over the member axis
  of the state (``erclap.state``: the member entries, their optimizer state, the step-key bases) and of the
  per-member values (``members.hyper``: learning rate, temperature factor, loss weights, traced), with the shared
  parameters, the batch and the step count broadcast: one batch, one program. ``members.at_once`` members at a
  time: all (``jax.vmap``; on a mesh the member axis maps to, ``sharding.member_mesh_axis``, the vmapped
  activations are split over it too, ``spmd_axis_name``), or n after n (``jax.lax.map``: on XLA:CPU a batched
  matmul is slower than the same matmuls one after another). Metrics come back per member (K,); the step count
  advances when every member's step was finite."""
  loss_and_grads_fn = make_loss_and_grads(model, config, mesh, source)
  hyper = members.hyper(config)
  axis = sharding.member_mesh_axis(config.mesh.logical_axis_rules, mesh.axis_names)
  at_once = members.at_once(config, mesh.devices.flat[0].platform, sharded=axis is not None)

  def member(params, opt_state, rng, h, shared, batch, step):
    peak = h.get("learning_rate")
    member_optimizer = optimizer if peak is None else optim.make_optimizer(config, peak)
    params, opt_state, finite, metrics = _update(
        loss_and_grads_fn, member_optimizer, learning_rate_schedule(config, peak), params, opt_state,
        jax.random.fold_in(rng, step), step, batch, shared=shared, options=members.loss_options(config, h),
        temperature_factor=h.get("learn_temperature"))
    if LOG_TEMPERATURE in {**shared, **params}:
      metrics[stages.TEMPERATURE_METRIC] = jnp.exp({**shared, **params}[LOG_TEMPERATURE])
    return params, opt_state, finite, metrics

  def train_step(state: TrainState, batch):
    stacked = state_lib.member_names(config, state.params)
    own = {n: state.params[n] for n in stacked}
    shared = {n: v for n, v in state.params.items() if n not in stacked}
    per_member = (own, state.opt_state, state.rng, {name: jnp.asarray(value) for name, value in hyper.items()})
    with xla_workarounds.vmapped_shard_maps():  # the losses' row sharding under vmap
      if at_once:
        one = lambda xs: member(*xs, shared, batch, state.step)
        params, opt_state, finite, metrics = jax.lax.map(one, per_member, batch_size=at_once if at_once > 1 else None)
      else:
        params, opt_state, finite, metrics = jax.vmap(member, in_axes=(0, 0, 0, 0, None, None, None),
                                                      spmd_axis_name=axis)(*per_member, shared, batch, state.step)
    new_state = state.replace(step=state.step + jnp.where(jnp.all(finite), 1, 0), params={**shared, **params},
                              opt_state=opt_state)
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
