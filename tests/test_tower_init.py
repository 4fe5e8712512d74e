"""Tower initialisation: weights of an ERCLAP workdir put in place on sharded parameters; mismatches listed."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import train_helpers as th

from erclap import checkpointing, optim, runtime, state, tokenization, tower_init


def test_tower_mismatch_lists_differences():
  want = {"layer": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)}}
  have = {"layer": {"kernel": np.zeros((4, 6))}, "other": {"x": np.zeros(1)}}
  with pytest.raises(tower_init.TowerMismatchError) as info:
    tower_init._check_same_tree("speech_tower", "config.model.speech_init='x'", want, have)
  text = str(info.value)
  assert "bias" in text and "(4, 6)" in text and "other" in text


@pytest.mark.slow
def test_speech_tower_from_a_workdir_lands_sharded_before_the_optimizer(devices, tmp_path):
  config = th.tiny_config("unused", **{"mesh.shape": (2, 2, 2)})
  mesh = runtime.make_mesh(config)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  optimizer = optim.make_optimizer(config)
  source, _ = state.create_train_state(model, config, mesh, optimizer, jax.random.key(0))
  workdir = str(tmp_path / "source")
  manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=False)
  checkpointing.save(manager, 3, source, meta={"step": 3}, force=True)
  manager.wait_until_finished()
  manager.close()

  config.model.speech_init = workdir
  load = functools.partial(tower_init.load_pretrained_towers, config=config)
  loaded, shardings = state.create_train_state(model, config, mesh, optimizer, jax.random.key(1), load_towers=load)
  fresh, _ = state.create_train_state(model, config, mesh, optimizer, jax.random.key(1))
  want = jax.device_get(source.params["speech_tower"])
  got = loaded.params["speech_tower"]
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(jax.device_get(got)), strict=True):
    np.testing.assert_array_equal(a, b)
  for leaf, s in zip(jax.tree.leaves(got), jax.tree.leaves(shardings.params["speech_tower"]), strict=True):
    assert leaf.sharding.is_equivalent_to(s, leaf.ndim)
  for a, b in zip(jax.tree.leaves(jax.device_get(fresh.params["text_tower"])),
                  jax.tree.leaves(jax.device_get(loaded.params["text_tower"])), strict=True):
    np.testing.assert_array_equal(a, b)  # the other tower keeps its fresh initialisation
  fresh_speech = jax.tree.leaves(jax.device_get(fresh.params["speech_tower"]))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), fresh_speech, strict=True))
