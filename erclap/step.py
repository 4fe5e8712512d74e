"""The train step of both stages (``config.stage``: "clap" cross-modal, "ser" stage-1 pre-training).

Three ways to get the loss and its gradient, each a top-level function of the same signature
``(model, config, mesh, params, batch, rng) -> (loss, aux metrics, grads)``:

* ``clap_loss_and_grads``: the cross-modal loss of ``erclap.losses`` on one forward pass of the batch;
* ``grad_cached_clap_loss_and_grads``: the same loss and gradient for global batches beyond memory
  (``train.micro_batch_size``), by gradient caching (``erclap.grad_cache``);
* ``ser_loss_and_grads``: stage 1, CCC + pairwise ranking losses on predicted attributes.

``make_loss_and_grads`` picks one for the config; ``make_train_step`` wraps it with the optimizer update
and a non-finite guard into the function that the loop jits (explicit shardings, donated state).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from erclap import grad_cache, losses, schema
from erclap.optim import LOG_TEMPERATURE, frozen_view, learning_rate_schedule, top_level_group
from erclap.state import TrainState

LossAndGrads = Callable[..., tuple[jax.Array, dict, dict]]


def clap_loss_from_embeddings(config, mesh, speech, text, log_temperature, batch) -> jax.Array:
  """The cross-modal loss of ``config.loss``.

  Args:
    config: the run's config (``loss``, ``loss_options``).
    mesh: the device mesh (the loss is sharded over its batch axes).
    speech, text: (N, D) embeddings.
    log_temperature: scalar; the logits are similarities / exp(log_temperature).
    batch: holds ``labels`` (N, 3) and ``class_id`` (N,).

  Returns:
    The scalar loss.
  """
  loss_fn = losses.get_clap_loss(config.loss)
  return loss_fn(speech, text, batch, temperature=jnp.exp(log_temperature), mesh=mesh,
                 options=config.loss_options)


def ser_loss(config, mesh, predictions, labels) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Stage 1: weighted CCC loss + pairwise ranking loss over in-batch pairs.

  Args:
    config: the run's config (``loss_options.ccc_weight``, ``rank_*``).
    mesh: the device mesh (the ranking loss is sharded over its batch axes).
    predictions: (N, A) predicted attributes.
    labels: (N, A) true attributes.

  Returns:
    ``(total, parts)``: the weighted sum and each weighted term's unweighted value by name.
  """
  o = config.loss_options
  total, parts = 0.0, {}
  if o.ccc_weight:
    parts["ccc_loss"] = losses.ccc_loss(predictions, labels)
    total = total + o.ccc_weight * parts["ccc_loss"]
  if o.rank_weight:
    parts["rank_loss"] = losses.pairwise_ranking_loss(predictions, labels, margin=o.rank_margin,
                                                      scale=o.rank_scale, mesh=mesh)
    total = total + o.rank_weight * parts["rank_loss"]
  return total, parts


def _embed(model, config, params, inputs, rng) -> tuple[jax.Array, jax.Array]:
  """(speech, text) embeddings of ``inputs`` in training mode (dropout from ``rng``)."""
  out = model.apply({"params": frozen_view(params, config)}, **inputs, train=True, rngs={"dropout": rng})
  return out["speech"], out["text"]


def _clap_loss_of(config, mesh, batch, params, embeddings) -> jax.Array:
  speech, text = embeddings
  return clap_loss_from_embeddings(config, mesh, speech, text, frozen_view(params, config)[LOG_TEMPERATURE], batch)


def clap_loss_and_grads(model, config, mesh, params, batch, rng) -> tuple[jax.Array, dict, dict]:
  """Cross-modal loss and gradient from one forward/backward pass of the whole batch.

  Args:
    model: the CLAP model.
    config: the run's config.
    mesh: the device mesh.
    params: the parameters.
    batch: the global batch (``erclap.schema.step_keys(config)``: audio or cached speech features).
    rng: the step's dropout key.

  Returns:
    ``(loss, {}, grads)``.
  """
  def loss_of(p):
    return _clap_loss_of(config, mesh, batch, p, _embed(model, config, p, schema.model_inputs(config, batch), rng))
  loss, grads = jax.value_and_grad(loss_of)(params)
  return loss, {}, grads


def grad_cached_clap_loss_and_grads(model, config, mesh, params, batch, rng) -> tuple[jax.Array, dict, dict]:
  """``clap_loss_and_grads`` with bounded memory: gradient caching over ``train.micro_batch_size`` rows.

  Args and Returns: as ``clap_loss_and_grads``. Micro-batch i draws dropout key ``fold_in(rng, i)``.
  """
  num_micro = config.train.global_batch_size // config.train.micro_batch_size
  loss, grads = grad_cache.loss_and_grads(
      functools.partial(_embed, model, config), functools.partial(_clap_loss_of, config, mesh, batch),
      params, schema.model_inputs(config, batch), rng, num_micro)
  return loss, {}, grads


def ser_loss_and_grads(model, config, mesh, params, batch, rng) -> tuple[jax.Array, dict, dict]:
  """Stage 1: SER loss (``ser_loss``) and its gradient.

  Args: as ``clap_loss_and_grads`` (``model`` is the SER model).

  Returns:
    ``(loss, parts, grads)``: ``parts`` are the loss terms by name (``ccc_loss``, ``rank_loss``).
  """
  def loss_of(p):
    out = model.apply({"params": frozen_view(p, config)}, **schema.model_inputs(config, batch), train=True,
                      rngs={"dropout": rng})
    return ser_loss(config, mesh, out["attributes"], batch["labels"])
  (loss, parts), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  return loss, parts, grads


def check_cached_speech_is_frozen(config, param_names) -> None:
  """Training on cached speech features needs every parameter they were computed from to stay fixed.

  Args:
    config: the run's config (``data.speech_features``, ``model.freeze_speech``).
    param_names: the model's top-level parameter names.

  Raises:
    ValueError naming the representation's parameters that the optimizer would update (the cache would
    describe weights the model no longer has after the first step).
  """
  if not schema.uses_speech_cache(config):
    return
  moving = [k for k in schema.SPEECH_REPRESENTATION if k in param_names
            and not (config.model.freeze_speech and top_level_group((k,)) == "speech")]
  if moving:
    raise ValueError(f"config.data.speech_features={config.data.speech_features!r}: the cached speech "
                     f"representation is computed from {moving}, which this config trains (model.freeze_speech="
                     f"{config.model.freeze_speech} freezes only the optimizer's 'speech' group); train without "
                     f"the cache, or freeze them")


def make_loss_and_grads(model, config, mesh) -> LossAndGrads:
  """The loss-and-gradient function of ``config``: ``f(params, batch, rng) -> (loss, aux, grads)``."""
  micro, n = config.train.micro_batch_size, config.train.global_batch_size
  cached = bool(micro) and micro < n
  if config.stage == "ser":
    if cached:
      raise NotImplementedError("config.train.micro_batch_size (gradient caching) is for the clap stage; "
                                "the ser stage's losses are cheap: lower train.global_batch_size instead")
    fn = ser_loss_and_grads
  else:
    fn = grad_cached_clap_loss_and_grads if cached else clap_loss_and_grads
  return functools.partial(fn, model, config, mesh)


def make_train_step(model, config, mesh, optimizer) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The train step, to be jitted by the caller.

  Args:
    model: the model of ``config.stage``.
    config: the run's config.
    mesh: the device mesh.
    optimizer: the optax transformation (``erclap.optim.make_optimizer``).

  Returns:
    ``train_step(state, batch) -> (new_state, metrics)``. A step with a non-finite loss or gradient norm
    leaves the state untouched and reports ``finite=0``; the host stops the run.
  """
  loss_and_grads = make_loss_and_grads(model, config, mesh)
  schedule = learning_rate_schedule(config)

  def train_step(state: TrainState, batch):
    check_cached_speech_is_frozen(config, tuple(state.params))
    rng = jax.random.fold_in(state.rng, state.step)
    loss, parts, grads = loss_and_grads(state.params, batch, rng)
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
