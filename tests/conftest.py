"""Test set-up: 8 simulated CPU devices for every test (must run before jax is imported), and the tiny corpus."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow (clu writers, TFDS) off accelerators
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import pytest
from train_helpers import tiny_config

from erclap import data

jax.config.update("jax_threefry_partitionable", True)


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, f"expected 8 simulated devices, got {len(devs)}: XLA_FLAGS was set too late"
  return devs


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The TFDS data dir holding the built tiny corpus (train_helpers.TINY_CORPUS): built once per test run.

  Under pytest-xdist the workers share one directory (the corpus build holds a file lock, so the first
  worker builds it and the others wait and reuse it)."""
  base = tmp_path_factory.getbasetemp()
  path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny_corpus"
  path.mkdir(exist_ok=True)
  data.ensure_dataset(tiny_config(str(path)).data)
  return str(path)


@pytest.fixture
def tiny_embedded(data_dir):
  """(config, data_dir): a fresh tiny config (train_helpers.tiny_config) on the built tiny corpus."""
  return tiny_config(data_dir), data_dir
