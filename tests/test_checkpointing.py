"""Orbax checkpoint handling: round trip, damaged latest checkpoint, mismatched trees, retention."""

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from erclap import checkpointing, pretrained


def _ckpt_config(**kw):
  c = ml_collections.ConfigDict(dict(keep=2, best_metric="", best_mode="max", async_save=False))
  c.update(kw)
  return c


def _state(scale=1.0, width=4):
  return {"step": jnp.asarray(0, jnp.int32),
          "params": {"w": jnp.full((3, width), scale, jnp.float32), "b": jnp.arange(width, dtype=jnp.float32)}}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def test_round_trip_and_meta(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(), with_data_iter=False)
  state = _state(2.5)
  checkpointing.save(manager, 7, state, meta={"stage": "clap"})
  manager.wait_until_finished()
  step, restored, meta = checkpointing.restore_latest(manager, _abstract(state))
  assert step == 7 and meta == {"stage": "clap"}
  np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 4), 2.5, np.float32))
  manager.close()


def test_no_checkpoint_returns_none(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(), with_data_iter=False)
  assert checkpointing.restore_latest(manager, _abstract(_state())) is None


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


def test_mismatched_tree_is_a_clear_error(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), _ckpt_config(), with_data_iter=False)
  checkpointing.save(manager, 1, _state(1.0, width=4))
  manager.wait_until_finished()
  want = _abstract(_state(width=5))
  want["params"]["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
  with pytest.raises(checkpointing.CheckpointMismatchError) as info:
    checkpointing.restore_latest(manager, want)
  message = str(info.value)
  assert "shape mismatch" in message and "['w']" in message and "(3, 4)" in message
  assert "missing in checkpoint" in message and "extra" in message


def test_keeps_last_n_plus_best(tmp_path):
  config = _ckpt_config(keep=2, best_metric="score")
  manager = checkpointing.make_manager(str(tmp_path), config, with_data_iter=False)
  scores = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4}
  for step, score in scores.items():
    checkpointing.save(manager, step, _state(float(step)), metrics={"score": score})
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 4, 5]  # best (2) + the last two


def test_pretrained_tower_mismatch_lists_differences():
  want = {"layer": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)}}
  have = {"layer": {"kernel": np.zeros((4, 6))}, "other": {"x": np.zeros(1)}}
  with pytest.raises(pretrained.TowerMismatchError) as info:
    pretrained._check_same_tree("speech_tower", "config.model.speech_init='x'", want, have)
  text = str(info.value)
  assert "bias" in text and "(4, 6)" in text and "other" in text
