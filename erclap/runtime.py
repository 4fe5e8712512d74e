"""Run set-up shared by training, evaluation, export and inference: mesh, model, data, restored parameters."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

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


def setup(config, workdir: str):
  """Everything the loop, evaluation and export share.

  Args:
    config: the run's config.
    workdir: the run's directory (unused here; kept so every mode sets up the same way).

  Returns:
    ``(mesh, tokenizer, model)``; the corpus is built (once, by process 0) if it is not there yet.

  Raises:
    config_lib.ConfigError: the config does not fit the devices (mesh shape, batch sizes), checked before
      the corpus or any model is built.
  """
  del workdir
  config_lib.validate_for_devices(config, jax.device_count(), jax.process_count(), jax.local_device_count())
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
  """Host-local numpy batch -> global jax arrays (its step keys, ``schema.step_keys_of``) sharded along the
  batch."""
  out = {}
  for k in schema.step_keys_of(host_batch):
    x = np.asarray(host_batch[k])
    out[k] = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, x.ndim), x)
  return out


def agree_or_raise(problem: str | None, error: type[Exception] = ValueError) -> None:
  """Process 0's verdict for every process: raises ``error`` everywhere if process 0 found ``problem``.

  For checks that only process 0 can make (the files it alone writes): every process calls this at the
  same point, so all of them stop together instead of the others waiting in the next collective.
  """
  refused = problem is not None
  if jax.process_count() > 1:
    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refused)))
  if refused:
    raise error(problem if problem is not None else "process 0 refused to go on (its log names the reason)")


class StopRequested(BaseException):
  """SIGTERM or SIGINT asked a run to stop (raised in the main thread, so ``finally`` blocks run).

  A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

  def __init__(self, what: str, signum: int):
    super().__init__(f"{what} stopped by {signal.Signals(signum).name}; only complete outputs are kept")
    self.signum = signum


# Seconds the main thread gets to unwind after SIGTERM/SIGINT before the process is ended from outside
# Python: a Python handler only runs between bytecodes, never while a compile or a collective blocks.
SIGNAL_GRACE_SECONDS = 5.0


@contextlib.contextmanager
def stop_on_signals(what: str, on_exit: Callable[[], None] | None = None,
                    grace: float = SIGNAL_GRACE_SECONDS) -> Iterator[None]:
  """SIGTERM / SIGINT end the block promptly with a clear message; for runs that write only atomic outputs.

  The first signal raises ``StopRequested`` in the main thread (outputs are written atomically, so the
  unwinding leaves complete files or none). A watchdog thread, woken through the signal wakeup fd, ends
  the process with status 128 + signal after ``grace`` seconds if the main thread is stuck in native
  code (a compile, a collective whose peer is gone); a second signal ends it at once. ``on_exit`` (e.g.
  releasing the workdir lock) runs before such a hard exit. Outside the main thread this is a no-op.

  Args:
    what: the run's name, for the message (``export``, ``eval``...).
    on_exit: called (from the watchdog thread) before a hard exit.
    grace: seconds between the first signal and the hard exit.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []

  def handler(signum, frame):
    del frame
    received.append(signum)
    raise StopRequested(what, signum)

  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  watchdog = threading.Thread(target=_watchdog, args=(read_fd, handler, received, what, on_exit, grace), daemon=True,
                              name="erclap-signal-watchdog")
  watchdog.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    for s, h in previous.items():
      signal.signal(s, h)
    if not received:  # after a signal the watchdog stays armed until the process has exited
      os.close(write_fd)  # wakes the watchdog with end-of-file


def _watchdog(read_fd: int, handler, received: list, what: str, on_exit, grace: float) -> None:
  """Waits for signal numbers on the wakeup fd; after one of ours, ends the process if it outlives ``grace``."""
  deadline, first = None, None
  while True:
    if deadline is not None and not _readable(read_fd, max(deadline - time.monotonic(), 0.0)):
      _hard_exit(what, first, on_exit, f"still running {grace:.0f} s after it")
    raw = os.read(read_fd, 64)
    if not raw:  # the block ended normally
      os.close(read_fd)
      return
    # Ours: our handler is installed (it may not have run yet) or has already run (and been uninstalled).
    ours = [n for n in raw if n in (signal.SIGTERM, signal.SIGINT) and (received or signal.getsignal(n) is handler)]
    if not ours:
      continue
    if deadline is not None:
      _hard_exit(what, ours[-1], on_exit, "a second signal")
    deadline, first = time.monotonic() + grace, ours[0]


def _readable(fd: int, timeout: float) -> bool:
  return bool(select.select([fd], [], [], timeout)[0])


def _hard_exit(what: str, signum: int, on_exit, why: str) -> None:
  print(f"[{what}] stopped by {signal.Signals(signum).name} ({why}); only complete outputs are kept.",
        file=sys.stderr, flush=True)
  if on_exit is not None:
    with contextlib.suppress(Exception):
      on_exit()
  os._exit(128 + signum)
