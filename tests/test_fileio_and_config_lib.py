"""Atomic writes (fileio), dotted config overrides (config_lib) and tree comparison by path (trees)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from erclap import config_lib, fileio, trees
from erclap.configs import default


# ---------------------------------------------------------------- fileio
def test_atomic_open_writes_the_whole_file_under_its_name(tmp_path):
  path = tmp_path / "out.json"
  fileio.write_json(str(path), {"b": 1, "a": [1.5, "x"]})
  assert json.loads(path.read_text()) == {"a": [1.5, "x"], "b": 1}
  fileio.write_npy(str(tmp_path / "x.npy"), np.arange(6).reshape(2, 3))
  np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(6).reshape(2, 3))
  assert sorted(os.listdir(tmp_path)) == ["out.json", "x.npy"]


def test_a_writer_that_raises_leaves_no_partial_file(tmp_path):
  path = tmp_path / "out.txt"
  with pytest.raises(RuntimeError, match="disk on fire"), fileio.atomic_open(str(path)) as f:
    f.write("half of it")
    raise RuntimeError("disk on fire")
  assert os.listdir(tmp_path) == []  # neither the target nor a temporary file
  path.write_text("old content")
  with pytest.raises(KeyboardInterrupt), fileio.atomic_path(str(path)) as tmp:
    with open(tmp, "w") as f:
      f.write("new")
    raise KeyboardInterrupt  # an interrupt mid-write is cleaned up too
  assert path.read_text() == "old content" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_refuses_a_directory_in_the_way_and_a_missing_directory(tmp_path):
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "keep.txt").write_text("x")
  with pytest.raises(IsADirectoryError, match=r"taken: a directory is in the way of this output file"):
    fileio.write_json(str(tmp_path / "taken"), {})
  assert os.listdir(tmp_path / "taken") == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["taken"]
  with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
    fileio.write_json(str(tmp_path / "nowhere" / "out.json"), {})


def test_remove_stale_temps_removes_only_temporaries(tmp_path):
  stale = os.path.basename(fileio.temp_path(str(tmp_path / "metrics.json")))
  assert stale.startswith(".metrics.json.tmp-") and fileio.is_temp_name(stale)
  for name in (stale, ".plot.png.tmp-123-abcdef12", "metrics.json", ".hidden", "notes.tmp-1"):
    (tmp_path / name).write_text("x")
  (tmp_path / ".dir.tmp-1-ab").mkdir()  # directories are never touched
  assert fileio.remove_stale_temps(str(tmp_path)) == 2
  assert sorted(os.listdir(tmp_path)) == [".dir.tmp-1-ab", ".hidden", "metrics.json", "notes.tmp-1"]
  assert fileio.remove_stale_temps(str(tmp_path / "absent")) == 0


# ---------------------------------------------------------------- config_lib.apply_overrides
def test_apply_overrides_sets_values_on_a_copy():
  base = default.get_config()
  config = config_lib.apply_overrides(base, {"train.learning_rate": 3e-5, "mesh.shape": (1, -1, 1),
                                             "loss": "infonce"})
  assert config.train.learning_rate == 3e-5 and tuple(config.mesh.shape) == (1, -1, 1)
  assert config.loss == "infonce" and base.loss != "infonce"  # the base config is unchanged
  config.train.num_steps = 3  # existing keys stay settable; new ones are refused (locked)
  with pytest.raises(AttributeError):
    config.train.no_such_key = 1


@pytest.mark.parametrize("overrides, needle", [
    ({"train.no_such_key": 1}, r"unknown config key 'train\.no_such_key' \(no 'train\.no_such_key'"),
    ({"trian.learning_rate": 1.0}, r"unknown config key 'trian\.learning_rate' \(no 'trian' in the config"),
    ({"train.learning_rate.x": 1.0}, r"unknown config key 'train\.learning_rate\.x'"),
    ({"train.global_batch_size": "big"}, r"config key 'train\.global_batch_size': cannot set 'big'"),
    ({"train": 1}, r"config key 'train' is a section, not a value"),
    ({"": 1}, r"override key '': must be a dotted config key"),
])
def test_apply_overrides_names_the_bad_key(overrides, needle):
  with pytest.raises(config_lib.ConfigError, match=r"^run 3: " + needle):
    config_lib.apply_overrides(default.get_config(), overrides, "run 3")


def test_unknown_key_lists_the_known_keys_of_its_section():
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.apply_overrides(default.get_config(), {"mesh.shapes": (1,)})
  assert "known there: axes, logical_axis_rules, shape" in str(info.value)
  assert isinstance(info.value, ValueError)
  with pytest.raises(config_lib.ConfigError, match="'mesh' is a section"):
    config_lib.check_key(default.get_config(), "mesh")
  config_lib.check_key(default.get_config(), "mesh.shape")


@pytest.mark.parametrize("value, text", [
    (1e-4, "0.0001"), (3, "3"), (True, "True"), (None, "None"), ("infonce", "infonce"),
    ((1, -1, 1), "(1,-1,1)"), (("arousal",), "('arousal',)"), ([2, 3], "(2,3)"),
])
def test_format_value_writes_what_config_flags_parse(value, text):
  assert config_lib.format_value(value) == text
  assert config_lib.override_flags({"a.b": value}) == [f"--config.a.b={text}"]


def test_format_value_refuses_other_types():
  with pytest.raises(config_lib.ConfigError, match=r"override value \{1: 2\}"):
    config_lib.format_value({1: 2})


# ---------------------------------------------------------------- trees
@dataclasses.dataclass
class _State:
  step: np.ndarray
  params: dict


jax.tree_util.register_dataclass(_State, data_fields=["step", "params"], meta_fields=[])


def _dataclass_tree(kernel_shape=(3, 4)):
  return _State(step=np.zeros(()), params={"dense": {"kernel": np.zeros(kernel_shape), "bias": np.zeros(4)},
                                           "layers": [np.zeros(2), np.zeros((2, 2))]})


def test_dataclass_and_dict_trees_with_the_same_leaves_compare_equal():
  as_dataclass = trees.leaf_shapes(_dataclass_tree())
  as_dicts = trees.leaf_shapes({"step": jax.ShapeDtypeStruct((), np.float32),
                                "params": {"dense": {"kernel": jax.ShapeDtypeStruct((3, 4), np.float32),
                                                     "bias": np.zeros(4)},
                                           "layers": {"0": np.zeros(2), "1": np.zeros((2, 2))}}})
  assert as_dataclass == {"step": (), "params/dense/bias": (4,), "params/dense/kernel": (3, 4),
                          "params/layers/0": (2,), "params/layers/1": (2, 2)}
  assert as_dicts == as_dataclass
  assert trees.mismatch_lines(as_dataclass, as_dicts) == []


def test_mismatch_lines_report_by_path():
  want = trees.leaf_shapes(_dataclass_tree())
  have = dict(trees.leaf_shapes(_dataclass_tree(kernel_shape=(4, 3))))
  del have["params/layers/0"]
  have["params/extra"] = (7,)
  assert trees.mismatch_lines(want, have) == [
      "  missing in checkpoint: params/layers/0 (2,)",
      "  unexpected in checkpoint: params/extra (7,)",
      "  shape mismatch: params/dense/kernel: checkpoint (4, 3) vs config (3, 4)",
  ]
  many = {f"w{i}": (i,) for i in range(5)}
  lines = trees.mismatch_lines(many, {}, have_name="file", limit=2)
  assert lines == ["  missing in file: w0 (0,)", "  missing in file: w1 (1,)", "  ... and 3 more"]

