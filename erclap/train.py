"""The training loop, for both stages (``config.stage``: "clap" cross-modal, "ser" stage-1 pre-training).

One ``jax.jit`` train step with explicit in/out shardings on the device mesh and a donated state; the loss
comes from ``erclap.losses`` and is itself sharded over the mesh's batch axes. Large global batches beyond
memory use gradient caching (``train.micro_batch_size``): embeddings for the whole global batch are
computed micro-batch by micro-batch without gradients, the loss and its gradient w.r.t. the embeddings are
taken on the full batch, then gradients are back-propagated micro-batch by micro-batch. The result equals
the one-shot step.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from erclap import checkpointing, losses, sharding

# Keys of a host batch that enter the jitted step (strings such as ids stay on the host).
MODEL_INPUT_KEYS = ("audio", "audio_mask", "input_ids", "attention_mask")
STEP_KEYS = MODEL_INPUT_KEYS + ("labels", "class_id", "valid")
SPEECH_TOWER, TEXT_TOWER, LOG_TEMPERATURE = "speech_tower", "text_tower", "log_temperature"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; the key of step s is fold_in(rng, s), so resumed runs draw the same keys


class NonFiniteLossError(RuntimeError):
  pass


# --------------------------------------------------------------------------- set-up pieces


def hide_accelerators_from_tensorflow() -> None:
  """clu's writers and TFDS import TensorFlow; keep it off the GPUs/TPUs that JAX owns."""
  try:
    import tensorflow as tf
  except ImportError:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):
    pass  # already initialised or no such device type


def make_mesh(config):
  return sharding.make_mesh(config.mesh.shape, config.mesh.axes)


def build_model(config, vocab_size: int | None = None) -> nn.Module:
  from erclap import models

  if config.stage == "ser":
    return models.build_ser_model(config.model)
  model = models.build_clap_model(config.model, vocab_size=vocab_size)
  return model.clone(temperature_init=float(config.train.temperature_init))


def dummy_inputs(config, batch_size: int = 2) -> dict[str, np.ndarray]:
  """Model inputs of the right shapes and dtypes (for initialisation and shape inference)."""
  num_samples = int(round(config.data.max_seconds * config.data.sample_rate))
  length = config.data.max_text_tokens
  return dict(audio=np.zeros((batch_size, num_samples), np.float32),
              audio_mask=np.ones((batch_size, num_samples), bool),
              input_ids=np.zeros((batch_size, length), np.int32),
              attention_mask=np.ones((batch_size, length), np.int32))


def model_inputs(config, batch: dict) -> dict:
  keys = ("audio", "audio_mask") if config.stage == "ser" else MODEL_INPUT_KEYS
  return {k: batch[k] for k in keys}


def init_params_fn(model, config):
  inputs = model_inputs(config, dummy_inputs(config))

  def init(rng):
    return model.init({"params": rng, "dropout": rng}, **inputs, train=False)["params"]
  return init


def abstract_params(model, config):
  """The parameters as boxed (logically partitioned) ShapeDtypeStructs: one trace of the model's init."""
  return jax.eval_shape(init_params_fn(model, config), jax.random.key(0))


def param_shardings(model, config, mesh, boxed=None):
  """NamedShardings of the (unboxed) parameters, from their logical axis names and the rule table.

  ``boxed``: ``abstract_params(model, config)`` when the caller has it already (saves a trace)."""
  boxed = abstract_params(model, config) if boxed is None else boxed
  logical = nn.get_partition_spec(boxed)
  return nn.logical_to_mesh_sharding(logical, mesh, sharding.logical_axis_rules(config.mesh.logical_axis_rules,
                                                                                 mesh.axis_names))


def init_params(model, config, mesh, rng, shardings=None):
  """Freshly initialised parameters, created sharded (``shardings``: from ``param_shardings`` if not given)."""
  shardings = param_shardings(model, config, mesh) if shardings is None else shardings
  init = init_params_fn(model, config)
  with jax.set_mesh(mesh):
    return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)


def top_level_group(path) -> str:
  """Which optimiser group a parameter belongs to: speech / text / temperature / head."""
  top = path[0].key if hasattr(path[0], "key") else str(path[0])
  return {SPEECH_TOWER: "speech", TEXT_TOWER: "text", LOG_TEMPERATURE: "temperature"}.get(top, "head")


def learning_rate_schedule(config) -> optax.Schedule:
  t = config.train
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=min(t.warmup_steps, max(t.num_steps - 1, 0)),
      decay_steps=max(t.num_steps, t.warmup_steps + 1), end_value=0.0)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW + warmup/cosine + global-norm clipping, with per-tower learning rates or freezing."""
  t, m = config.train, config.model
  schedule = learning_rate_schedule(config)

  def adamw(multiplier, weight_decay=t.weight_decay):
    scaled = (lambda step: schedule(step) * multiplier) if multiplier != 1.0 else schedule
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on biases/norms
    return optax.adamw(scaled, b1=0.9, b2=0.98, eps=1e-6, weight_decay=weight_decay, mask=decay_mask)

  groups = {
      "speech": optax.set_to_zero() if m.freeze_speech else adamw(t.speech_lr_multiplier),
      "text": optax.set_to_zero() if m.freeze_text else adamw(t.text_lr_multiplier),
      "temperature": adamw(1.0, 0.0) if t.learn_temperature else optax.set_to_zero(),
      "head": adamw(1.0),
  }
  labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: top_level_group(p), params)
  chain = [optax.clip_by_global_norm(t.grad_clip_norm)] if t.grad_clip_norm > 0 else []
  return optax.chain(*chain, optax.multi_transform(groups, labels))


def frozen_view(params, config):
  """Stops gradients into frozen towers (and lets XLA drop their backward pass entirely)."""
  frozen = {SPEECH_TOWER: config.model.freeze_speech, TEXT_TOWER: config.model.freeze_text}
  if config.stage == "clap" and not config.train.learn_temperature:
    frozen[LOG_TEMPERATURE] = True
  return {k: (jax.lax.stop_gradient(v) if frozen.get(k, False) else v) for k, v in params.items()}


# --------------------------------------------------------------------------- losses of the two stages


def clap_loss_from_embeddings(config, mesh, speech, text, log_temperature, batch):
  """The cross-modal loss of ``config.loss`` on (N, D) embeddings; batch holds labels and class ids."""
  loss_fn = losses.get_clap_loss(config.loss)
  return loss_fn(speech, text, batch, temperature=jnp.exp(log_temperature), mesh=mesh,
                 options=config.loss_options)


def ser_loss(config, mesh, predictions, labels):
  """Stage 1: weighted CCC loss + pairwise ranking loss over in-batch pairs."""
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


# --------------------------------------------------------------------------- the train step


def make_loss_and_grads(model, config, mesh):
  """Returns f(params, batch, rng) -> (loss, aux metrics, grads): one-shot or gradient-cached."""
  micro = config.train.micro_batch_size
  n = config.train.global_batch_size
  if config.stage == "ser":
    def one_shot_ser(params, batch, rng):
      def loss_of(p):
        out = model.apply({"params": frozen_view(p, config)}, **model_inputs(config, batch), train=True,
                          rngs={"dropout": rng})
        return ser_loss(config, mesh, out["attributes"], batch["labels"])
      (loss, parts), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
      return loss, parts, grads
    if micro and micro < n:
      raise NotImplementedError("config.train.micro_batch_size (gradient caching) is for the clap stage; "
                                "the ser stage's losses are cheap: lower train.global_batch_size instead")
    return one_shot_ser

  def embed(params, inputs, rng):
    out = model.apply({"params": frozen_view(params, config)}, **inputs, train=True, rngs={"dropout": rng})
    return out["speech"], out["text"]

  def loss_of_embeddings(speech, text, log_temperature, batch):
    return clap_loss_from_embeddings(config, mesh, speech, text, log_temperature, batch)

  def one_shot(params, batch, rng):
    def loss_of(p):
      speech, text = embed(p, model_inputs(config, batch), rng)
      return loss_of_embeddings(speech, text, frozen_view(p, config)[LOG_TEMPERATURE], batch)
    loss, grads = jax.value_and_grad(loss_of)(params)
    return loss, {}, grads

  if not micro or micro >= n:
    return one_shot

  num_micro = n // micro

  def to_micro(x):
    # (N, ...) -> (M, n/M, ...). Row r goes to micro-batch r % M, so with N split into contiguous device
    # blocks every micro-batch still has n/(M·P) rows on each of the P devices (all devices stay busy).
    return jnp.moveaxis(x.reshape((micro, num_micro) + x.shape[1:]), 1, 0)

  def from_micro(x):
    return jnp.moveaxis(x, 0, 1).reshape((n,) + x.shape[2:])

  def grad_cached(params, batch, rng):
    inputs = jax.tree.map(to_micro, model_inputs(config, batch))
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_micro))

    def forward(_, xs):  # pass 1: embeddings only, no activations kept
      inp, key = xs
      return None, embed(params, inp, key)
    _, (speech, text) = jax.lax.scan(forward, None, (inputs, keys))
    speech, text = from_micro(speech), from_micro(text)
    log_t = frozen_view(params, config)[LOG_TEMPERATURE]
    loss, (g_speech, g_text, g_log_t) = jax.value_and_grad(loss_of_embeddings, argnums=(0, 1, 2))(
        speech, text, log_t, batch)

    def backward(acc, xs):  # pass 2: recompute each micro-batch and pull its embedding gradients back
      inp, key, gs, gt = xs
      _, vjp = jax.vjp(lambda p: embed(p, inp, key), params)
      (g,) = vjp((gs, gt))
      return jax.tree.map(jnp.add, acc, g), None
    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(backward, zeros, (inputs, keys, to_micro(g_speech), to_micro(g_text)))
    grads = {**grads, LOG_TEMPERATURE: grads[LOG_TEMPERATURE] + g_log_t}
    return loss, {}, grads

  return grad_cached


def make_train_step(model, config, mesh, optimizer):
  loss_and_grads = make_loss_and_grads(model, config, mesh)
  schedule = learning_rate_schedule(config)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, parts, grads = loss_and_grads(state.params, batch, rng)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # Non-finite guard: a bad step leaves the state untouched; the host stops the run (see the loop).
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


def abstract_state_and_shardings(model, config, mesh, optimizer) -> tuple[TrainState, TrainState]:
  """The TrainState as ShapeDtypeStructs, and its shardings: optimizer moments follow their parameters."""
  boxed = abstract_params(model, config)
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), nn.meta.unbox(boxed))
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(optimizer.init, params),
                        rng=jax.eval_shape(lambda: jax.random.key(0)))
  p_shardings = param_shardings(model, config, mesh, boxed)
  replicated = sharding.replicated(mesh)
  opt_shardings = _follow_params(abstract.opt_state, params, p_shardings, replicated)
  return abstract, TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings, rng=replicated)


def state_shardings(model, config, mesh, optimizer) -> TrainState:
  """Shardings of the whole TrainState: optimizer moments follow their parameters."""
  return abstract_state_and_shardings(model, config, mesh, optimizer)[1]


def _follow_params(abstract_opt, abstract_params, p_shardings, default):
  """Sharding of each optimizer-state leaf: that of the parameter it mirrors, else ``default``.

  A leaf mirrors a parameter when the parameter's key path is a suffix of the leaf's key path and the shapes
  agree (Adam's mu/nu, trace, ...). Matching by path rather than by tree structure copes with the
  ``MaskedNode`` placeholders that ``optax.multi_transform`` leaves where a group's transform is masked out.
  """
  by_path = {}
  flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  for (path, leaf), s in zip(flat_params, jax.tree.leaves(p_shardings), strict=True):
    by_path[tuple(str(k) for k in path)] = (leaf.shape, s)

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return default

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def create_train_state(model, config, mesh, optimizer, rng) -> tuple[TrainState, TrainState]:
  """A fresh state (sharded) and its shardings; pre-trained towers are loaded here when configured."""
  shardings = state_shardings(model, config, mesh, optimizer)
  init_rng, state_rng = jax.random.split(rng)
  params = init_params(model, config, mesh, init_rng, shardings.params)
  params = load_pretrained_towers(params, config, shardings.params)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  state = TrainState(step=sharding.put_global(np.zeros((), np.int32), shardings.step), params=params,
                     opt_state=opt_state, rng=jax.jit(lambda r: r, out_shardings=shardings.rng)(state_rng))
  return state, shardings


def load_pretrained_towers(params, config, shardings):
  """Puts ``model.speech_init`` / ``model.text_init`` weights (HF dir or ERCLAP stage-1 workdir) in place."""
  if not (config.model.speech_init or config.model.text_init):
    return params
  from erclap import pretrained

  host = pretrained.load_tower_weights(sharding.to_host(params), config)
  return jax.tree.map(sharding.put_global, host, shardings)


# --------------------------------------------------------------------------- the loop


class _Preemption:
  """SIGTERM (e.g. TPU preemption) sets a flag that the loop polls between steps."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def global_batch(host_batch: dict, mesh) -> dict:
  """Host-local numpy batch -> global jax arrays sharded along the batch over the mesh."""
  out = {}
  for k in STEP_KEYS:
    x = np.asarray(host_batch[k])
    out[k] = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x)
  return out


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _write_json_atomic(path: str, payload: dict) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def setup(config, workdir):
  """Everything the loop, evaluation and export share: mesh, tokenizer, data, model."""
  from erclap import data, tokenization

  hide_accelerators_from_tensorflow()
  mesh = make_mesh(config)
  divisor = math.lcm(sharding.batch_size_divisor(mesh), jax.process_count())
  if config.train.global_batch_size % divisor:
    raise ValueError(f"config.train.global_batch_size={config.train.global_batch_size} must be a multiple "
                     f"of {divisor} (batch shards of mesh {dict(mesh.shape)} and {jax.process_count()} processes)")
  micro = config.train.micro_batch_size
  if micro and micro < config.train.global_batch_size and micro % sharding.batch_size_divisor(mesh):
    raise ValueError(f"config.train.micro_batch_size={micro} must be a multiple of the "
                     f"{sharding.batch_size_divisor(mesh)} batch shards of the mesh")
  # Process 0 builds the corpus first (others would race on the same files), then everyone opens it.
  if jax.process_index() == 0:
    data.ensure_dataset(config.data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("erclap-dataset-ready")
    data.ensure_dataset(config.data)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  model = build_model(config, vocab_size=tokenizer.vocab_size)
  return mesh, tokenizer, model


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains (resuming from ``workdir`` if it holds checkpoints); returns the last evaluation metrics."""
  from clu import metric_writers

  from erclap import evaluate, input_pipeline

  mesh, tokenizer, model = setup(config, workdir)
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief, asynchronous=True)
  if is_chief:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})

  optimizer = make_optimizer(config)
  state, shardings = create_train_state(model, config, mesh, optimizer, jax.random.key(config.seed))
  train_iter = input_pipeline.create_train_iterator(config, tokenizer)
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  restored = checkpointing.restore_latest(manager, abstract, data_iter=train_iter)
  if restored is not None:
    step0, state, _ = restored
    logging.info("Resumed from %s at step %d.", manager.directory, step0)
  step0 = int(state.step)

  batch_shardings = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in dummy_batch(config).items()}
  train_step = jax.jit(make_train_step(model, config, mesh, optimizer),
                       in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None),
                       donate_argnums=(0,))
  param_count = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("Model: %s parameters; mesh %s; global batch %d; steps %d -> %d.", f"{param_count:,}",
               dict(mesh.shape), config.train.global_batch_size, step0, config.train.num_steps)

  meta = dict(stage=config.stage, config=config.to_json_best_effort(), vocab_size=tokenizer.vocab_size)
  last_eval: dict[str, float] = {}
  t = config.train
  window_start, window_steps, pending = time.time(), 0, []
  run_start, run_start_step = time.time(), step0
  step = step0
  with _Preemption() as preemption, jax.set_mesh(mesh):
    while step < t.num_steps:
      profile = tuple(t.profile_steps)
      if profile and step == profile[0] and is_chief:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      batch = global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      step += 1
      window_steps += 1
      if profile and step == profile[-1] and is_chief:
        jax.profiler.stop_trace()

      is_last = step == t.num_steps
      do_log = step % t.log_every_steps == 0 or is_last
      do_eval = step % config.eval.every_steps == 0 or is_last
      do_ckpt = step % config.checkpoint.every_steps == 0 or is_last or do_eval
      preempted = preemption.requested.is_set() or manager.reached_preemption(step)
      if do_log or do_ckpt or preempted:
        host = jax.device_get(pending)
        pending = []
        if any(m["finite"] < 1 for m in host):
          bad = next(m for m in host if m["finite"] < 1)
          manager.wait_until_finished()
          raise NonFiniteLossError(
              f"Non-finite loss or gradient near step {step} (loss={float(bad['loss'])}, "
              f"grad_norm={float(bad['grad_norm'])}); the update was skipped and the run stopped. "
              f"Checkpoints already in {manager.directory} are intact (latest: {manager.latest_step()}).")
        if do_log:
          now = time.time()
          steps_per_sec = window_steps / max(now - window_start, 1e-9)
          summary = {k: float(np.mean([m[k] for m in host])) for k in host[-1] if k != "finite"}
          summary.update(steps_per_sec=steps_per_sec,
                         examples_per_sec=steps_per_sec * t.global_batch_size)
          writer.write_scalars(step, summary)
          eta = (t.num_steps - step) / max((step - run_start_step) / (now - run_start), 1e-9)
          print(f"[train] step {step}/{t.num_steps}  loss {summary['loss']:.4f}  "
                f"{steps_per_sec:.2f} steps/s  {summary['examples_per_sec']:.0f} ex/s  ETA {_format_eta(eta)}",
                flush=True)
          window_start, window_steps = time.time(), 0
      metrics_for_ckpt = None
      if do_eval:
        last_eval = evaluate.evaluate_params(model, state.params, config, tokenizer, mesh,
                                             split=config.data.eval_split)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in last_eval.items()})
        if is_chief:
          os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
          _write_json_atomic(os.path.join(workdir, "eval", f"{step}.json"),
                             dict(step=step, split=config.data.eval_split, metrics=last_eval))
        print(f"[eval] step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(last_eval.items())
                                                  if k in evaluate.HEADLINE_METRICS), flush=True)
        metrics_for_ckpt = {k: float(v) for k, v in last_eval.items()}
        window_start = time.time()
      if do_ckpt or preempted:
        if config.checkpoint.best_metric and metrics_for_ckpt is not None:
          if config.checkpoint.best_metric not in metrics_for_ckpt:
            raise KeyError(f"config.checkpoint.best_metric={config.checkpoint.best_metric!r} is not among the "
                           f"evaluation metrics {sorted(metrics_for_ckpt)}")
        checkpointing.save(manager, step, state, data_iter=train_iter, meta=dict(meta, step=step),
                           metrics=metrics_for_ckpt if config.checkpoint.best_metric else None,
                           force=True)
      if preempted:
        logging.warning("Preemption requested: checkpoint at step %d written, exiting.", step)
        print(f"[train] preempted: checkpoint at step {step} saved; rerun the same command to resume.",
              flush=True)
        break
  manager.wait_until_finished()
  manager.close()
  writer.flush()
  writer.close()
  return last_eval


def dummy_batch(config) -> dict[str, np.ndarray]:
  n = 2
  batch = dummy_inputs(config, n)
  batch.update(labels=np.zeros((n, 3), np.float32), class_id=np.zeros((n,), np.int32),
               valid=np.ones((n,), bool))
  return batch


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v if isinstance(v, int | float | str | bool) else str(v)
  return out


def restore_params(config, workdir: str, model, mesh, step: int = -1):
  """Parameters of a checkpoint in ``workdir`` (latest, or ``step``), sharded for ``mesh``."""
  optimizer = make_optimizer(config)
  abstract, shardings = abstract_state_and_shardings(model, config, mesh, optimizer)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
  manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=False, read_only=True)
  try:
    if step >= 0:
      if step not in manager.all_steps():
        raise FileNotFoundError(f"No checkpoint for step {step} in {manager.directory} "
                                f"(available: {sorted(manager.all_steps())})")
      got_step, state, meta = checkpointing.restore_step(manager, step, abstract)
    else:
      restored = checkpointing.restore_latest(manager, abstract)
      if restored is None:
        raise FileNotFoundError(f"No checkpoint in {manager.directory}: train first (--mode=train).")
      got_step, state, meta = restored
  finally:
    manager.close()
  return got_step, state.params, meta


