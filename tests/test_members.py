"""Programs with members (erclap.members): member configs and their refusals, the data order of its own, traced
loss weights and learning-rate peaks equal to static ones, the member axis replicated or over a mesh axis, member
k equal to the standalone run of its settings, each member a run of its own, the plan, and exact resume after
SIGKILL."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import train_helpers as th

from erclap import (
  config_lib,
  export,
  input_pipeline,
  losses,
  members,
  model_export,
  optim,
  plan,
  resolve,
  runtime,
  sharding,
  speech_cache_mode,
  speech_source,
  state,
  step,
  tokenization,
  tower_init,
  train,
  validation,
  xla_workarounds,
)
from erclap.configs import demo

THREE = {"members.seeds": (3, 5, 7), "members.learning_rates": (1e-3, 2e-3, 3e-3)}


def _config(**overrides):
  return config_lib.apply_overrides(demo.get_config(), {"recipe.stage1": "", **overrides})


# ----------------------------------------------------------------------------- configs


def test_member_config_is_the_standalone_run_of_its_values():
  program = ml_collections.FrozenConfigDict(_config(**THREE, **{"members.temperatures": (0.1, 0.05, 0.2),
                                                                "seed": 11}))
  assert members.count(program) == 3 and members.count(_config()) == 0
  second = members.member_config(program, 1)
  assert isinstance(second, ml_collections.FrozenConfigDict)  # a resolved config's members stay resolved
  assert (second.seed, second.train.learning_rate, second.train.temperature_init) == (5, 2e-3, 0.05)
  assert second.data.seed == 11  # the program's data order, made explicit
  assert all(tuple(second.members[name]) == () for name in members.MEMBER_KEYS) and members.count(second) == 0
  assert members.member_values(program, 2) == {"seed": 7, "train.learning_rate": 3e-3, "train.temperature_init": 0.2}
  assert members.values(program, "learn_temperature") == (True, True, True)  # not varied: the config's, K times
  assert config_lib.data_seed(_config(seed=4)) == 4 and config_lib.data_seed(_config(**{"data.seed": 9})) == 9
  hyper = members.hyper(_config(**{"members.rank_label_weights": ((1.0, 0.5), ()), "members.seeds": (3, 5),
                                   "members.learning_rates": (1e-3, 2e-3)}))
  assert set(hyper) == {"learning_rate", "rank_label_weights"}  # seeds enter at initialisation only
  np.testing.assert_array_equal(hyper["rank_label_weights"], np.float32([[1.0, 0.5], [1.0, 1.0]]))


@pytest.mark.parametrize("overrides, message", [
    ({"members.seeds": (1, 2), "members.learning_rates": (1e-3,)}, "the same number K; got members.seeds 2, "
                                                                     "members.learning_rates 1"),
    ({"members.learning_rates": (1e-3, -1.0)}, r"members.learning_rates\[1\]=-1.0: must be a number > 0"),
    ({"members.same_modality_weights": (1.0, 0.5)}, r"same_modality_weights\[1\]=0.5: weighs the same-modality rows"),
    ({"members.rank_label_weights": ((1.0,), (1.0, 1.0))}, r"rank_label_weights\[0\]=\(1.0,\): one weight"),
    ({"members.learn_temperature": (True, 1)}, r"learn_temperature\[1\]=1: must be True or False"),
    ({"members.rank_label_weights": ((1.0, 0.5), (1.0, 1.0)), "loss": "infonce"},
     "members.rank_label_weights: this stage does not read config.loss_options.rank_label_weights"),
    ({"members.temperatures": (0.1, 0.2), "stage": "ser"}, "does not read config.train.temperature_init"),
    ({"members.seeds": (1, 2), "model.freeze_text": True}, "the frozen text tower is initialised at random"),
    ({"members.seeds": (1, 2), "mesh.logical_axis_rules": (("member", "data"),)},
     r"maps the member axis onto \['data'\], over which the batch is split"),
    ({"members.seeds": (1, 2), "export.member": 2}, r"config.export.member=2: this run has 2 members \(0..1\)"),
    ({"export.member": 0}, "this run has no members"),
    ({"members.seeds": (1, 2), "members.at_once": -2}, r"members.at_once=-2: must be -1 \(by the platform\), 0"),
    ({"members.seeds": (1, 2), "members.at_once": 1, "mesh.logical_axis_rules": (("member", "tensor"),)},
     r"members.at_once=1: the member axis is split over the mesh axis 'tensor'"),
])
def test_what_members_cannot_do_is_refused_naming_the_key(overrides, message):
  found = validation.problems(_config(**overrides))
  assert any(re.search(message, p) for p in found), found


def test_a_key_that_cannot_vary_between_members_is_named():
  assert members.key_named("seed") is members.MEMBER_KEYS["seeds"]
  assert members.key_named("learning_rates").config_key == "train.learning_rate"
  with pytest.raises(ValueError, match="'train.global_batch_size' cannot vary between the members.*batch size"):
    members.key_named("train.global_batch_size")


def test_export_model_of_several_members_names_the_member_before_any_work(tmp_path):
  config = _config(**THREE)
  problems = resolve.mode_problems(config, "export_model")
  assert problems and "--config.export.member=<0..2>" in problems[0]
  assert resolve.mode_problems(_config(**THREE, **{"export.member": 1}), "export_model") == []
  with pytest.raises(ValueError, match="holds 3 members.*--config.export.member=k"):
    resolve.for_inference(_config(**THREE))


def test_the_data_order_is_its_own_seed(tiny_embedded):
  config, _ = tiny_embedded
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  batches = []
  for overrides in ({"seed": 1}, {"seed": 2, "data.seed": 1}, {"seed": 1, "data.seed": 2}):
    iterator = input_pipeline.create_train_iterator(config_lib.apply_overrides(config, overrides), tokenizer)
    batches.append([next(iterator) for _ in range(2)])
  for key in ("audio", "input_ids", "labels"):
    for a, b in zip(batches[0], batches[1], strict=True):
      np.testing.assert_array_equal(a[key], b[key])  # seed 2 with data.seed=1 reads seed 1's stream
  assert not np.array_equal(batches[0][0]["labels"], batches[2][0]["labels"])


# ----------------------------------------------------------------------------- traced values


def _loss_inputs(n=16, d=8, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
          dict(labels=jnp.asarray(rng.uniform(1, 7, (n, 3)), jnp.float32),
               class_id=jnp.asarray(rng.integers(0, 3, n), jnp.int32)))


@pytest.mark.parametrize("loss, options, traced", [
    ("rnc", dict(joint=True, same_modality_weight=0.5), ("same_modality_weight",)),
    ("rnc", dict(joint=True, same_modality_weight=0.0), ("same_modality_weight",)),
    ("rnc", dict(rank_label_weights=(1.0, 0.25)), ("rank_label_weights",)),
    ("rnc", dict(rank_label_weights=(0.0, 2.0), rank_terms="per_label"), ("rank_label_weights",)),
    ("infonce", dict(joint=True, same_modality_weight=0.5), ("same_modality_weight",)),
    ("supcon", dict(joint=True, same_modality_weight=0.25), ("same_modality_weight",)),
])
def test_traced_loss_weights_give_the_static_loss_under_vmap_and_a_mesh(devices, loss, options, traced):
  speech, text, batch = _loss_inputs()
  fn = losses.get_clap_loss(loss)
  mesh = sharding.make_mesh((-1,), ("data",))
  static = jax.jit(jax.value_and_grad(lambda s, t: fn(s, t, batch, temperature=0.1, mesh=mesh, options=options),
                                      argnums=(0, 1)))
  values = {key: jnp.stack([jnp.asarray(options[key], jnp.float32)] * 2) for key in traced}

  def member(value, s, t):
    return jax.value_and_grad(lambda s, t: fn(s, t, batch, temperature=0.1, mesh=mesh,
                                               options={**options, **value}), argnums=(0, 1))(s, t)
  with sharding.use_mesh(mesh):
    want = static(speech, text)
    with xla_workarounds.vmapped_shard_maps():
      got = jax.jit(jax.vmap(member, in_axes=(0, None, None)))(values, speech, text)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    for k in range(2):
      np.testing.assert_allclose(np.asarray(g)[k], np.asarray(w), rtol=2e-6, atol=1e-7)


def test_a_traced_peak_gives_the_configured_schedule():
  config = _config(**{"train.learning_rate": 3e-3, "train.num_steps": 120, "train.warmup_steps": 20})
  steps = jnp.arange(0, 130)
  want = jax.jit(jax.vmap(optim.learning_rate_schedule(config)))(steps)
  got = jax.jit(lambda p: jax.vmap(optim.learning_rate_schedule(config, p))(steps))(jnp.float32(3e-3))
  # The same operations; XLA folds a constant peak into its neighbours, a traced one it cannot: a few float32 ulp.
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=5e-6, atol=0)
  assert float(want[20]) == pytest.approx(3e-3) and float(want[0]) == 0.0 and float(want[-1]) == 0.0


# ----------------------------------------------------------------------------- state and sharding


def _state_specs(config, mesh):
  model = runtime.build_model(config, vocab_size=64)
  abstract, shardings = state.abstract_state_and_shardings(model, config, mesh, optim.make_optimizer(config))
  return abstract, shardings


def test_what_trains_carries_the_member_axis_and_the_frozen_rest_is_held_once(devices):
  mesh = sharding.make_mesh((-1, 1, 1), ("data", "fsdp", "tensor"))
  config = _config(**{"members.learning_rates": (1e-3, 2e-3, 3e-3), "model.freeze_speech": True,
                      "model.speech_init": "/a/stage1/workdir", "members.temperatures": (0.1, 0.2, 0.3),
                      "train.learn_temperature": False})
  plain, _ = _state_specs(_config(**{"model.freeze_speech": True}), mesh)
  abstract, shardings = _state_specs(config, mesh)
  assert set(state.member_names(config, abstract.params)) == {"speech_proj", "text_tower", "text_proj",
                                                              "log_temperature"}
  for name, tree in abstract.params.items():
    for got, want in zip(jax.tree.leaves(tree), jax.tree.leaves(plain.params[name]), strict=True):
      assert got.shape == ((3, *want.shape) if name in state.member_names(config, abstract.params) else want.shape)
  assert abstract.rng.shape == (3,)
  assert "speech_tower" not in str(jax.tree_util.tree_structure(abstract.opt_state))  # no moments for the frozen
  spec = shardings.params["text_proj"]["out"]["dense"]["kernel"].spec
  assert spec[0] is None  # replicated members by default

  over = config_lib.apply_overrides(config, {"mesh.shape": (2, 1, 4), "mesh.logical_axis_rules": (("member",
                                                                                                    "tensor"),),
                                             "members.learning_rates": (1e-3,) * 4,
                                             "members.temperatures": (0.1,) * 4})
  _, shardings = _state_specs(over, sharding.make_mesh((2, 1, 4), ("data", "fsdp", "tensor")))
  assert shardings.params["text_proj"]["out"]["dense"]["kernel"].spec[0] == "tensor"
  moments = [s.spec for path, s in jax.tree_util.tree_leaves_with_path(shardings.opt_state)
             if "text_proj" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)]
  assert len(moments) == 4 and all(spec[0] == "tensor" for spec in moments)  # mu, nu of both kernels
  assert sharding.member_mesh_axis(over.mesh.logical_axis_rules, ("data", "fsdp", "tensor")) == "tensor"


def test_members_at_once_follows_the_platform_unless_set():
  program = _config(**THREE)
  assert [members.at_once(program, p) for p in ("cpu", "tpu", "gpu")] == [1, 0, 0]
  assert members.at_once(program, "cpu", sharded=True) == 0  # each device computes its own members at once
  assert [members.at_once(_config(**THREE, **{"members.at_once": n}), "cpu") for n in (0, 2)] == [0, 2]
  assert members.at_once(_config(**THREE, **{"members.at_once": 2}), "tpu") == 2
  # the plan compiles on CPU devices what a TPU runs: all members at once, as -1 chooses there
  assert plan.as_planned(program).members.at_once == 0 and plan.as_planned(_config()).members.at_once == -1
  assert plan.as_planned(_config(**THREE, **{"members.at_once": 2})).members.at_once == 2


@pytest.mark.slow
def test_member_steps_are_the_same_one_after_another_all_at_once_or_split_over_a_mesh_axis(cached, devices):
  config, _ = cached  # the cross-modal stage on the speech cache, as members train it
  overrides = {"members.seeds": (3, 5), "members.learning_rates": (1e-3, 3e-3)}
  results = []
  for mesh_overrides in ({"mesh.shape": (-1, 1, 1), "members.at_once": 1},  # jax.lax.map: one after another
                         {"mesh.shape": (-1, 1, 1), "members.at_once": 0},  # jax.vmap: all at once
                         {"mesh.shape": (4, 1, 2), "mesh.logical_axis_rules": (("member", "tensor"),)}):
    cfg = ml_collections.FrozenConfigDict(config_lib.apply_overrides(config, {**overrides, **mesh_overrides}))
    mesh, tokenizer, model = runtime.setup(cfg)
    optimizer = optim.make_optimizer(cfg)
    train_state, shardings = state.create_train_state(model, cfg, mesh, optimizer, jax.random.key(cfg.seed))
    iterator = input_pipeline.create_train_iterator(cfg, tokenizer)
    train_step = step.jit_train_step(model, cfg, mesh, optimizer, shardings)
    with sharding.use_mesh(mesh, cfg.mesh.logical_axis_rules):
      for _ in range(2):
        train_state, metrics = train_step(train_state, runtime.global_batch(next(iterator), mesh,
                                                                            speech_source.of(cfg)))
    kernel = train_state.params["text_proj"]["out"]["dense"]["kernel"]
    results.append((jax.device_get(metrics["loss"]), jax.device_get(train_state.params), kernel.sharding.spec))
  (loss_a, params_a, spec_a), *others = results
  assert spec_a[0] is None and [spec[0] for _, _, spec in others] == [None, "tensor"]
  assert loss_a.shape == (2,) and abs(loss_a[0] - loss_a[1]) > 1e-4  # two members, two runs
  # Batched and single matmuls (and the split ones) sum in other orders: float32 rounding, ~1e-7 relative per op,
  # carried through two Adam steps into the parameters (measured: 4e-7 at most); a wrong member pairing or
  # hyper-parameter moves them by ~1e-3 (the members differ by that after one step).
  for (loss_b, params_b, _), how in zip(others, ("all at once", "split over the mesh axis"), strict=True):
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    pairs = list(zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True))
    for a, b in pairs:
      np.testing.assert_allclose(b, a, atol=2e-6)
    worst = max(float(np.max(np.abs(b - a))) for a, b in pairs)
    print(f"members {how} vs one after another: max |difference| of the parameters {worst:.1e}")


# ----------------------------------------------------------------------------- runs


def _cached_overrides(trained_workdir: str, cache: str = "") -> dict:
  """The cross-modal stage on a frozen speech tower (the suite's trained workdir's), as members train it; reading
  the speech cache ``cache`` when given."""
  return {"model.freeze_speech": True, "model.speech_init": trained_workdir, "train.num_steps": 4,
          "checkpoint.every_steps": 2, "eval.every_steps": 2, "checkpoint.best_metric": "aoc_voc_mean",
          "export.saved_model": False, **({"data.speech_features": cache} if cache else {})}


# The program of two members that the run tests train (and kill and resume).
PROGRAM = {"members.seeds": (3, 5), "members.learning_rates": (1e-3, 3e-3), "members.temperatures": (0.1, 0.05)}


@pytest.fixture(scope="module")
def cached(data_dir, trained_workdir, tmp_path_factory):
  """A frozen speech tower and its cache of the tiny corpus: the cross-modal stage on the cache, as members train
  it. Returns (config, its overrides of the tiny config)."""
  workdir = str(tmp_path_factory.mktemp("members_cache"))
  config = th.tiny_config(data_dir, **_cached_overrides(trained_workdir))
  cache = speech_cache_mode.cache_speech_features(th.resolved(config, workdir, "cache_speech"), workdir)
  overrides = _cached_overrides(trained_workdir, cache)
  return th.tiny_config(data_dir, **overrides), overrides


@pytest.fixture(scope="module")
def program(cached, tmp_path_factory):
  """(config, workdir) of the two-member PROGRAM trained in this process (4 steps, evaluated at 2 and 4)."""
  config = config_lib.apply_overrides(cached[0], PROGRAM)
  workdir = str(tmp_path_factory.mktemp("program") / "run")
  last = train.train_and_evaluate(th.resolved(config, workdir), workdir)
  assert {"members/0/aoc", "members/1/aoc"} <= set(last)
  return config, workdir


@pytest.mark.slow
def test_member_equals_the_standalone_run_of_its_settings_and_is_a_run_of_its_own(cached, program, tmp_path):
  config, _ = cached
  program, workdir = program
  export.export_embeddings(th.resolved(program, workdir, "export"), workdir)
  solo = str(tmp_path / "member1")
  standalone = config_lib.apply_overrides(config, {"seed": 5, "train.learning_rate": 3e-3,
                                                   "train.temperature_init": 0.05, "data.seed": 0})
  train.train_and_evaluate(th.resolved(standalone, solo), solo)
  export.export_embeddings(th.resolved(standalone, solo, "export"), solo)

  worst = 0.0
  for name in ("test_speech.npy", "test_text.npy"):
    got = np.load(os.path.join(workdir, "members", "1", "export", name))
    want = np.load(os.path.join(solo, "export", name))
    worst = max(worst, float(np.max(np.abs(got - want))))
    other = np.load(os.path.join(workdir, "members", "0", "export", name))
    assert np.max(np.abs(other - want)) > 1e-3  # member 0 is another run
  assert worst <= 1e-4, worst
  print(f"member 1 vs its standalone run: max |difference| of the test embeddings {worst:.2e}")

  for k in (0, 1):  # each member's directory holds a run: evaluations, TensorBoard run with its hparams, best step
    run_dir = members.directory(workdir, k)
    assert sorted(os.listdir(os.path.join(run_dir, "eval"))) == ["2.json", "4.json"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    best = json.load(open(os.path.join(run_dir, members.BEST_FILE)))
    assert best["metric"] == "aoc_voc_mean" and best["step"] in (2, 4)
    assert os.path.isfile(os.path.join(run_dir, "export", "report.html"))
  assert not os.path.isdir(os.path.join(workdir, "export")) and not os.path.isdir(os.path.join(workdir, "eval"))

  from tensorboard.backend.event_processing import event_accumulator  # the written hparams, read back
  from tensorboard.plugins.hparams import plugin_data_pb2
  acc = event_accumulator.EventAccumulator(members.directory(workdir, 1))
  acc.Reload()
  content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
  assert start.hparams["seed"].number_value == 5 and start.hparams["train.learning_rate"].number_value == 3e-3
  assert start.hparams["data.seed"].number_value == 0

  model_dir = str(tmp_path / "model1")
  exported = th.resolved(config_lib.apply_overrides(program, {"export.member": 1, "export.model_dir": model_dir}),
                         workdir, "export_model")
  model_export.export_model(exported, workdir)
  loaded = model_export.load_model_dir(model_dir)
  assert (loaded.config.seed, members.count(loaded.config)) == (5, 0)
  _, params = tower_init.read_workdir_params(solo)
  for a, b in zip(jax.tree.leaves(params["text_proj"]), jax.tree.leaves(loaded.params["text_proj"]), strict=True):
    np.testing.assert_allclose(np.asarray(b), a, atol=1e-5)


@pytest.mark.slow
def test_the_plan_counts_each_member_and_says_how_many_fit(devices):
  small = {"model.joint_dim": 32, "model.projection_hidden": (32,), "train.global_batch_size": 16,
           "data.max_seconds": 0.5, "data.max_text_tokens": 16, "model.freeze_speech": True,
           "model.speech_init": "/a/stage1/workdir"}
  # all members at once, as --mode=plan compiles them (plan.as_planned)
  config = _config(**small, **{"members.learning_rates": (1e-3, 2e-3), "members.at_once": 0})
  mesh = sharding.make_mesh((-1, 1, 1), ("data", "fsdp", "tensor"))
  model = runtime.build_model(config, vocab_size=64)
  one = plan.plan_step(plan.with_member_count(config, 1), mesh, model)
  two = plan.plan_step(config, mesh, model)
  trained = sum(np.prod(x.shape) * 4 for name in ("text_tower", "text_proj", "speech_proj", "log_temperature")
                for x in jax.tree.leaves(_state_specs(_config(**small), mesh)[0].params[name]))
  assert two["params_bytes"] - one["params_bytes"] == trained  # the members' own parameters, once more
  assert two["opt_state_bytes"] == 2 * one["opt_state_bytes"]
  assert two["grads_bytes"] == 2 * one["grads_bytes"]
  result = plan.member_plan(config, mesh, model, two, limit=two["total_bytes"] * 3)
  per = two["total_bytes"] - one["total_bytes"]
  assert result["per_member_bytes"] == per and result["shared_bytes"] == two["total_bytes"] - 2 * per
  assert result["fit"] == (3 * two["total_bytes"] - result["shared_bytes"]) // per >= 5
  assert "members             2 (config.members)" in plan.format_plan(
      dict(plan.plan_config(config, mesh, model, None, step_plan=two), topology="local"))


@pytest.mark.slow
def test_a_program_killed_by_sigkill_resumes_to_the_same_members(data_dir, cached, program, tmp_path, capsys):
  _, overrides = cached  # the cross-modal stage on the speech cache, as members train it
  overrides = {**overrides, **PROGRAM}
  config, reference = program  # the same program, trained uninterrupted in this process
  workdir = str(tmp_path / "killed")
  killed_at = th.kill_at_checkpoint(workdir, data_dir, 2, **overrides)
  assert killed_at < 4, "the run finished before it could be killed"
  capsys.readouterr()
  train.train_and_evaluate(th.resolved(config, workdir), workdir)  # resumes
  out = capsys.readouterr().out
  assert f"[train] step {killed_at + 1}/4" in out and "[train] step 1/4" not in out, out[-3000:]
  (step_a, params_a), (step_b, params_b) = (tower_init.read_workdir_params(w) for w in (reference, workdir))
  assert step_a == step_b == 4
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_array_equal(a, b)  # bit-identical
  assert params_a["text_proj"]["out"]["dense"]["kernel"].shape[0] == 2
