"""Test set-up: 8 simulated CPU devices for every test (must run before jax is imported), the tiny corpus and
a trained workdir, each built once per test run."""

import fcntl
import os

# Quick XLA CPU compiles: the suite's programs are tiny, so compiling them costs far more than running them
# (backend optimisation off: test_losses.py 104 s -> 80 s on a 2-core machine; the older loop emitters instead of the
# fusion emitters: three compile-bound tests 56 s -> 46 s). Every comparison in the suite is between programs
# compiled under these same flags (train_helpers.subprocess_env passes them on).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow (clu writers, TFDS) off accelerators
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import pytest
from train_helpers import TRAINED_STEPS, resolved, tiny_config

from erclap import data, train

jax.config.update("jax_threefry_partitionable", True)


@pytest.fixture(scope="session")
def devices():
  devs = jax.devices()
  assert len(devs) == 8, f"expected 8 simulated devices, got {len(devs)}: XLA_FLAGS was set too late"
  return devs


def _shared_dir(tmp_path_factory, name: str):
  """A directory of this test run that pytest-xdist workers share (a worker's own base dir otherwise)."""
  base = tmp_path_factory.getbasetemp()
  path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
  path.mkdir(exist_ok=True)
  return path


@pytest.hookimpl(trylast=True)  # after pytest's own pytest_configure has made the temporary-path factory
def pytest_configure(config):
  """One persistent XLA compilation cache per test run, shared by the xdist workers and, through the
  environment, by every `erclap.main` subprocess: the suite compiles the same tiny programs in many tests and
  launches (a 2-step tiny training launch: 380 s without, 81 s with the programs cached, on a loaded
  2-core machine). Set before any test module is imported: JAX decides on its first compilation whether a
  cache is used. Each run starts with an empty one."""
  path = _shared_dir(config._tmp_path_factory, "jax_compilation_cache")
  settings = {"jax_compilation_cache_dir": str(path), "jax_persistent_cache_min_compile_time_secs": 0,
              "jax_persistent_cache_min_entry_size_bytes": -1}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)


# The modules that take longest (each one to four minutes of a 2-core machine's suite) run first: under
# `--dist loadfile --no-loadscope-reorder` (the Makefile) a module is one unit of work, handed out in collection
# order, so the workers end on short modules instead of one idling while the other finishes a long one.
# (pytest-xdist's own order, without --no-loadscope-reorder, puts the modules with the most tests first and left
# the longest module, three tests, to the end.)
LONGEST_FIRST = ("test_train_runs.py", "test_members.py", "test_recipe.py", "test_train.py",
                 "test_multihost_and_signals.py", "test_sweep_tensorboard.py", "test_speech_cache.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The TFDS data dir holding the built tiny corpus (train_helpers.TINY_CORPUS): built once per test run.

  Under pytest-xdist the workers share one directory (the corpus build holds a file lock, so the first
  worker builds it and the others wait and reuse it)."""
  path = _shared_dir(tmp_path_factory, "tiny_corpus")
  data.ensure_dataset(tiny_config(str(path)).data)
  return str(path)


@pytest.fixture
def tiny_embedded(data_dir):
  """(config, data_dir): a fresh tiny config (train_helpers.tiny_config) on the built tiny corpus."""
  return tiny_config(data_dir), data_dir


@pytest.fixture(scope="session")
def trained_workdir(data_dir, tmp_path_factory):
  """A workdir of the tiny config trained for ``TRAINED_STEPS`` (train_helpers), trained once per test run.

  Shared by the modules that need some trained checkpoint (and by the xdist workers: the first trains it under
  a file lock, the others wait and reuse it). Read it only; a test that writes into a workdir copies its
  checkpoints/ into one of its own."""
  path = _shared_dir(tmp_path_factory, "trained_workdir")
  done = path / "TRAINED"
  with open(path.parent / "trained_workdir.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      run = str(path / "run")
      train.train_and_evaluate(resolved(tiny_config(data_dir, **TRAINED_STEPS), run), run)
      done.touch()
  return str(path / "run")
