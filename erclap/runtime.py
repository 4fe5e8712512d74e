"""Run set-up shared by training, evaluation, export and inference: mesh, model, data, restored parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from erclap import checkpointing, data, optim, sharding, stages, state, tokenization, tower_init
from erclap.speech_source import SpeechSource
from erclap.tensorflow_devices import hide_accelerators_from_tensorflow


def make_mesh(config):
  """The device mesh of ``config.mesh`` (shape, axis names)."""
  return sharding.make_mesh(config.mesh.shape, config.mesh.axes)


def build_model(config, vocab_size: int | None = None) -> nn.Module:
  """The model of the config's stage (``erclap.stages``): the SER model, or the CLAP model with its initial
  temperature. An Odyssey SER directory as ``model.speech_init`` gives the speech backbone's architecture
  (``tower_init.speech_init_arch``); the rest of what it fixes is in the config already (``erclap.resolve``)."""
  return stages.of(config).build(config.model, vocab_size, tower_init.speech_init_arch(config.model),
                                 config.train.temperature_init)


def setup(config):
  """Everything the loop, evaluation and export share.

  Args:
    config: the run's resolved config (``erclap.resolve``: validated against the devices).

  Returns:
    ``(mesh, tokenizer, model)``; the corpus is built (once, by process 0) if it is not there yet.
  """
  hide_accelerators_from_tensorflow()
  mesh = make_mesh(config)
  # Process 0 builds the corpus first (others would race on the same files), then everyone opens it.
  if jax.process_index() == 0:
    data.ensure_dataset(config.data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("erclap-dataset-ready")
    data.ensure_dataset(config.data)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens,
                                           descriptions=config.data.descriptions)
  model = build_model(config, vocab_size=tokenizer.vocab_size)
  return mesh, tokenizer, model


def restore_params(config, workdir: str, model, mesh, step: int = -1, member: int | None = None):
  """Parameters of a checkpoint in ``workdir``, sharded for ``mesh``.

  Args:
    config: the config the checkpoint was trained with (its tree and shapes are checked against it).
    workdir: the run's directory.
    model: the model ``config`` builds.
    mesh: the device mesh to place the parameters on.
    step: the checkpoint's step; -1 for the latest readable one.
    member: in a program with members (``erclap.members``), member ``member``'s parameters (a standalone run's
      tree, ``state.member_params``); None: the stacked parameters of all members.

  Returns:
    ``(step, params, meta)``.
  """
  abstract, _ = state.abstract_sharded_state(model, config, mesh, optim.make_optimizer(config))
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
  params = restored.params if member is None else state.member_params(config, restored.params, member)
  return got_step, params, meta


def global_batch(host_batch: dict, mesh, source: SpeechSource) -> dict:
  """Host-local numpy batch -> global jax arrays of its train-step keys (``source.step_keys``) sharded along the
  batch."""
  out = {}
  for k in source.step_keys:
    x = np.asarray(host_batch[k])
    out[k] = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x)
  return out
