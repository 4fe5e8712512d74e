"""erclap.validation: every problem a config has (on a device count), found before any work; the same function
the program runs at resolution (erclap.resolve)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from erclap import config_lib, losses, resolve, sharding, validation
from erclap.configs import default, demo, gpu, ser_pretrain, tpu_v4
from erclap.validation import Devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(base=demo, **overrides):
  return config_lib.apply_overrides(base.get_config(), overrides)


def _validate(config, device_count, process_count=1, local_device_count=None):
  return validation.validate(config, Devices(device_count, process_count, local_device_count))


def _problems(config, device_count, process_count=1, local_device_count=None) -> str:
  with pytest.raises(config_lib.ConfigError) as info:
    _validate(config, device_count, process_count, local_device_count)
  return str(info.value)


def test_demo_runs_unchanged_on_1_and_8_devices():
  for devices in (1, 8):
    config = demo.get_config()
    assert _validate(config, devices, 1) is config


def test_eval_batch_of_100_on_8_devices_is_named_with_the_fix():
  config = _config(**{"eval.batch_size": 100})
  _validate(config, 1, 1)
  message = _problems(config, 8)
  assert message.startswith("config.eval.batch_size=100 must be a multiple of 8 (the 8 batch shards of mesh "
                            "{'data': 8, 'fsdp': 1, 'tensor': 1} on 8 devices)")
  assert "e.g. 96 or 104" in message
  assert "train.global_batch_size" not in message  # 64 is fine


@pytest.mark.parametrize("shape, needle", [
    ((3, -1, 1), r"config.mesh.shape=(3, -1, 1): the fixed entries' product 3 does not divide the 8 devices"),
    ((2, 2, 1), r"config.mesh.shape=(2, 2, 1) needs 4 devices, but 8 are available"),
    ((-1, -1, 1), r"config.mesh.shape=(-1, -1, 1): at most one entry may be -1"),
    ((0, -1, 1), r"config.mesh.shape=(0, -1, 1): entries must be positive integers or one -1"),
    ((-1, 1), r"config.mesh.shape (-1, 1) and config.mesh.axes ('data', 'fsdp', 'tensor') differ in length"),
])
def test_bad_mesh_shape_is_named(shape, needle):
  assert needle in _problems(_config(**{"mesh.shape": shape}), 8)


def test_mesh_resolution_agrees_with_make_mesh(devices):
  """The pure resolution gives make_mesh's shape and batch shards, and refuses exactly what make_mesh refuses."""
  axes = ("data", "fsdp", "tensor")
  for shape in [(-1, 1, 1), (1, -1, 1), (2, -1, 2), (2, 2, 2), (-1, 2, 1), (1, 1, -1), (3, -1, 1), (2, 2, 1),
                (4, 4, -1), (8, 1, 1), (1, 8, 2)]:
    got, problems = config_lib.resolve_mesh_shape(shape, axes, len(devices), sharding.MESH_AXES)
    try:
      mesh = sharding.make_mesh(shape, axes, devices)
    except ValueError:
      assert got is None and problems, shape
      continue
    assert got == tuple(mesh.shape[a] for a in axes) and not problems, shape
    assert got[0] * got[1] == sharding.batch_size_divisor(mesh)


def test_fsdp_mesh_counts_its_shards_as_batch_shards():
  # gpu.py: FSDP over all devices. 512 is a multiple of 8, 36 is not.
  config = _config(gpu, **{"eval.batch_size": 36})
  assert "config.eval.batch_size=36 must be a multiple of 8 (the 8 batch shards of mesh " \
         "{'data': 1, 'fsdp': 8, 'tensor': 1}" in _problems(config, 8)
  # Tensor parallelism does not split the batch: 4 batch shards on (2, 2, 2).
  config = _config(gpu, **{"mesh.shape": (2, 2, 2), "eval.batch_size": 12})
  _validate(config, 8)


def test_processes_divide_the_batches():
  # mesh (1, 1, -1): one batch shard, but 2 processes each read an equal share of every batch.
  config = _config(**{"mesh.shape": (1, 1, -1), "eval.batch_size": 33, "train.global_batch_size": 64})
  message = _problems(config, 8, 2)
  assert "config.eval.batch_size=33 must be a multiple of 2" in message and "2 processes" in message
  assert "global_batch_size" not in message
  # lcm(batch shards, processes): 8 shards over 2 processes -> multiples of 8.
  message = _problems(_config(**{"eval.batch_size": 100}), 8, 2, 4)
  assert "config.eval.batch_size=100 must be a multiple of 8" in message
  assert "3 local devices x 2 processes != 8 devices" in _problems(_config(), 8, 2, 3)
  assert "8 devices over 3 processes" in _problems(_config(), 8, 3)
  assert "config.distributed.num_processes=4 but the run has 2 processes" in \
      _problems(_config(**{"distributed.num_processes": 4}), 8, 2)


def test_micro_batches_are_split_over_the_batch_shards():
  config = _config(**{"train.global_batch_size": 64, "train.micro_batch_size": 4})
  _validate(config, 4)
  message = _problems(config, 8)
  assert "config.train.micro_batch_size=4 must be a multiple of 8" in message
  _validate(_config(**{"train.global_batch_size": 64, "train.micro_batch_size": 64}), 8)


def test_ser_stage_micro_batches_like_the_clap_stage():
  # Gradient caching is exact for any batch-level loss of per-example outputs (tests/test_train.py).
  _validate(_config(ser_pretrain, **{"train.micro_batch_size": 8}), 8)
  assert "config.train.micro_batch_size=4 must be a multiple of 8" in _problems(
      _config(ser_pretrain, **{"train.micro_batch_size": 4}), 8)


def test_eval_and_probe_sizes():
  config = _config(**{"eval.max_examples": 1, "eval.probe_train_examples": -5, "eval.retrieval_levels": 1,
                      "eval.retrieval_draws": 0, "eval.retrieval_top_k": 0, "eval.retrieval_bootstrap": 20})
  message = _problems(config, 1)
  for needle in ("config.eval.max_examples=1: must be 0 (the whole split) or >= 2",
                 "config.eval.probe_train_examples=-5", "config.eval.retrieval_levels=1",
                 "config.eval.retrieval_draws=0", "config.eval.retrieval_top_k=0",
                 "config.eval.retrieval_bootstrap=20: must be 0 (no interval) or >= 100"):
    assert needle in message
  _validate(_config(**{"eval.max_examples": 0, "eval.probe_train_examples": 0, "eval.retrieval_bootstrap": 0}), 1)


def test_loss_option_ranges():
  config = _config(**{"loss_options.rank_label_weights": (1.0, 2.0, 3.0), "loss_options.rank_terms": "each",
                      "loss_options.same_modality_weight": 0.5})
  message = _problems(config, 1)
  for needle in ("config.loss_options.rank_label_weights=(1.0, 2.0, 3.0): one weight >= 0 per "
                 "config.loss_options.rank_labels entry (2)", "config.loss_options.rank_terms='each'",
                 "config.loss_options.same_modality_weight=0.5 weighs the same-modality rows of the joint form: set "
                 "config.loss_options.joint=True"):
    assert needle in message
  assert "rank_label_weights=(0.0, 0.0)" in _problems(_config(**{"loss_options.rank_label_weights": (0.0, 0.0)}), 1)
  assert "same_modality_weight=-0.5: must be >= 0" in _problems(
      _config(**{"loss_options.joint": True, "loss_options.same_modality_weight": -0.5}), 1)
  _validate(_config(**{"loss_options.rank_label_weights": (1.0, 0.0), "loss_options.rank_terms": "per_label",
                       "loss_options.joint": True, "loss_options.same_modality_weight": 0.0}), 1)


def test_all_problems_are_listed_at_once():
  config = _config(**{"loss": "focal", "train.global_batch_size": 60, "train.micro_batch_size": 7,
                      "eval.batch_size": 100, "mesh.shape": (-1, 1, 1)})
  message = _problems(config, 8)
  lines = [line for line in message.splitlines() if line.startswith("  - ")]
  assert message.startswith("config does not fit 8 device(s) in 1 process(es): 5 problems:")
  assert len(lines) == 5
  for needle in ("config.loss='focal'", "config.train.global_batch_size=60 must be a multiple of 8",
                 "config.eval.batch_size=100 must be a multiple of 8",
                 "config.train.micro_batch_size=7 must be a multiple of 8",
                 "config.train.micro_batch_size=7 must divide config.train.global_batch_size=60"):
    assert sum(needle in line for line in lines) == 1, needle
  # A bad mesh: the batch sizes cannot be checked against it, the mesh and the other values are named.
  config = _config(**{"loss": "focal", "mesh.shape": (3, -1, 1)})
  lines = [line for line in _problems(config, 8).splitlines() if line.startswith("  - ")]
  assert len(lines) == 2 and "config.loss" in lines[0] and "config.mesh.shape" in lines[1]


def test_validate_lists_every_value_problem():
  config = _config(**{"loss": "focal", "model.size": "huge"})
  with pytest.raises(config_lib.ConfigError, match=r"(?s)2 problems.*config.loss='focal'.*config.model.size"):
    validation.validate(config)


@pytest.mark.parametrize("old, new", [("aoc_mean", "anchor_tau_arousal"), ("voc_s2t", "anchor_tau_valence_s2t"),
                                      ("retrieval_tau_valence", "voc"), ("retrieval_tau_std_arousal", "aoc_std")])
def test_a_renamed_best_metric_is_named_with_its_new_name(old, new):
  with pytest.raises(config_lib.ConfigError, match=rf"config.checkpoint.best_metric='{old}': metric '{old}' was "
                                                   rf"renamed '{new}'"):
    validation.validate(_config(**{"checkpoint.best_metric": old}))
  with pytest.raises(config_lib.ConfigError, match=r"the paper's AOC, Kendall's tau of retrieval order, is 'aoc'"):
    validation.validate(_config(**{"checkpoint.best_metric": "aoc_mean"}))
  validation.validate(_config(**{"checkpoint.best_metric": new}))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", ["data.max_seconds", "data.eval_max_seconds", "train.learning_rate",
                                 "loss_options.same_modality_weight", "data.embedded.min_seconds"])
def test_non_finite_values_are_refused_once_naming_the_key(key, value):
  assert validation.problems(_config(**{key: value})) == [f"config.{key}={value!r}: must be a finite number"]
  assert validation.problems(_config(**{"loss_options.rank_label_weights": (1.0, value)})) == [
      f"config.loss_options.rank_label_weights=(1.0, {value!r}): must be a finite number"]


def test_best_metric_is_one_the_stage_evaluation_gives(tmp_path):
  """checkpoint.best_metric against the stage's metric names under the config (Stage.metric_names, tested against
  the evaluation's output in test_export_and_inference.py / test_train.py), before any work."""
  with pytest.raises(config_lib.ConfigError, match=r"best_metric='no_such_metric': not among the 91 metrics the "
                                                   r"evaluation of the cross-modal stage gives with this config; e.g. "
                                                   r"aoc, voc, anchor_tau_arousal"):
    resolve.resolve(_config(**{"checkpoint.best_metric": "no_such_metric"}), str(tmp_path), "train")
  assert not os.listdir(tmp_path)  # refused before anything is written
  assert "did you mean 'aoc_voc_mean'" in _problems(_config(**{"checkpoint.best_metric": "aoc_voc_men"}), 8)
  validation.validate(_config(**{"checkpoint.best_metric": "aoc_ci95_low"}))
  assert "not among the 86 metrics" in _problems(_config(**{"checkpoint.best_metric": "aoc_ci95_low",
                                                            "eval.retrieval_bootstrap": 0}), 8)
  ser = _config(ser_pretrain, **{"checkpoint.best_metric": "aoc"})
  assert ("best_metric='aoc': not among the 8 metrics the evaluation of stage 1 (the speech emotion model) gives "
          "with this config; they are ser_ccc_arousal, ser_rank_accuracy_arousal") in _problems(ser, 8)
  validation.validate(_config(ser_pretrain, **{"checkpoint.best_metric": "ser_rank_accuracy_valence"}))


def test_rebuild_needs_a_manual_dir():
  config = _config(**{"data.name": "msp_podcast", "data.rebuild": True})
  with pytest.raises(config_lib.ConfigError, match=r"config.data.rebuild=True: rebuilding msp_podcast needs "
                                                   r"config.data.manual_dir"):
    validation.validate(config)
  validation.validate(_config(**{"data.name": "msp_podcast", "data.rebuild": True, "data.manual_dir": "/x"}))


def test_batch_size_keys_cover_every_global_batch():
  assert config_lib.batch_size_keys(default.get_config()) == ["train.global_batch_size", "eval.batch_size"]


@pytest.mark.parametrize("module", [default, demo, gpu, tpu_v4, ser_pretrain], ids=lambda m: m.__name__)
def test_shipped_configs_fit_1_and_8_devices(module):
  for devices in (1, 8):
    _validate(module.get_config(), devices)


@pytest.mark.slow
def test_validation_starts_no_jax_backend():
  """A sweep is validated on a login node: checking a config against a device count touches no device."""
  code = ("from erclap import validation; from erclap.configs import demo; "
          "validation.validate(demo.get_config(), validation.Devices(8, 1)); validation.validate(demo.get_config()); "
          "from jax._src import xla_bridge; assert not xla_bridge.backends_are_initialized()")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr


def test_real_device_count_passes(devices):
  assert Devices.current() == Devices(jax.device_count(), jax.process_count(), jax.local_device_count())
  _validate(demo.get_config(), jax.device_count(), jax.process_count(), jax.local_device_count())


def test_config_lib_holds_no_allowed_value_of_a_registry():
  """The registries are the only source of allowed values: config_lib names none of them."""
  with open(os.path.join(ROOT, "erclap", "config_lib.py")) as f:
    source = f.read()
  for values in (tuple(losses.LOSSES), losses.SIMILARITIES, ("msp_podcast", "iemocap"), ("wav2vec2", "hubert"),
                 ("attentive_stats", "ser_hidden", "ser_output", "bfloat16", "distilroberta")):
    for value in values:
      assert f'"{value}"' not in source, value


def _paired_mse(speech, text, batch, *, temperature, mesh=None, options=None):
  """A loss registered by a test: the mean squared distance of the paired embeddings."""
  del batch, temperature, mesh, options
  return ((speech - text) ** 2).sum(-1).mean()


def test_a_registered_loss_is_all_it_takes_to_validate(tmp_path):
  name = "paired_mse_registered_by_a_test"
  config = _config(**{"loss": name})
  with pytest.raises(config_lib.ConfigError, match=rf"config.loss='{name}': must be one of \('rnc', 'infonce', "
                                                   r"'supcon'"):
    _validate(config, 8)
  entry = losses.register(name, _paired_mse)
  assert losses.LOSSES[name] is entry
  _validate(config, 8)
  resolved = resolve.resolve(config, str(tmp_path), "train")  # what --config.loss=<it> goes through
  assert resolved.loss == name
  s, t = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
  assert float(losses.get_clap_loss(name)(s, t, {}, temperature=1.0)) == 2.0
  with pytest.raises(ValueError, match="registered already"):
    losses.register(name, _paired_mse)
  with pytest.raises(TypeError):
    losses.LOSSES[name + "_2"] = entry  # read only: register is the way in
