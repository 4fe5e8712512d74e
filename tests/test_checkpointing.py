"""Orbax checkpoint handling: round trip, damaged steps set aside, integrity checksums, mismatched trees,
retention."""

import glob
import json
import logging
import os
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from erclap import checkpointing, config_lib, data, input_pipeline, tokenization, tower_init


def _ckpt_config(**kw):
  c = ml_collections.ConfigDict(dict(keep=2, best_metric="", best_mode="max", async_save=False))
  c.update(kw)
  return c


def _state(scale=1.0, width=4):
  return {"step": jnp.asarray(0, jnp.int32),
          "params": {"w": jnp.full((3, width), scale, jnp.float32), "b": jnp.arange(width, dtype=jnp.float32)}}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


# --------------------------------------------------------------------------- a train-state-like tree


@flax.struct.dataclass
class _TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def _optimizer():
  """AdamW on "head" (no decay on 1-D leaves), frozen "tower": the real optimizer's tree shape, MaskedNodes
  included."""
  groups = {"head": optax.adamw(1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
            "tower": optax.set_to_zero()}
  labels = lambda params: {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}
  return optax.chain(optax.clip_by_global_norm(1.0), optax.multi_transform(groups, labels))


def _train_state(step, width=64):
  """A state whose every leaf depends on ``step`` (moments included: one optimizer update is applied)."""
  rng = np.random.default_rng(step)
  params = {"head": {"w": jnp.asarray(rng.standard_normal((32, width)), jnp.float32),
                     "b": jnp.asarray(rng.standard_normal(width), jnp.float32)},
            "tower": {"k": jnp.asarray(rng.standard_normal((8, 8)), jnp.float32)}}
  optimizer = _optimizer()
  opt_state = optimizer.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return _TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state,
                     rng=jax.random.key(step))


def _iterator():
  return iter(grain.MapDataset.range(10).to_iter_dataset())


def _save_steps(workdir, steps=(10, 15, 20), with_iter=True):
  """Saves one checkpoint per step; the iterator has yielded ``step // 5`` elements at step ``step``."""
  manager = checkpointing.make_manager(workdir, _ckpt_config(keep=5), with_data_iter=with_iter)
  it = _iterator() if with_iter else None
  consumed = 0
  for step in steps:
    while with_iter and consumed < step // 5:
      next(it)
      consumed += 1
    checkpointing.save(manager, step, _train_state(step), data_iter=it, meta={"at": step})
  manager.wait_until_finished()
  manager.close()


def _resume(workdir, with_iter=True, width=64):
  """A fresh manager and iterator, as a restarted run builds them; returns (manager, restored, iterator)."""
  manager = checkpointing.make_manager(workdir, _ckpt_config(keep=5), with_data_iter=with_iter)
  it = _iterator() if with_iter else None
  restored = checkpointing.restore_latest(manager, _abstract(_train_state(0, width=width)), data_iter=it)
  return manager, restored, it


def _assert_same_tree(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, a),
               jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, b))


def _is_key(x):
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _corrupt_dirs(workdir):
  return sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, "checkpoints", "*.corrupt-*")))


def _state_files(workdir, step):
  root = os.path.join(workdir, "checkpoints", str(step), "state")
  return [p for p in glob.glob(os.path.join(root, "**"), recursive=True) if os.path.isfile(p)]


def _assert_fell_back_to_15(workdir, caplog, *, words):
  """Restart: step 15 is restored (state, meta, iterator position), step 20 is set aside and its number
  can be saved again."""
  with caplog.at_level(logging.WARNING):
    manager, restored, it = _resume(workdir)
  step, state, meta = restored
  assert step == 15 and meta == {"at": 15}
  _assert_same_tree(state, _train_state(15))
  assert next(it) == 3  # 15 // 5 elements were consumed before the save
  assert [d.split(".corrupt-")[0] for d in _corrupt_dirs(workdir)] == ["20"]
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "20"))
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert "step 20" in messages and "20.corrupt-" in messages and "resuming from step 15" in messages
  for word in words:
    assert word in messages
  assert sorted(manager.all_steps()) == [10, 15]
  # The run goes on and reaches step 20 again: that save must succeed.
  assert checkpointing.save(manager, 20, _train_state(20), data_iter=it, meta={"at": 20})
  manager.wait_until_finished()
  manager.close()
  _, restored, _ = _resume(workdir)
  assert restored[0] == 20
  _assert_same_tree(restored[1], _train_state(20))


# --------------------------------------------------------------------------- round trip and retention


def test_round_trip_and_meta(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(), with_data_iter=False)
  state = _state(2.5)
  checkpointing.save(manager, 7, state, meta={"stage": "clap"})
  manager.wait_until_finished()
  step, restored, meta = checkpointing.restore_latest(manager, _abstract(state))
  assert step == 7 and meta == {"stage": "clap"}
  np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 4), 2.5, np.float32))
  manager.close()


def test_train_state_round_trip_with_iterator(tmp_path):
  _save_steps(str(tmp_path))
  manager, (step, state, meta), it = _resume(str(tmp_path))
  assert step == 20 and meta == {"at": 20}
  _assert_same_tree(state, _train_state(20))
  assert next(it) == 4
  assert _corrupt_dirs(str(tmp_path)) == []
  manager.close()


def test_no_checkpoint_returns_none(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(), with_data_iter=False)
  assert checkpointing.restore_latest(manager, _abstract(_state())) is None


def test_keeps_last_n_plus_best(tmp_path):
  config = _ckpt_config(keep=2, best_metric="score")
  manager = checkpointing.make_manager(str(tmp_path), config, with_data_iter=False)
  scores = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4}
  for step, score in scores.items():
    checkpointing.save(manager, step, _state(float(step)), metrics={"score": score})
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 4, 5]  # best (2) + the last two


def test_best_checkpoint_reads_metrics_saved_under_earlier_names(tmp_path):
  # Steps 1-3 were saved by a release that called the anchor-wise statistic "aoc_mean" and the paper's AOC
  # "retrieval_tau_arousal"; they are ranked under today's names.
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(keep=1, best_metric="aoc"),
                                       with_data_iter=False)
  old = {1: 0.2, 2: 0.8, 3: 0.5}
  for step, value in old.items():
    checkpointing.save(manager, step, _state(float(step)), metrics={"retrieval_tau_arousal": value,
                                                                    "aoc_mean": 1.0 - value})
  checkpointing.save(manager, 4, _state(4.0), metrics={"aoc": 0.6, "anchor_tau_arousal": 0.1})
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 4]  # best by the paper's AOC (2: 0.8) + the last one
  manager.close()
  manager = checkpointing.make_manager(str(tmp_path / "other"), _ckpt_config(keep=1, best_metric="aoc_voc_mean"),
                                       with_data_iter=False)
  checkpointing.save(manager, 1, _state(1.0), metrics={"aoc_mean": 0.9})  # lacks the metric: never the best
  checkpointing.save(manager, 2, _state(2.0), metrics={"aoc_voc_mean": 0.1})
  checkpointing.save(manager, 3, _state(3.0), metrics={"aoc_voc_mean": 0.0})
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 3]
  manager.close()


# --------------------------------------------------------------------------- damaged newest step


def test_damaged_latest_falls_back_to_previous_with_warning(tmp_path, caplog):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(keep=3), with_data_iter=False)
  checkpointing.save(manager, 1, _state(1.0))
  checkpointing.save(manager, 2, _state(2.0))
  manager.wait_until_finished()
  # Damage step 2: truncate every file of its state item.
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(0)
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(keep=3), with_data_iter=False)
  with caplog.at_level(logging.WARNING):
    step, restored, _ = checkpointing.restore_latest(manager, _abstract(_state()))
  assert step == 1
  np.testing.assert_array_equal(restored["params"]["w"], np.ones((3, 4), np.float32))
  assert any("step 2" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_truncated_largest_state_file_falls_back_and_moves_step_aside(tmp_path, caplog):
  workdir = str(tmp_path)
  _save_steps(workdir)
  largest = max(_state_files(workdir, 20), key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  _assert_fell_back_to_15(workdir, caplog, words=["unreadable"])


def test_deleted_state_metadata_falls_back(tmp_path, caplog):
  workdir = str(tmp_path)
  _save_steps(workdir)
  os.remove(os.path.join(workdir, "checkpoints", "20", "state", "_METADATA"))
  _assert_fell_back_to_15(workdir, caplog, words=["metadata"])


def test_deleted_data_iterator_file_falls_back(tmp_path, caplog):
  workdir = str(tmp_path)
  _save_steps(workdir)
  os.remove(os.path.join(workdir, "checkpoints", "20", "data_iter", "process_0-of-1.json"))
  _assert_fell_back_to_15(workdir, caplog, words=["data iterator", "process_0-of-1.json"])


def test_flipped_bytes_fail_the_integrity_check(tmp_path, caplog):
  workdir = str(tmp_path)
  _save_steps(workdir)
  # The largest array data file: the read succeeds, only the values are wrong.
  largest = max((p for p in _state_files(workdir, 20) if f"{os.sep}d{os.sep}" in p), key=os.path.getsize)
  with open(largest, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    f.seek(0)
    f.write(data)
  _assert_fell_back_to_15(workdir, caplog, words=["integrity check", "params/head/w"])


def test_integrity_check_names_the_changed_leaf(tmp_path, caplog):
  workdir = str(tmp_path)
  _save_steps(workdir, steps=(10, 20), with_iter=False)
  # A stored checksum that disagrees with the stored values: exactly what changed bytes look like.
  meta_file = os.path.join(workdir, "checkpoints", "20", "meta", "metadata")
  with open(meta_file) as f:
    meta = json.load(f)
  leaf = meta[checkpointing.INTEGRITY_KEY]["leaves"]["opt_state/1/inner_states/head/inner_state/0/nu/head/w"]
  leaf["sum"] = f"{int(leaf['sum'], 16) ^ 1:016x}"
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  manager = checkpointing.make_manager(workdir, _ckpt_config(keep=5), with_data_iter=False, read_only=True)
  with pytest.raises(checkpointing.CheckpointDamagedError, match="integrity check.*inner_state/0/nu/head/w"):
    checkpointing.restore_step(manager, 20, _abstract(_train_state(0)))
  # A reader (read-only manager) skips the step but leaves it where it is.
  with caplog.at_level(logging.WARNING):
    step, _, _ = checkpointing.restore_latest(manager, _abstract(_train_state(0)))
  assert step == 10 and _corrupt_dirs(workdir) == []
  assert any("left in place" in r.getMessage() for r in caplog.records)
  manager.close()


def test_checkpoint_without_checksums_restores_with_warning(tmp_path, caplog):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(), with_data_iter=False)
  state = _train_state(3)
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"a": 1})))
  manager.wait_until_finished()
  with caplog.at_level(logging.WARNING):
    step, restored, meta = checkpointing.restore_latest(manager, _abstract(_train_state(0)))
  assert step == 3 and meta == {"a": 1}
  _assert_same_tree(restored, state)
  assert any("without checksums" in r.getMessage() for r in caplog.records)


def test_only_step_unreadable_is_an_error_and_nothing_moves(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, steps=(10,), with_iter=False)
  data_files = [p for p in _state_files(workdir, 10) if f"{os.sep}d{os.sep}" in p]
  for path in data_files:
    with open(path, "r+b") as f:
      f.truncate(1)
  with pytest.raises(RuntimeError, match="nothing was moved"):
    _resume(workdir, with_iter=False)
  assert _corrupt_dirs(workdir) == [] and os.path.isdir(os.path.join(workdir, "checkpoints", "10"))


def test_only_step_without_metadata_is_set_aside(tmp_path, capsys):
  workdir = str(tmp_path)
  _save_steps(workdir, steps=(10,), with_iter=False)
  os.remove(os.path.join(workdir, "checkpoints", "10", "state", "_METADATA"))
  manager, restored, _ = _resume(workdir, with_iter=False)
  assert "no intact step is left" in capsys.readouterr().out
  assert restored is None and manager.all_steps() == []
  manager.close()
  assert [d.split(".corrupt-")[0] for d in _corrupt_dirs(workdir)] == ["10"]


# --------------------------------------------------------------------------- config mismatch


def test_mismatched_tree_is_a_clear_error(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(), with_data_iter=False)
  checkpointing.save(manager, 1, _state(1.0, width=4))
  manager.wait_until_finished()
  want = _abstract(_state(width=5))
  want["params"]["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
  with pytest.raises(checkpointing.CheckpointMismatchError) as info:
    checkpointing.restore_latest(manager, want)
  message = str(info.value)
  assert "shape mismatch" in message and "params/w" in message and "(3, 4)" in message
  assert "missing in checkpoint" in message and "extra" in message


def test_shape_mismatch_of_train_state_names_paths_and_moves_nothing(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir)
  with pytest.raises(checkpointing.CheckpointMismatchError) as info:
    _resume(workdir, width=48)  # as if the config's head width changed
  message = str(info.value)
  assert "shape mismatch: params/head/w: checkpoint (32, 64) vs config (32, 48)" in message
  assert "shape mismatch: opt_state/1/inner_states/head/inner_state/0/mu/head/b: checkpoint (64,) vs config (48,)" \
      in message
  assert "missing" not in message and "unexpected" not in message  # same tree, MaskedNodes and key included
  assert _corrupt_dirs(workdir) == []
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "15", "20"]


def _pipeline_checkpoint(workdir, config, tokenizer, batches=2):
  """Step 1 saved with the real training iterator of ``config`` after ``batches`` batches; returns the next one."""
  it = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  for _ in range(batches):
    next(it)
  manager = checkpointing.make_manager(workdir, _ckpt_config(), with_data_iter=True)
  checkpointing.save(manager, 1, _state(), data_iter=it, meta={"at": 1})
  manager.wait_until_finished()
  manager.close()
  return next(it)


def _resume_pipeline(workdir, config, tokenizer):
  it = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  manager = checkpointing.make_manager(workdir, _ckpt_config(), with_data_iter=True)
  try:
    return checkpointing.restore_latest(manager, _abstract(_state()), data_iter=it), it
  finally:
    manager.close()


@pytest.mark.parametrize("change, says", [
    ({"seed": 1}, "config.data.seed (the shuffling seed; -1: config.seed): checkpoint 0, this run 1"),
    ({"train.global_batch_size": 8}, "config.train.global_batch_size: checkpoint 16, this run 8"),
    ({"data.embedded.num_train": 40}, "the number of training records (the corpus or config.data.train_split "
                                      "changed): checkpoint 48, this run 40"),
])
def test_readable_checkpoint_of_other_data_settings_names_them(tiny_embedded, tmp_path, change, says):
  config, data_dir = tiny_embedded
  if "data.embedded.num_train" in change:
    data.ensure_dataset(config_lib.apply_overrides(config, change).data)  # a corpus of its own
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  workdir = str(tmp_path / "run")
  expected = _pipeline_checkpoint(workdir, config, tokenizer)
  with pytest.raises(checkpointing.CheckpointMismatchError) as info:
    _resume_pipeline(workdir, config_lib.apply_overrides(config, change), tokenizer)
  message = str(info.value)
  assert says in message and "other data settings" in message and "nothing was moved" in message
  assert "storage system" not in message
  assert _corrupt_dirs(workdir) == [] and os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
  (step, _, meta), it = _resume_pipeline(workdir, config, tokenizer)  # the checkpoint's own settings resume it
  assert step == 1 and meta == {"at": 1}
  np.testing.assert_array_equal(next(it)["input_ids"], expected["input_ids"])


def test_paths_inside_the_workdir_are_stored_relative_to_it(tmp_path):
  workdir = str(tmp_path / "run")
  config = {"model": {"speech_init": f"{workdir}/stage1", "text_init": "/models/minilm"},
            "data": {"speech_features": f"{workdir}/speech_features", "data_dir": f"{workdir}x/corpus"}}
  manager = checkpointing.make_manager(workdir, _ckpt_config(), with_data_iter=False)
  checkpointing.save(manager, 1, _state(), meta={"config": json.dumps(config), "where": workdir})
  manager.wait_until_finished()
  manager.close()
  stored = (tmp_path / "run" / "checkpoints" / "1" / "meta" / "metadata").read_text()
  assert workdir + "/" not in stored and f'"{workdir}"' not in stored and f"{workdir}x/corpus" in stored
  moved = str(tmp_path / "moved")
  os.rename(workdir, moved)
  manager = checkpointing.make_manager(moved, _ckpt_config(), with_data_iter=False)
  _, _, meta = checkpointing.restore_latest(manager, _abstract(_state()))
  manager.close()
  assert meta["where"] == moved and json.loads(meta["config"]) == {
      "model": {"speech_init": f"{moved}/stage1", "text_init": "/models/minilm"},
      "data": {"speech_features": f"{moved}/speech_features", "data_dir": f"{workdir}x/corpus"}}
  assert tower_init.read_workdir_config(moved).model.speech_init == f"{moved}/stage1"


def test_stored_leaf_shapes_read_from_the_step_itself(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, steps=(10,), with_iter=False)
  manager = checkpointing.make_manager(workdir, _ckpt_config(), with_data_iter=False, read_only=True)
  shapes = checkpointing.stored_leaf_shapes(manager, 10)
  assert shapes["params/head/w"] == (32, 64) and shapes["rng"] == (2,) and shapes["step"] == ()
  assert shapes["opt_state/1/inner_states/head/inner_state/0/nu/head/b"] == (64,)


# --------------------------------------------------------------------------- checksums against a reference


def _fmix_reference(h):
  h = h ^ (h >> 16)
  h = (h * 0x85EBCA6B) & 0xFFFFFFFF
  h = h ^ (h >> 13)
  h = (h * 0xC2B2AE35) & 0xFFFFFFFF
  return h ^ (h >> 16)


def _checksum_reference(array: np.ndarray) -> str:
  """Naive host version: the row-major bytes as little-endian words of the dtype's size, widened."""
  word = {1: np.uint8, 2: np.uint16}.get(array.dtype.itemsize, np.uint32)
  words = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.dtype(word).newbyteorder("<"))
  words = words.astype(np.uint64)
  position = np.arange(words.size, dtype=np.uint64)
  sums = [int(_fmix_reference(words ^ _fmix_reference((position + seed) & 0xFFFFFFFF)).sum() & 0xFFFFFFFF)
          for seed in checkpointing.CHECKSUM_SEEDS]
  return "".join(f"{s:08x}" for s in sums)


def test_checksums_match_a_reference_and_ignore_sharding(devices):
  rng = np.random.default_rng(0)
  mesh = Mesh(np.asarray(devices), ("x",))
  tree = {"f32": rng.standard_normal((8, 6)).astype(np.float32),
          "bf16": rng.standard_normal((4, 5)).astype(jnp.bfloat16),
          "i32": rng.integers(-9, 9, (3,)).astype(np.int32),
          "mask": np.array([True, False, True]),
          "scalar": np.float32(1.5)}
  device_tree = jax.tree.map(jnp.asarray, tree)
  device_tree["key"] = jax.random.key(4)
  sharded = dict(device_tree, f32=jax.device_put(tree["f32"], NamedSharding(mesh, PartitionSpec("x"))))
  sums = checkpointing.state_checksums(device_tree)
  assert checkpointing.state_checksums(sharded) == sums
  for name, array in tree.items():
    assert sums[name]["sum"] == _checksum_reference(np.asarray(array)), name
  assert sums["key"]["sum"] == _checksum_reference(np.asarray(jax.random.key_data(device_tree["key"])))
  assert sums["bf16"]["dtype"] == "bfloat16" and sums["key"]["dtype"].startswith("key<")
  # One flipped bit, or two words swapped, changes the sum.
  flipped = tree["f32"].copy()
  flipped.view(np.uint32)[3, 2] ^= 1 << 7
  swapped = tree["f32"].copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  for changed in (flipped, swapped):
    assert checkpointing.state_checksums({"f32": changed})["f32"] != sums["f32"]
