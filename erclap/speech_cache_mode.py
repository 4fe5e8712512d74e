"""--mode=cache_speech: compute the frozen speech representation of every clip once (``erclap.speech_cache``).

A cache stands for a wholly frozen speech path (``erclap.trainable``; the commands: docs/speech_cache.md);
``configs/demo.py`` runs this mode as a step of its two-stage recipe (``erclap.recipe``), with the same checks.

Which weights: the workdir's latest checkpoint when it has one (e.g. to export a trained model through the
cache); otherwise the parameters a training run of this config starts from at step 0 (``config.seed``, with
``model.speech_init`` loaded: a Hugging Face WavLM / Odyssey directory or a stage-1 workdir), so that a run
started from this config trains on exactly these features. Either way they are what ``model.speech_init`` gives
now: a checkpoint trained on another model from there (a two-stage run's stage 1 trained again since) is refused,
and so is a stage 1 that has not finished (``erclap.tower_init``). What is cached: everything the CLAP model computes
from audio before its projection (tower -> pooling -> SER head for ``ser_hidden`` / ``ser_output``), in
inference mode, on the evaluation crop (centre crop of ``data.eval_max_seconds``, or ``data.max_seconds`` when
that is 0), for the train, eval, test and export splits. Where: ``config.data.speech_features``, or
``<workdir>/speech_features`` when that is "" (``erclap.speech_cache.directory``).

The features are computed from audio (``speech_source.AUDIO``, asked for explicitly: the config names the cache
being written). Batches are sharded over the mesh like evaluation; every process computes its rows, all take part
in every gather, process 0 writes each row at its record index (cache row i = corpus record i, with any process
count), with the record's labels and class beside it (``speech_source.CACHED_COLUMNS``): training and evaluation
on the cache then never read the corpus records. A split is written under temporary names and renamed when
complete; a rerun skips the splits already complete for the same fingerprint, and a directory made for another
fingerprint is refused.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from erclap import (
    checkpointing,
    config_lib,
    distributed,
    evaluate,
    input_pipeline,
    members,
    optim,
    progress,
    resolve,
    runtime,
    speech_source,
    state,
    tower_init,
)
from erclap.speech_cache import fingerprint as cache_fingerprint
from erclap.speech_cache import store

PROGRESS_EVERY_SECONDS = 10.0


def splits_to_cache(config) -> list[str]:
  """The configured train, eval, test and export splits (each once, in that order)."""
  d = config.data
  return list(dict.fromkeys([d.train_split, d.eval_split, d.test_split, *config.export.splits]))


def representation_params(config, workdir: str, model, mesh) -> tuple[dict, str]:
  """The parameters to cache from: the workdir's latest checkpoint, else those of a training run at step 0. In a
  program with members (``erclap.members``) the speech path a cache stands for is frozen and shared: member 0's
  tree holds it.

  A checkpoint's frozen parts must be what ``model.speech_init`` gives now (``tower_init.check_loaded_unchanged``:
  a two-stage run's stage 1 trained again since is refused, never cached from the old weights).

  Returns:
    ``(params, description of where they come from)``.
  """
  load_towers = functools.partial(tower_init.load_pretrained_towers, config=config)
  train_state, _ = state.create_train_state(model, config, mesh, optim.make_optimizer(config),
                                            jax.random.key(config.seed), load_towers=load_towers)
  if os.path.isdir(checkpointing.checkpoint_dir(workdir)):
    manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=False, read_only=True)
    try:
      has_steps = bool(manager.all_steps())
    finally:
      manager.close()
    if has_steps:
      member = 0 if members.count(config) else None
      step, params, _ = runtime.restore_params(config, workdir, model, mesh, member=member)
      tower_init.check_loaded_unchanged(config, train_state.params, params, step=step,
                                        directory=checkpointing.checkpoint_dir(workdir))
      return params, f"the checkpoint of {workdir} at step {step}"
  source = f"model.speech_init={config.model.speech_init!r}" if config.model.speech_init else "random init"
  return (state.member_params(config, train_state.params, 0),
          f"the step-0 parameters of this config ({source}, seed {config.seed})")


def cache_split(embedder: evaluate.Embedder, params, config, split: str, directory: str, fingerprint: dict, *,
                on_batch: Callable[[int, int], None] | None = None) -> int:
  """Computes and writes the representation of every clip of ``split``; returns the clip count.

  Args:
    embedder: the model's Embedder reading audio (``source=speech_source.AUDIO``).
    params: its parameters.
    config: the run's config.
    split: the split to cache.
    directory: the cache directory (``store.prepare_directory`` done).
    fingerprint: the directory's fingerprint.
    on_batch: called after each written batch with (batch index, clips written so far), on every process.

  Returns:
    The number of clips written. On any exception nothing of the split stays under its final names.
  """
  divisor = math.lcm(embedder.divisor, jax.process_count())
  if config.eval.batch_size % divisor:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple of {divisor} (the mesh's "
                     f"{embedder.divisor} batch shards and {jax.process_count()} processes)")
  iterator = input_pipeline.create_eval_iterator(config, embedder.tokenizer, split, source=embedder.source,
                                                 batch_size=config.eval.batch_size // jax.process_count())
  total = len(iterator.source)
  chief = jax.process_index() == 0
  writer = store.SplitWriter(directory, split, fingerprint, total, speech_source.CACHED_COLUMNS) if chief else None
  start = last_print = time.time()
  done = 0
  try:
    for b, batch in enumerate(iterator):
      rows = embedder.representation(params, batch)
      keep = embedder.gather(np.asarray(batch["valid"])).astype(bool)
      ids = [i for i, k in zip(embedder.gather_strings(batch["id"]), keep, strict=True) if k]
      # Each process reads a contiguous slice of the split: a gathered batch is not a contiguous run of
      # records, so every row is written at its record index (cache row i = corpus record i).
      at = embedder.gather(iterator.batch_rows(b))[keep]
      columns = speech_source.cache_columns(embedder.gather(np.asarray(batch["labels"]))[keep],
                                            embedder.gather(np.asarray(batch["class_id"]))[keep])
      if writer is not None:
        writer.write(rows[keep], ids, columns, at=at)
      done += len(ids)
      if on_batch is not None:
        on_batch(b, done)
      now = time.time()
      if chief and (now - last_print >= PROGRESS_EVERY_SECONDS or done == total):
        rate = done / max(now - start, 1e-9)
        progress.print_line(f"[cache_speech] {split}: {done}/{total} clips  {rate:.1f} clips/s  "
                            f"ETA {progress.format_eta((total - done) / max(rate, 1e-9))}")
        last_print = now
  except BaseException:
    if writer is not None:
      writer.abort()
    raise
  if writer is not None:
    writer.close()
  return done


def cache_speech_features(config, workdir: str) -> str:
  """--mode=cache_speech: writes the speech-feature cache of ``splits_to_cache(config)``; returns its directory.

  Args:
    config: resolved for ``cache_speech`` (``erclap.resolve``: ``data.speech_features`` is the cache to write), or
      a recipe run's config that reads the cache this writes; either way it passes the mode's checks
      (``resolve.mode_problems``: a cache must be able to stand for its speech path).
    workdir: the run's directory (its latest checkpoint, if any, gives the weights).
  """
  resolve.require(config, "cache_speech")
  config_lib.raise_problems(resolve.mode_problems(config, "cache_speech"), "--mode=cache_speech")
  directory = config.data.speech_features
  mesh, tokenizer, model = runtime.setup(config)
  params, source = representation_params(config, workdir, model, mesh)
  fingerprint = cache_fingerprint.representation_fingerprint(config, params)
  chief = jax.process_index() == 0
  if chief:
    store.prepare_directory(directory, fingerprint)
    progress.print_line(f"[cache_speech] {fingerprint['representation']} representation "
                        f"({fingerprint['width']} floats per clip) of {source}, {fingerprint['crop_seconds']} s "
                        f"centre crops -> {directory}")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("erclap-speech-cache-ready")
  embedder = evaluate.Embedder(model, config, mesh, tokenizer, source=speech_source.AUDIO)
  for split in splits_to_cache(config):
    if distributed.agree(chief and store.split_is_cached(directory, split, fingerprint)):
      if chief:
        progress.print_line(f"[cache_speech] {split}: already cached, skipped")
      continue
    cache_split(embedder, params, config, split, directory, fingerprint)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("erclap-speech-cache-written")
  if chief:
    progress.print_line(f"[cache_speech] done: train, evaluate or export with "
                        f"--config.data.speech_features={directory}")
  return directory
