"""Training in the test process: gradient caching, sharding invariance, frozen towers, loss falls, guards, the
SER stage. Training runs of `erclap.main` in subprocesses (resume, preemption, multi-host): test_train_runs.py."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_helpers as th

from erclap import optim, plan, runtime, stages, tokenization, tower_init, train
from erclap import state as state_lib
from erclap import step as step_lib
from erclap.speech_source import AUDIO


def _random_batch(config, vocab_size, n, seed=0):
  rng = np.random.default_rng(seed)
  t = int(round(config.data.max_seconds * config.data.sample_rate))
  length = config.data.max_text_tokens
  audio_len = rng.integers(t // 2, t + 1, size=n)
  text_len = rng.integers(3, length + 1, size=n)
  return dict(
      audio=rng.standard_normal((n, t)).astype(np.float32) * 0.1,
      audio_mask=np.arange(t)[None] < audio_len[:, None],
      input_ids=rng.integers(4, vocab_size, size=(n, length)).astype(np.int32),
      attention_mask=(np.arange(length)[None] < text_len[:, None]).astype(np.int32),
      labels=rng.integers(2, 15, size=(n, 3)).astype(np.float32) / 2.0,  # coarse grid: many ties
      class_id=rng.integers(0, 4, size=n).astype(np.int32),
      valid=np.ones(n, bool),
  )


def _tower_loader(config):
  return functools.partial(tower_init.load_pretrained_towers, config=config)


def _setup(config):
  mesh = runtime.make_mesh(config)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  return mesh, tokenizer, model


@pytest.mark.slow
@pytest.mark.parametrize("stage, loss", [("clap", "rnc"), ("ser", "rnc")])
def test_gradient_caching_equals_one_shot(devices, stage, loss):
  # Stage 1's CCC and ranking losses couple the batch like the contrastive ones: cached gradients are exact too.
  overrides = {"stage": stage, "loss": loss, "loss_options.rank_margin": 0.25}
  config = th.tiny_config("unused", **overrides)
  mesh, tokenizer, model = _setup(config)
  params = state_lib.init_params(model, config, mesh, jax.random.key(0))
  batch = runtime.global_batch(_random_batch(config, tokenizer.vocab_size, 16), mesh, AUDIO)
  one_shot = step_lib.make_loss_and_grads(model, config, mesh)
  cached_config = th.tiny_config("unused", **overrides, **{"train.micro_batch_size": 8})
  cached = step_lib.make_loss_and_grads(model, cached_config, mesh)
  rng = jax.random.key(1)
  with jax.set_mesh(mesh):
    loss_a, parts_a, grads_a = jax.jit(one_shot)(params, batch, rng)
    loss_b, parts_b, grads_b = jax.jit(cached)(params, batch, rng)
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5)
  assert parts_a.keys() == parts_b.keys() == ({"ccc_loss", "rank_loss"} if stage == "ser" else set())
  for name in parts_a:
    np.testing.assert_allclose(float(parts_a[name]), float(parts_b[name]), rtol=1e-5)
  flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
  assert len(flat_a) == len(flat_b)
  scale = max(float(jnp.max(jnp.abs(g))) for g in flat_a)
  for ga, gb in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-3, atol=1e-5 * scale)
  assert scale > 0


@pytest.mark.slow
def test_loss_and_gradient_same_on_fsdp_tensor_mesh_as_data_parallel(devices):
  results = []
  for shape in [(8, 1, 1), (2, 2, 2)]:
    config = th.tiny_config("unused", **{"mesh.shape": shape})
    mesh, tokenizer, model = _setup(config)
    params = state_lib.init_params(model, config, mesh, jax.random.key(0))
    host_batch = _random_batch(config, tokenizer.vocab_size, 16)
    loss_and_grads = jax.jit(step_lib.make_loss_and_grads(model, config, mesh))
    with jax.set_mesh(mesh):
      loss, _, grads = loss_and_grads(params, runtime.global_batch(host_batch, mesh, AUDIO), jax.random.key(3))
    results.append((float(loss), jax.device_get(grads)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
  # Gradients, not Adam-updated parameters: Adam's first step is ~lr * sign(g), so a gradient entry that is
  # zero up to rounding (a bias) may flip sign between reduction orders without anything being wrong.
  flat_a, flat_b = jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])
  scale = max(float(np.max(np.abs(g))) for g in flat_a)
  for a, b in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["infonce", "supcon"])
def test_frozen_speech_tower_does_not_move_and_the_loss_falls(devices, loss):
  """A frozen speech tower stays bit for bit while the text side learns, and the loss falls on a fixed batch
  (the training loop itself, which is the same for every loss: test_training_lowers_the_loss)."""
  config = th.tiny_config("unused", loss=loss, **{"model.freeze_speech": True, "train.learning_rate": 3e-3})
  mesh, tokenizer, model = _setup(config)
  optimizer = optim.make_optimizer(config)
  state, shardings = state_lib.create_train_state(model, config, mesh, optimizer, jax.random.key(0))
  before = jax.device_get(state.params)
  step = step_lib.jit_train_step(model, config, mesh, optimizer, shardings)
  host_batch = _random_batch(config, tokenizer.vocab_size, 16)
  losses = []
  with jax.set_mesh(mesh):
    for _ in range(8):  # the warmup schedule's learning rate is 0 at step 0
      state, metrics = step(state, runtime.global_batch(host_batch, mesh, AUDIO))
      losses.append(float(metrics["loss"]))
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(before["speech_tower"]), jax.tree.leaves(after["speech_tower"]), strict=True):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["text_tower"]),
                                                    jax.tree.leaves(after["text_tower"]), strict=True)]
  assert any(moved)
  assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3]), losses


@pytest.mark.slow
def test_a_pooling_trained_on_the_frozen_tower_moves_alone(devices):
  """model.train_speech_pooling: the pooling and SER head learn, the tower stays bit for bit, the optimizer keeps no
  moments for the tower, and the plan counts gradient bytes for what trains only."""
  config = th.tiny_config("unused", **{"model.freeze_speech": True, "model.train_speech_pooling": True,
                                       "model.speech_pooling": "attentive_stats",
                                       "model.speech_representation": "ser_hidden", "train.learning_rate": 3e-3})
  mesh, tokenizer, model = _setup(config)
  optimizer = optim.make_optimizer(config)
  state, shardings = state_lib.create_train_state(model, config, mesh, optimizer, jax.random.key(0))
  before = jax.device_get(state.params)
  # Adam moments: one mu and one nu per trained leaf, none for the tower (its group's transform keeps no state).
  moments = [path for path, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)
             if any(getattr(k, "name", None) in ("mu", "nu") for k in path)]
  tower_leaves = len(jax.tree.leaves(before["speech_tower"]))
  assert not [p for p in moments if "speech_tower" in jax.tree_util.keystr(p)]
  trained = {k: v for k, v in before.items() if k != "speech_tower"}
  assert len(moments) == 2 * len(jax.tree.leaves(trained)) and tower_leaves > 0
  step = step_lib.jit_train_step(model, config, mesh, optimizer, shardings)
  host_batch = _random_batch(config, tokenizer.vocab_size, 16)
  with jax.set_mesh(mesh):
    for _ in range(3):  # the warmup schedule's learning rate is 0 at step 0
      state, _ = step(state, runtime.global_batch(host_batch, mesh, AUDIO))
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(before["speech_tower"]), jax.tree.leaves(after["speech_tower"]), strict=True):
    np.testing.assert_array_equal(a, b)
  for part in ("speech_pool", "ser_head", "speech_proj", "text_tower"):
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[part]), jax.tree.leaves(after[part]),
                                                      strict=True)]
    assert any(moved), part
  figures = plan.state_bytes(config, mesh, model)
  param_bytes = lambda tree: sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
  # 8 data-parallel devices: every parameter whole on each; gradients of everything but the tower.
  assert figures["params_bytes"] == param_bytes(before)
  assert figures["grads_bytes"] == param_bytes(trained) == figures["params_bytes"] - param_bytes(before["speech_tower"])


@pytest.mark.slow
def test_training_lowers_the_loss(data_dir, tmp_path, capsys):
  steps = 24
  config = th.tiny_config(data_dir, **{"train.num_steps": steps, "checkpoint.every_steps": 1000})
  train.train_and_evaluate(th.resolved(config, tmp_path / "run"), str(tmp_path / "run"))
  curve = th.loss_curve(capsys.readouterr().out)
  assert sorted(curve) == list(range(1, steps + 1))
  values = np.array([curve[s] for s in sorted(curve)])
  assert np.all(np.isfinite(values))
  assert values[-3:].mean() < values[:3].mean(), values
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / str(steps))
  evals = os.listdir(tmp_path / "run" / "eval")
  assert f"{steps}.json" in evals


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_checkpoints(data_dir, tmp_path):
  config = th.tiny_config(data_dir, **{"train.learning_rate": 1e30, "train.grad_clip_norm": 0.0,
                                       "train.warmup_steps": 0, "train.num_steps": 20,
                                       "checkpoint.every_steps": 1})
  with pytest.raises(train.NonFiniteLossError, match="Non-finite loss"):
    train.train_and_evaluate(th.resolved(config, tmp_path / "run"), str(tmp_path / "run"))
  step, params = tower_init.read_workdir_params(str(tmp_path / "run"))
  assert step >= 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_ser_stage_trains_and_initialises_the_clap_speech_tower(data_dir, tmp_path, capsys):
  from erclap.configs import ser_pretrain

  ser_config = ser_pretrain.get_config("demo")
  for key, value in {**th.TINY_OVERRIDES, "data.data_dir": data_dir, "train.num_steps": 12,
                     "checkpoint.every_steps": 1000}.items():
    *path, leaf = key.split(".")
    parent = ser_config
    for part in path:
      parent = parent[part]
    parent[leaf] = value
  ser_dir = str(tmp_path / "ser")
  metrics = train.train_and_evaluate(th.resolved(ser_config, ser_dir), ser_dir)
  assert {"ser_ccc_arousal", "ser_rank_accuracy"} <= set(metrics)
  assert sorted(metrics) == sorted(stages.SER.metric_names(ser_config))  # what checkpoint.best_metric is checked on
  curve = th.loss_curve(capsys.readouterr().out)
  values = np.array([curve[s] for s in sorted(curve)])
  assert values[-3:].mean() < values[:3].mean(), values

  clap_config = th.tiny_config(data_dir, **{"model.speech_init": ser_dir})
  mesh, _, model = _setup(clap_config)
  optimizer = optim.make_optimizer(clap_config)
  state, _ = state_lib.create_train_state(model, clap_config, mesh, optimizer, jax.random.key(0),
                                         load_towers=_tower_loader(clap_config))
  _, ser_params = tower_init.read_workdir_params(ser_dir)
  for a, b in zip(jax.tree.leaves(ser_params["speech_tower"]),
                  jax.tree.leaves(jax.device_get(state.params["speech_tower"])), strict=True):
    np.testing.assert_array_equal(a, b)

  wrong = th.tiny_config(data_dir, **{"model.speech_init": ser_dir, "model.speech_arch": "wav2vec2"})
  mesh, _, model = _setup(wrong)
  with pytest.raises(tower_init.TowerMismatchError, match="speech_tower"):
    state_lib.create_train_state(model, wrong, mesh, optim.make_optimizer(wrong), jax.random.key(0),
                                 load_towers=_tower_loader(wrong))
