"""Run set-up shared by training, evaluation, export and inference: mesh, model, data, restored parameters."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from erclap import checkpointing, config_lib, data, models, optim, schema, sharding, state, tokenization, tower_init


def hide_accelerators_from_tensorflow() -> None:
  """clu's writers and TFDS import TensorFlow; keep it off the GPUs/TPUs that JAX owns."""
  try:
    import tensorflow as tf  # optional and heavy: only present when clu / TFDS are installed
  except ImportError:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):
    pass  # already initialised or no such device type


def make_mesh(config):
  """The device mesh of ``config.mesh`` (shape, axis names)."""
  return sharding.make_mesh(config.mesh.shape, config.mesh.axes)


def build_model(config, vocab_size: int | None = None) -> nn.Module:
  """The model of ``config.stage``: the SER model, or the CLAP model with its initial temperature.

  An Odyssey SER directory as ``model.speech_init`` gives the speech backbone, and completes ``config`` in
  place with its pooling, input statistics and head size (``tower_init.speech_init_arch``). A required value
  the config file left unset (``config_lib.required_problems``) is a ConfigError naming it.
  """
  missing = config_lib.required_problems(config)
  if missing:
    raise config_lib.ConfigError("\n".join(missing))
  speech_arch = tower_init.speech_init_arch(config)
  if config.stage == "ser":
    return models.build_ser_model(config.model, speech_arch=speech_arch)
  model = models.build_clap_model(config.model, vocab_size=vocab_size, speech_arch=speech_arch)
  return model.clone(temperature_init=float(config.train.temperature_init))


def _check_batch_sizes(config, mesh) -> None:
  divisor = math.lcm(sharding.batch_size_divisor(mesh), jax.process_count())
  if config.train.global_batch_size % divisor:
    raise ValueError(f"config.train.global_batch_size={config.train.global_batch_size} must be a multiple "
                     f"of {divisor} (batch shards of mesh {dict(mesh.shape)} and {jax.process_count()} processes)")
  micro = config.train.micro_batch_size
  if micro and micro < config.train.global_batch_size and micro % sharding.batch_size_divisor(mesh):
    raise ValueError(f"config.train.micro_batch_size={micro} must be a multiple of the "
                     f"{sharding.batch_size_divisor(mesh)} batch shards of the mesh")


def setup(config, workdir: str):
  """Everything the loop, evaluation and export share.

  Args:
    config: the run's config.
    workdir: the run's directory (unused here; kept so every mode sets up the same way).

  Returns:
    ``(mesh, tokenizer, model)``; the corpus is built (once, by process 0) if it is not there yet.
  """
  del workdir
  hide_accelerators_from_tensorflow()
  mesh = make_mesh(config)
  _check_batch_sizes(config, mesh)
  # Process 0 builds the corpus first (others would race on the same files), then everyone opens it.
  if jax.process_index() == 0:
    data.ensure_dataset(config.data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("erclap-dataset-ready")
    data.ensure_dataset(config.data)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  model = build_model(config, vocab_size=tokenizer.vocab_size)
  return mesh, tokenizer, model


def restore_params(config, workdir: str, model, mesh, step: int = -1):
  """Parameters of a checkpoint in ``workdir``, sharded for ``mesh``.

  Args:
    config: the config the checkpoint was trained with (its tree and shapes are checked against it).
    workdir: the run's directory.
    model: the model ``config`` builds.
    mesh: the device mesh to place the parameters on.
    step: the checkpoint's step; -1 for the latest readable one.

  Returns:
    ``(step, params, meta)``.
  """
  optimizer = optim.make_optimizer(config)
  abstract, shardings = state.abstract_state_and_shardings(model, config, mesh, optimizer)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
  manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=False, read_only=True)
  try:
    if step >= 0:
      if step not in manager.all_steps():
        raise FileNotFoundError(f"No checkpoint for step {step} in {manager.directory} "
                                f"(available: {sorted(manager.all_steps())})")
      got_step, restored, meta = checkpointing.restore_step(manager, step, abstract)
    else:
      latest = checkpointing.restore_latest(manager, abstract)
      if latest is None:
        raise FileNotFoundError(f"No checkpoint in {manager.directory}: train first (--mode=train).")
      got_step, restored, meta = latest
  finally:
    manager.close()
  return got_step, restored.params, meta


def global_batch(host_batch: dict, mesh) -> dict:
  """Host-local numpy batch -> global jax arrays (``schema.STEP_KEYS``) sharded along the batch."""
  out = {}
  for k in schema.STEP_KEYS:
    x = np.asarray(host_batch[k])
    out[k] = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x)
  return out
