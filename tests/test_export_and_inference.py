"""Export (--mode=export), evaluation of a checkpoint, and the inference API on a tiny trained model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import train_helpers as th
from scipy import signal as scipy_signal

from erclap import data, descriptions, evaluate, export, metrics, resolve, stages, tower_init
from erclap.configs import default as default_config
from erclap.data import audio as audio_io
from erclap.inference import ERCLAP
from erclap.schema import LABEL_NAMES

# Every test here reads the suite's trained workdir (a training run): the whole module is slow.
pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(data_dir, trained_workdir, tmp_path_factory):
  """(config, workdir): a copy of the suite's trained workdir (60 steps), which these tests write into."""
  workdir = str(tmp_path_factory.mktemp("run") / "run")
  shutil.copytree(os.path.join(trained_workdir, "checkpoints"), os.path.join(workdir, "checkpoints"))
  return th.tiny_config(data_dir, **th.TRAINED_STEPS), workdir


def test_export_writes_complete_files(trained):
  config, workdir = trained
  results = export.export_embeddings(th.resolved(config, workdir, "export"), workdir)
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
  for key in ("aoc", "voc", "anchor_tau_arousal", "anchor_tau_valence", "mmd", "wasserstein"):
    assert np.isfinite(saved["metrics"][key])
  for view in ("report.html", "projector_config.pbtxt", "projector/test.bytes", "projector/test_metadata.tsv"):
    assert os.path.isfile(os.path.join(out, view)), view
  # AOC / VOC and their intervals recompute from the export alone (the query pools, the speech, the labels)
  queries = np.load(os.path.join(out, export.QUERIES_FILE))
  for name, attribute in (("aoc", "arousal"), ("voc", "valence")):
    q = queries[f"{attribute}_embeddings"]
    r = metrics.retrieval_kendall_tau(
        metrics.l2_normalize(q) @ speech.T, queries[f"{attribute}_values"], frame[attribute].to_numpy(np.float64),
        num_levels=config.eval.retrieval_levels, num_draws=config.eval.retrieval_draws,
        top_k=config.eval.retrieval_top_k, seed=config.seed, num_bootstrap=config.eval.retrieval_bootstrap)
    assert (r["tau"], r["ci_low"], r["ci_high"]) == pytest.approx(
        tuple(saved["metrics"][f"{name}{key}"] for key in ("", "_ci95_low", "_ci95_high")))
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
  command = th.main_command(workdir, config.data.data_dir, mode="export", **th.TRAINED_STEPS)
  out = os.path.join(workdir, "export")
  shutil.rmtree(out, ignore_errors=True)  # an earlier export's files and directories (projector/)
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
    elif name.endswith(".html"):
      with open(path) as f:
        assert f.read().rstrip().endswith("</html>")


def test_eval_mode_writes_test_metrics(trained, capsys):
  config, workdir = trained
  result = evaluate.evaluate_checkpoint(th.resolved(config, workdir, "eval"), workdir)
  assert os.path.exists(os.path.join(workdir, "eval", f"test_{th.TRAINED_STEPS['train.num_steps']}.json"))
  assert np.isfinite(result["aoc"]) and np.isfinite(result["anchor_tau_arousal"])
  assert sorted(result) == sorted(stages.CLAP.metric_names(config))  # what checkpoint.best_metric is checked against
  for name in ("aoc", "voc"):  # the bootstrap interval of each, the table's first rows after it
    assert result[f"{name}_ci95_low"] <= result[f"{name}_ci95_high"]
  rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
  assert rows[:6] == ["aoc", "aoc_ci95_low", "aoc_ci95_high", "voc", "voc_ci95_low", "voc_ci95_high"]
  # Beside the metrics, the temperature the loss had at that step (learned: moved from its initial value).
  _, params = tower_init.read_workdir_params(workdir)
  assert result["temperature"] == pytest.approx(float(np.exp(params["log_temperature"])), rel=1e-6)
  assert result["temperature"] != pytest.approx(config.train.temperature_init, rel=1e-4)
  for attribute in LABEL_NAMES:  # level prompts from the description templates; the fixed and paraphrased apart
    assert f"ccc_zero_shot_{attribute}" in result and f"ccc_zero_shot_fixed_{attribute}" in result
    assert f"ccc_zero_shot_paraphrase_{attribute}" in result and f"prompt_monotone_paraphrase_{attribute}" in result


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


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zero_shot_uses_the_description_generator(trained):
  config, workdir = trained
  model = ERCLAP.load(workdir)
  calm, excited, _, _ = _extreme_test_clips(config)
  speech = model.embed_audio([calm, excited])
  attrs = model.predict_attributes([calm, excited])
  for attribute in LABEL_NAMES:
    levels, texts = descriptions.level_descriptions(attribute, num_wordings=config.eval.prompt_wordings,
                                                    seed=config.seed)
    assert len(texts) == 7 * config.eval.prompt_wordings == 56
    text_emb = model.embed_text(texts)
    per_level = np.stack([_unit(_unit(text_emb[levels == v]).mean(0)) for v in range(1, 8)])
    np.testing.assert_allclose(model.level_prompts()["prompts"][attribute], per_level, atol=1e-5)
    z = per_level @ speech.T / 0.05  # softmax over the 7 levels, temperature 0.05
    w = np.exp(z - z.max(0))
    np.testing.assert_allclose(attrs[attribute], np.arange(1, 8) @ (w / w.sum(0)), rtol=1e-4)


def test_inference_inputs_are_converted_like_the_reference(trained):
  _, workdir = trained
  model = ERCLAP.load(workdir)
  rng = np.random.default_rng(0)
  pcm = rng.integers(-20000, 20000, 6000).astype(np.int16)
  np.testing.assert_allclose(model.embed_audio(pcm), model.embed_audio(pcm / 32768.0), atol=1e-5)
  pcm32 = pcm.astype(np.int32) * 65536
  np.testing.assert_allclose(model.embed_audio(pcm32), model.embed_audio(pcm / 32768.0), atol=1e-5)
  x48 = (0.3 * rng.standard_normal(24000)).astype(np.float32)
  np.testing.assert_allclose(model.embed_audio(x48, sample_rate=48000),
                             model.embed_audio(scipy_signal.resample_poly(x48, 1, 3)), atol=1e-5)
  attrs = model.predict_attributes([x48], sample_rate=48000)
  np.testing.assert_allclose(attrs["arousal"], model.predict_attributes(scipy_signal.resample_poly(x48, 1, 3))
                             ["arousal"], atol=1e-4)
  with pytest.raises(ValueError, match=r"\(16000, 2\).*mix it down"):
    model.similarity(np.zeros((16000, 2), np.float32), ["a calm voice"])


def test_as_waveforms_pcm_and_shape_rules():
  rng = np.random.default_rng(1)
  ints = rng.integers(-32768, 32767, 500).astype(np.int16)
  np.testing.assert_array_equal(audio_io.as_waveforms(ints)[0], ints.astype(np.float64) / 32768)
  i32 = rng.integers(-2 ** 31, 2 ** 31 - 1, 500).astype(np.int32)
  np.testing.assert_allclose(audio_io.as_waveforms(i32)[0], i32 / 2.0 ** 31, rtol=1e-7)
  u8 = np.array([0, 64, 128, 255], np.uint8)
  np.testing.assert_array_equal(audio_io.as_waveforms(u8)[0], [-1.0, -0.5, 0.0, 127 / 128])
  with pytest.raises(ValueError, match=r"audio\[0\].*int64"):
    audio_io.as_waveforms(ints.astype(np.int64))
  two = audio_io.as_waveforms(np.zeros((2, 100), np.float32))  # (clips, samples)
  assert len(two) == 2 and two[0].shape == (100,)
  for stereo in (np.zeros((100, 2), np.float32), np.zeros((100, 8), np.float32)):
    with pytest.raises(ValueError, match="mix it down"):
      audio_io.as_waveforms(stereo)
  with pytest.raises(ValueError, match=r"audio\[1\].*mix"):
    audio_io.as_waveforms([np.zeros(100), np.zeros((100, 2))])
  with pytest.raises(ValueError, match=r"audio\[1\].*NaN"):
    audio_io.as_waveforms([np.zeros(100), np.array([0.0, np.nan])])
  with pytest.raises(ValueError, match=r"audio\[0\]: empty"):
    audio_io.as_waveforms([np.zeros(0)])
  with pytest.raises(ValueError, match="sample_rate"):
    audio_io.as_waveforms(np.zeros(100), sample_rate=-8000)
  x = rng.standard_normal(4410).astype(np.float32)
  np.testing.assert_allclose(audio_io.as_waveforms(x, sample_rate=44100)[0],
                             scipy_signal.resample_poly(x, 160, 441), atol=1e-6)


def test_stored_configs_gain_new_keys_with_defaults():
  stored = default_config.get_config().to_dict()
  del stored["eval"]["prompt_wordings"]
  stored["data"]["speech_features"] = "/a/cache"
  config = resolve.for_inference(stored, dtype="bfloat16")
  assert config.eval.prompt_wordings == default_config.get_config().eval.prompt_wordings
  assert config.data.speech_features == "" and config.model.dtype == "bfloat16"
  assert tuple(config.mesh.shape) == (-1,) and tuple(config.mesh.axes) == ("data",)
  with pytest.raises(ValueError, match="dtype='fp8'"):
    resolve.for_inference(stored, dtype="fp8")
  # As read back from a checkpoint's JSON (lists, empty ones among them), lacking a key whose default is ()
  stored = json.loads(json.dumps(default_config.get_config().to_dict()))
  del stored["loss_options"]["rank_label_weights"]
  assert tuple(resolve.for_inference(stored).loss_options.rank_label_weights) == ()
