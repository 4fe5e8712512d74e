"""Export (--mode=export), evaluation of a checkpoint, and the inference API on a tiny trained model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import train_helpers as th

from erclap import data, descriptions, evaluate, export, train
from erclap.inference import ERCLAP

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny model trained on the tiny embedded corpus: (config, workdir)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("run"))
  config = th.tiny_config(data_dir, **{"train.num_steps": 60, "checkpoint.every_steps": 60,
                                       "train.log_every_steps": 20, "train.learning_rate": 2e-3})
  data.ensure_dataset(config.data)
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_export_writes_complete_files(trained):
  config, workdir = trained
  results = export.export_embeddings(config, workdir)
  out = os.path.join(workdir, "export")
  frame = pd.read_parquet(os.path.join(out, "test.parquet"))
  assert len(frame) == config.data.embedded.num_test
  assert list(frame.columns[:6]) == ["id", "split", "arousal", "valence", "dominance", "description"]
  speech = np.stack(frame["speech_embedding"].to_numpy())
  text = np.stack(frame["text_embedding"].to_numpy())
  assert speech.shape == text.shape == (len(frame), config.model.joint_dim)
  assert np.all(np.isfinite(speech)) and np.all(np.isfinite(text))
  np.testing.assert_allclose(np.linalg.norm(speech, axis=1), 1.0, rtol=1e-4)
  assert frame["id"].is_unique and frame["description"].str.len().min() > 0
  np.testing.assert_array_equal(np.load(os.path.join(out, "test_speech.npy")), speech)
  with open(os.path.join(out, "test_metrics.json")) as f:
    saved = json.load(f)
  assert saved["metrics"] == pytest.approx(results["test"], nan_ok=True)  # undefined taus stay NaN
  for key in ("aoc_mean", "voc_mean", "mmd", "wasserstein"):
    assert np.isfinite(saved["metrics"][key])
  pngs = [f for f in os.listdir(out) if f.endswith(".png")]
  assert len(pngs) >= 3
  for name in pngs:
    with open(os.path.join(out, name), "rb") as f:
      head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(os.path.join(out, name)) > 1000
  assert not [f for f in os.listdir(out) if ".tmp" in f]


@pytest.mark.slow
def test_interrupted_export_leaves_only_complete_files(trained, tmp_path):
  config, workdir = trained
  command = th.main_command(workdir, config.data.data_dir, mode="export",
                            **{"train.num_steps": 60, "checkpoint.every_steps": 60})
  out = os.path.join(workdir, "export")
  for name in os.listdir(out) if os.path.isdir(out) else []:
    os.remove(os.path.join(out, name))
  proc = subprocess.Popen(command, cwd=th.ROOT, env=th.subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(out) and any(not f.startswith(".") for f in os.listdir(out)):
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  for name in os.listdir(out):
    path = os.path.join(out, name)
    if name.startswith("."):
      continue  # a temporary file of the killed writer: never a visible output
    if name.endswith(".parquet"):
      assert len(pd.read_parquet(path)) == config.data.embedded.num_test
    elif name.endswith(".npy"):
      assert np.load(path).shape[0] == config.data.embedded.num_test
    elif name.endswith(".json"):
      with open(path) as f:
        json.load(f)
    elif name.endswith(".png"):
      with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_eval_mode_writes_test_metrics(trained):
  config, workdir = trained
  result = evaluate.evaluate_checkpoint(config, workdir)
  assert os.path.exists(os.path.join(workdir, "eval", "test_60.json"))
  assert np.isfinite(result["aoc_mean"])


def _extreme_test_clips(config):
  source = data.get_data_source(config.data, config.data.test_split)
  records = [source[i] for i in range(len(source))]
  arousal = np.array([r["arousal"] for r in records])
  calm, excited = records[int(np.argmin(arousal))], records[int(np.argmax(arousal))]
  to_float = lambda a: np.asarray(a, np.float32) / (32768.0 if np.asarray(a).dtype == np.int16 else 1.0)
  return to_float(calm["audio"]), to_float(excited["audio"]), calm["arousal"], excited["arousal"]


def test_inference_ranks_excited_clip_above_calm_for_excited_description(trained):
  config, workdir = trained
  model = ERCLAP.load(workdir)
  calm, excited, calm_arousal, excited_arousal = _extreme_test_clips(config)
  assert excited_arousal - calm_arousal >= 3
  order, scores = model.rank([calm, excited], descriptions.describe(7.0, 4.0, 4.0, variant=0))
  assert order[0] == 1, scores
  sims = model.similarity([calm, excited], ["a calm voice", "an excited voice"])
  assert sims.shape == (2, 2) and np.all(np.abs(sims) <= 1.0 + 1e-5)
  attrs = model.predict_attributes([calm, excited])
  assert set(attrs) == {"arousal", "valence", "dominance"}
  assert attrs["arousal"][1] > attrs["arousal"][0]
  emb = model.embed_audio(np.stack([calm[:8000], excited[:8000]]))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)


def test_inference_bad_input_is_named(trained, tmp_path):
  _, workdir = trained
  model = ERCLAP.load(os.path.join(workdir, "checkpoints", "60"))
  assert model.step == 60
  with pytest.raises(ValueError, match="audio"):
    model.embed_audio([])
  with pytest.raises(ValueError, match=r"audio\[0\]"):
    model.embed_audio([np.zeros((2, 2, 2), np.float32)])
  with pytest.raises(ValueError, match="texts"):
    model.embed_text([])
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF\x00\x00not really a wav")
  with pytest.raises(Exception, match="broken.wav"):
    model.embed_audio([str(broken)])
  with pytest.raises(FileNotFoundError, match="not an ERCLAP workdir"):
    ERCLAP.load(str(tmp_path))
