"""The plan (--mode=plan): topology names, device set-up, per-device bytes under FSDP, FLOPs, verdict, knobs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import pytest

from erclap import config_lib, optim, plan, resolve, runtime, sharding, state, validation
from erclap.configs import default, ser_pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2 ** 30


def _config(**overrides):
  config = default.get_config()
  small = {"data.max_seconds": 0.5, "data.max_text_tokens": 8, "model.joint_dim": 32,
           "model.projection_hidden": (32,), "train.global_batch_size": 16}
  return config_lib.apply_overrides(config, {**small, **overrides})


def _mesh(config, n_devices):
  return sharding.make_mesh(config.mesh.shape, config.mesh.axes, jax.devices()[:n_devices])


@pytest.mark.parametrize("name, chip, devices", [
    ("v4-8", "v4", 4), ("v4-32", "v4", 16), ("v5p-8", "v5p", 4), ("v5e-8", "v5e", 8), ("v5litepod-16", "v5e", 16),
    ("h100-8", "h100", 8), ("a100-40gb-8", "a100-40gb", 8), ("A100-80GB-2", "a100-80gb", 2)])
def test_topology_names(name, chip, devices):
  assert plan.parse_topology(name) == (chip, devices)


@pytest.mark.parametrize("name", ["v4-7", "v4", "tpu-8", "v5e-x", "h100", "v4-0", ""])
def test_bad_topology_is_named(name):
  with pytest.raises(ValueError, match="plan.topology"):
    plan.parse_topology(name)


def test_prepare_devices_checks_a_running_backend(devices):
  config = _config()
  assert plan.prepare_devices(config_lib.apply_overrides(config, {"plan.topology": ""})) == 0
  assert plan.prepare_devices(config_lib.apply_overrides(config, {"plan.topology": "v5e-8"})) == 8
  with pytest.raises(RuntimeError, match="needs 4 simulated CPU devices.*already runs on 8"):
    plan.prepare_devices(config_lib.apply_overrides(config, {"plan.topology": "v4-8"}))


@pytest.mark.parametrize("flags, want", [
    ("", "--xla_force_host_platform_device_count=4"),
    ("--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=4"),
    ("--a=1 --xla_force_host_platform_device_count=8 --b=2", "--a=1  --b=2 --xla_force_host_platform_device_count=4"),
])
def test_host_device_count_replaces_only_its_own_flag(flags, want):
  assert plan.with_host_device_count(flags, 4) == want


def test_plan_keys_are_validated():
  validation.validate(_config(**{"plan.utilization": 0.5, "plan.hbm_headroom": 1.0}))
  for key, value in (("plan.utilization", 0.0), ("plan.utilization", 1.5), ("plan.hbm_headroom", -0.1)):
    with pytest.raises(config_lib.ConfigError, match=key):
      validation.validate(_config(**{key: value}))


def test_device_kinds_map_to_chips():
  kinds = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5p": "v5p", "NVIDIA H100 80GB HBM3": "h100",
           "NVIDIA A100-SXM4-40GB": "a100-40gb", "NVIDIA A100-SXM4-80GB": "a100-80gb", "cpu": None}
  for kind, chip in kinds.items():
    assert plan.chip_of_device(type("D", (), {"device_kind": kind})()) == chip, kind


def test_state_bytes_halve_when_fsdp_doubles(devices):
  config = _config(**{"mesh.shape": (1, -1, 1)})
  model = runtime.build_model(config, vocab_size=500)
  one = plan.state_bytes(config, _mesh(config, 1), model)
  # Reference by hand: every parameter is float32; Adam keeps two moments per parameter plus step counters.
  assert one["params_bytes"] == 4 * one["param_count"]
  assert 2 * one["params_bytes"] <= one["opt_state_bytes"] <= 2 * one["params_bytes"] + 1024
  assert one["grads_bytes"] == one["params_bytes"]
  two, four = (plan.state_bytes(config, _mesh(config, n), model) for n in (2, 4))
  for key in ("params_bytes", "opt_state_bytes"):
    assert 0.5 <= two[key] / one[key] <= 0.6, (key, two[key] / one[key])
    assert 0.5 <= four[key] / two[key] <= 0.6, (key, four[key] / two[key])
  frozen = plan.state_bytes(_config(**{"mesh.shape": (1, -1, 1), "model.freeze_speech": True}), _mesh(config, 1),
                            model)
  assert frozen["grads_bytes"] < 0.7 * one["grads_bytes"]


def test_loss_flops_per_device_against_hand_count(devices):
  # InfoNCE on (N, D): each direction (rows of its own modality, so that rows can be split over devices) has a
  # logits matmul (2·N²·D) and two gradient matmuls (4·N²·D): 12·N²·D in all, plus O(N²) elementwise work.
  n, d = 256, 64
  config = _config(**{"loss": "infonce", "train.global_batch_size": n, "model.joint_dim": d})
  one = plan.plan_loss(config, _mesh(config, 1))
  four = plan.plan_loss(config, _mesh(config, 4))
  assert 12 * n * n * d <= one["flops_per_device"] <= 1.25 * 12 * n * n * d
  # cost_analysis of an SPMD program is one device's share: four devices together do the same work.
  assert abs(4 * four["flops_per_device"] / one["flops_per_device"] - 1) < 0.05


def test_stage1_loss_is_planned_on_its_predicted_attributes(devices):
  # Stage 1's losses act on (N, 3) predictions: CCC is O(N) and the pairwise ranking loss O(N²), far below the
  # cross-modal loss on (N, D) embeddings.
  n = 256
  ser = config_lib.apply_overrides(ser_pretrain.get_config("demo"), {"train.global_batch_size": n})
  clap = _config(**{"loss": "infonce", "train.global_batch_size": n, "model.joint_dim": 64})
  ser_plan, clap_plan = (plan.plan_loss(c, _mesh(c, 1)) for c in (ser, clap))
  assert 0 < ser_plan["flops_per_device"] < clap_plan["flops_per_device"] / 4


def test_knobs_estimates_by_hand(devices):
  config = _config(**{"mesh.shape": (2, 4, 1), "train.global_batch_size": 65536, "loss": "rnc"})
  mesh = _mesh(config, 8)
  step_plan = dict(total_bytes=40 * GiB, temp_bytes=30 * GiB, grads_bytes=2 * GiB, params_bytes=2 * GiB,
                   opt_state_bytes=4 * GiB)
  loss_plan = dict(temp_bytes=8 * GiB)
  found = {k["knob"]: k for k in plan.knobs(config, mesh, step_plan, loss_plan, limit=14.4 * GiB)}
  assert set(found) == {"train.micro_batch_size", "model.remat", "mesh.shape", "loss_options.row_block",
                        "model.dtype"}
  # Model activations = temp - gradients - loss temp = 20 GiB; nothing fits, so the smallest micro-batch (the 8
  # batch shards) is named: 40 - 20·(1 - 8/65536) + 2 (the gradient accumulator).
  assert found["train.micro_batch_size"]["value"] == 8
  assert found["train.micro_batch_size"]["total_bytes"] == int((40 - 20 * (1 - 8 / 65536) + 2) * GiB)
  assert found["model.remat"]["total_bytes"] is None
  assert found["mesh.shape"]["value"] == (1, 8, 1)
  assert found["mesh.shape"]["total_bytes"] == int((40 - 8 / 2) * GiB)   # state 8 GiB split over 2x more devices
  assert found["loss_options.row_block"]["total_bytes"] == int((40 - 8 * (1 - 512 / 8192)) * GiB)
  assert found["model.dtype"]["total_bytes"] == int((40 - 10) * GiB)
  # With a higher limit the largest micro-batch that fits is named.
  fits = {k["knob"]: k for k in plan.knobs(config, mesh, step_plan, loss_plan, limit=32.1 * GiB)}
  assert fits["train.micro_batch_size"]["value"] == 32768  # 40 - 10 + 2 = 32 GiB
  bf16 = _config(**{"mesh.shape": (1, 8, 1), "train.global_batch_size": 64, "model.dtype": "bfloat16",
                    "model.remat": True})
  names = {k["knob"] for k in plan.knobs(bf16, _mesh(bf16, 8), step_plan, loss_plan, limit=14.4 * GiB)}
  assert names == {"train.micro_batch_size"}   # no data axis to fold, 8 rows per device: no row blocks


@pytest.mark.slow
def test_a_config_that_cannot_fit_names_knobs(devices):
  # The tiny model against a sliver of a v5e's memory: the verdict and the knobs of a config that does not fit.
  # (Paper-size configs that do not fit a real chip: benchmarks/bench_plan.py.)
  config = _config(**{"loss": "rnc", "mesh.shape": (-1, 1, 1), "plan.hbm_headroom": 1e-6, "model.remat": False})
  result = plan.plan_config(config, _mesh(config, 2), runtime.build_model(config, vocab_size=500), "v5e")
  assert result["verdict"] == "DOES NOT FIT"
  assert result["step"]["total_bytes"] > result["limit_bytes"] == int(1e-6 * plan.CHIPS["v5e"].hbm_bytes)
  names = {k["knob"] for k in result["knobs"]}
  assert {"train.micro_batch_size", "model.remat", "model.dtype", "mesh.shape"} <= names
  text = plan.format_plan(result)
  assert "DOES NOT FIT" in text and "--config.model.remat=True" in text


def test_plan_counts_gradients_for_what_the_optimizer_trains(devices):
  """The plan's gradient bytes are the parameters that have Adam moments in the optimizer state (one trainable
  mask for both): a frozen speech representation (tower, pooling, SER head) and a fixed temperature get none."""
  config = _config(**{"model.freeze_speech": True, "train.learn_temperature": False,
                      "model.speech_representation": "ser_hidden", "model.speech_pooling": "attentive_stats"})
  mesh = _mesh(config, 1)
  model = runtime.build_model(config, vocab_size=500)
  abstract, _ = state.abstract_state_and_shardings(model, config, mesh, optim.make_optimizer(config))
  with_moments = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(abstract.opt_state)[0]:
    keys = [getattr(k, "name", getattr(k, "key", None)) for k in path]
    if "mu" in keys:  # ScaleByAdamState.mu, then the parameter's path
      with_moments.add(keys[keys.index("mu") + 1])
  assert with_moments == {"speech_proj", "text_tower", "text_proj"}
  moments_bytes = sum(4 * math.prod(x.shape) for name in with_moments
                      for x in jax.tree.leaves(abstract.params[name]))
  assert plan.state_bytes(config, mesh, model)["grads_bytes"] == moments_bytes


@pytest.mark.slow
def test_plan_mode_simulates_the_topology_in_a_fresh_process(tmp_path):
  """`--mode=plan` sets up the topology's simulated devices before JAX starts (a process boundary: the test process
  already runs 8 devices). The tiny demo config on v4-8 (4 chips); paper-size plans: benchmarks/bench_plan.py."""
  flags = config_lib.override_flags({"plan.topology": "v4-8", "data.max_seconds": 0.5, "data.max_text_tokens": 8,
                                     "model.joint_dim": 32, "model.projection_hidden": (32,),
                                     "train.global_batch_size": 16, "eval.batch_size": 16, "recipe.stage1": ""})
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  out = subprocess.run([sys.executable, "-m", "erclap.main", f"--config={ROOT}/configs/demo.py",
                        f"--workdir={tmp_path}", "--mode=plan", *flags], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "4 devices" in out.stdout and "verdict: FITS" in out.stdout
  with open(tmp_path / "plan.json") as f:
    saved = json.load(f)
  assert saved["chip"] == "TPU v4" and saved["devices"] == 4 and saved["verdict"] == "FITS"


@pytest.mark.slow
def test_run_plan_writes_plan_json_and_plans_the_cached_step_of_a_frozen_tower(devices, tmp_path):
  """plan.json is the plan; a frozen speech tower's plan shows the step on cached features beside it (same
  parameters, no tower FLOPs); a config already on a cache plans that step (no cache needs to exist)."""
  config = _config(**{"model.freeze_speech": True, "plan.topology": "v5e-8", "mesh.shape": (2, 4, 1)})
  assert plan.prepare_devices(config) == 8
  workdir = str(tmp_path / "audio")
  result = plan.run_plan(resolve.resolve(config, workdir, "plan"), workdir)
  with open(tmp_path / "audio" / "plan.json") as f:
    assert json.load(f) == json.loads(json.dumps(result))
  assert result["verdict"] == "FITS" and result["chip"] == "TPU v5e" and result["devices"] == 8
  s = result["step"]
  assert s["argument_bytes"] >= s["params_bytes"] + s["opt_state_bytes"]
  assert s["total_bytes"] >= s["argument_bytes"] and s["alias_bytes"] > 0   # the donated state is reused
  assert result["step_time_s"] == pytest.approx(s["flops_per_device"] / (197e12 * 0.4))
  assert 0 < result["loss_flops_share"] < 0.05
  cached = result["variants"]["speech_features"]
  assert cached["step"]["params_bytes"] == result["step"]["params_bytes"]
  assert cached["step"]["flops_per_example"] < result["step"]["flops_per_example"]
  workdir = str(tmp_path / "cached")
  on_cache = plan.run_plan(resolve.resolve(config_lib.apply_overrides(
      config, {"data.speech_features": str(tmp_path / "none")}), workdir, "plan"), workdir)
  assert on_cache["variants"] == {}
  assert on_cache["step"]["flops_per_example"] == pytest.approx(cached["step"]["flops_per_example"])
  assert plan.cached_variant(config) and not plan.cached_variant(config_lib.apply_overrides(
      config, {"model.freeze_speech": False}))
