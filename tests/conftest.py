"""Test set-up: 8 simulated CPU devices for every test (must run before jax is imported)."""

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

jax.config.update("jax_threefry_partitionable", True)


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, f"expected 8 simulated devices, got {len(devs)}: XLA_FLAGS was set too late"
  return devs


# ---------------------------------------------------------------- data fixtures (issue 5)
TINY_EMBEDDED = dict(num_train=40, num_validation=10, num_test=12, num_speakers=4, min_seconds=0.3,
                     max_seconds=0.9, label_noise=0.3, seed=7)


def tiny_data_config(data_dir, **embedded_overrides):
  """The default config with config.data pointed at a tiny embedded corpus in ``data_dir``."""
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if root not in sys.path:
    sys.path.insert(0, root)
  from erclap.configs import default

  config = default.get_config()
  config.data.data_dir = str(data_dir)
  for key, value in {**TINY_EMBEDDED, **embedded_overrides}.items():
    config.data.embedded[key] = value
  return config


@pytest.fixture(scope="session")
def tiny_embedded(tmp_path_factory):
  """(config, data_dir) of a built 40/10/12-clip embedded corpus of 0.3–0.9 s clips, shared by a session."""
  from erclap import data

  data_dir = tmp_path_factory.mktemp("tiny_embedded")
  config = tiny_data_config(data_dir)
  config.data.max_seconds = 0.5
  config.data.max_text_tokens = 32
  data.ensure_dataset(config.data)
  return config, str(data_dir)
