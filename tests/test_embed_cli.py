"""`python -m erclap.embed` and long-audio windowing of the inference API, on a tiny model with random weights."""

from __future__ import annotations

import json
import os
import struct

import jax
import numpy as np
import pandas as pd
import pytest
import train_helpers as th
from scipy.io import wavfile

from erclap import embed, runtime, state, tokenization, workdir_lock
from erclap.data import audio as audio_io
from erclap.inference import ERCLAP


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """ERCLAP around freshly initialised tiny params (0.5 s crop = 8000 samples, 32-d embeddings)."""
  config = th.tiny_config(str(tmp_path_factory.mktemp("unused_data")))
  with config.unlocked():
    config.mesh.shape, config.mesh.axes = (-1,), ("data",)
  mesh = runtime.make_mesh(config)
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  net = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
  params = state.init_params(net, config, mesh, jax.random.key(0))
  return ERCLAP(config, net, params, tokenizer, mesh, step=0, batch_size=8)


def _noise(seconds: float, rate: int = 16000, seed: int = 0, channels: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  shape = (int(seconds * rate),) + ((channels,) if channels else ())
  return (0.3 * rng.standard_normal(shape)).clip(-1, 1).astype(np.float32)


@pytest.mark.slow
def test_long_clip_is_the_mean_of_its_windows(model):
  crop = model.num_samples
  x = _noise(3 * crop / 16000, seed=1)
  assert len(x) == 3 * crop
  emb, windows = model.embed_audio(x, return_windows=True)
  separate = model.embed_audio([x[:crop], x[crop:2 * crop], x[2 * crop:]])
  np.testing.assert_allclose(windows[0], separate, atol=2e-5)
  np.testing.assert_allclose(emb[0], _unit(_unit(separate).mean(0)), atol=2e-5)
  # Half-window hop on 2.3 crops: windows at 0, .5, 1, 1.5 crops; the last one (0.8 crop) padded and masked.
  y = x[:int(2.3 * crop)]
  emb, windows = model.embed_audio(y, window_seconds=crop / 16000, hop_seconds=crop / 32000, return_windows=True)
  pieces = [y[s:s + crop] for s in range(0, 2 * crop, crop // 2)]
  assert [len(p) for p in pieces] == [crop] * 3 + [int(2.3 * crop) - 3 * crop // 2]
  np.testing.assert_allclose(emb[0], _unit(_unit(model.embed_audio(pieces)).mean(0)), atol=2e-5)
  assert windows[0].shape == (4, emb.shape[1])
  # A clip up to one window is one window; clips of different lengths batch together without changing.
  short = model.embed_audio(x[:crop // 3])
  both = model.embed_audio([x[:crop // 3], x])
  np.testing.assert_allclose(both[0], short[0], atol=2e-5)
  with pytest.raises(ValueError, match="hop_seconds"):
    model.embed_audio(x, hop_seconds=1.0)


def test_window_starts_cover_the_clip():
  np.testing.assert_array_equal(audio_io.window_starts(100, 100, 50), [0])
  np.testing.assert_array_equal(audio_io.window_starts(300, 100, 100), [0, 100, 200])
  np.testing.assert_array_equal(audio_io.window_starts(301, 100, 100), [0, 100, 200, 300])
  np.testing.assert_array_equal(audio_io.window_starts(230, 100, 50), [0, 50, 100, 150])
  windows, masks = audio_io.split_windows(np.arange(1, 231, dtype=np.float32), 100, 50)
  assert masks.sum(1).tolist() == [100, 100, 100, 80]
  np.testing.assert_array_equal(windows[3, :80], np.arange(151, 231))
  assert not windows[3, 80:].any()


def _folder(root) -> dict[str, str]:
  """A long 44.1 kHz file, a stereo file, a 0.3 s file, a corrupt file and short clips (one in a sub-folder)."""
  root.mkdir(exist_ok=True)
  (root / "sub").mkdir(exist_ok=True)
  files = {"long": root / "long_44k.wav", "stereo": root / "stereo.wav", "tiny": root / "tiny.wav",
           "corrupt": root / "corrupt.wav", "a": root / "a.wav", "b": root / "sub" / "b.wav",
           "c": root / "c.wav"}
  wavfile.write(files["long"], 44100, audio_io.to_int16(_noise(3.0, 44100, seed=2)))
  wavfile.write(files["stereo"], 16000, _noise(0.7, channels=2, seed=3))
  wavfile.write(files["tiny"], 16000, audio_io.to_int16(_noise(0.3, seed=4)))
  files["corrupt"].write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
  for i, key in enumerate("abc"):
    wavfile.write(files[key], 16000, audio_io.to_int16(_noise(0.4 + 0.1 * i, seed=5 + i)))
  (root / "notes.txt").write_text("not audio")
  return {k: str(v) for k, v in files.items()}


def _read_shards(out) -> pd.DataFrame:
  shards = sorted(f for f in os.listdir(out) if f.startswith("shard-"))
  return pd.concat([pd.read_parquet(os.path.join(out, f)) for f in shards], ignore_index=True)


def test_embed_folder(model, tmp_path):
  files = _folder(tmp_path / "audio")
  out = str(tmp_path / "out")
  queries = ["A calm voice.", "An excited voice."]
  paths = embed.collect_paths(str(tmp_path / "audio"))
  assert sorted(paths) == paths and len(paths) == 7 and all(os.path.isabs(p) for p in paths)
  summary = embed.embed_files(model, paths, out, queries=queries, per_window=True, shard_size=3)
  assert (summary.total, summary.embedded, summary.unreadable, summary.rows) == (7, 6, 1, 6)
  frame = _read_shards(out).set_index("path")
  readable = [files[k] for k in ("long", "stereo", "tiny", "a", "b", "c")]
  assert sorted(frame.index) == sorted(readable)
  unreadable = pd.read_csv(os.path.join(out, "unreadable.tsv"), sep="\t")
  assert unreadable["path"].tolist() == [files["corrupt"]] and "corrupt.wav" in unreadable["error"][0]
  long_row, stereo_row = frame.loc[files["long"]], frame.loc[files["stereo"]]
  assert (long_row.sample_rate, long_row.channels, long_row.duration_s) == (44100, 1, pytest.approx(3.0))
  assert (stereo_row.sample_rate, stereo_row.channels, stereo_row.duration_s) == (16000, 2, pytest.approx(0.7))
  assert frame.loc[files["tiny"]].num_windows == 1 and long_row.num_windows == 6
  # The same numbers as the Python API on the same files (the stereo file mixed down by hand).
  speech = np.stack(frame.loc[readable, "speech_embedding"].to_numpy())
  stereo_mono = wavfile.read(files["stereo"])[1].mean(axis=1)
  reference = model.embed_audio([files["long"], stereo_mono, *readable[2:]])
  np.testing.assert_allclose(speech, reference, atol=2e-5)
  attrs = model.predict_attributes(readable)
  for name in ("arousal", "valence", "dominance"):
    np.testing.assert_allclose(frame.loc[readable, f"predicted_{name}"], attrs[name], atol=1e-4)
  sims = model.similarity(readable, queries)
  for j in range(2):
    np.testing.assert_allclose(frame.loc[readable, f"similarity_{j}"], sims[:, j], atol=1e-4)
  _, windows = model.embed_audio(files["long"], return_windows=True)
  np.testing.assert_allclose(np.stack(long_row.window_embeddings), windows[0], atol=2e-5)
  np.testing.assert_allclose(long_row.window_start_s, np.arange(6) * 0.5)
  with open(os.path.join(out, "run.json")) as f:
    assert json.load(f)["queries"] == queries


def test_embed_resumes_without_recomputing(model, tmp_path):
  _folder(tmp_path / "audio")
  paths = embed.collect_paths(str(tmp_path / "audio"))
  out = str(tmp_path / "out")
  first = embed.embed_files(model, paths[:4], out, shard_size=2)  # a run stopped after half the files
  shards = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if f.startswith("shard-")}
  before = _read_shards(out)
  (tmp_path / "out" / ".shard-00009.parquet.tmp-1-deadbeef").write_bytes(b"partial")  # a killed writer's debris
  second = embed.embed_files(model, paths, out, shard_size=2)
  assert (first.rows, first.unreadable) == (3, 1)  # a.wav, c.wav, long_44k.wav; corrupt.wav
  assert (second.skipped, second.embedded, second.rows, second.unreadable) == (3, 3, 6, 1)  # corrupt: tried again
  for name, mtime in shards.items():
    assert os.stat(os.path.join(out, name)).st_mtime_ns == mtime  # finished shards are not rewritten
  after = _read_shards(out)
  assert after["path"].is_unique and sorted(after["path"]) == sorted(p for p in paths if "corrupt" not in p)
  pd.testing.assert_frame_equal(after.iloc[:len(before)], before)
  assert not [f for f in os.listdir(out) if ".tmp-" in f]
  third = embed.embed_files(model, paths, out, shard_size=2)
  assert (third.embedded, third.rows, third.unreadable) == (0, 6, 1)
  with pytest.raises(ValueError, match="other settings"):
    embed.embed_files(model, paths, out, queries=["A calm voice."])


def test_collect_paths_from_lists(tmp_path):
  files = _folder(tmp_path / "audio")
  (tmp_path / "list.csv").write_text(f"path,label\naudio/a.wav,1\n{files['b']},2\naudio/a.wav,1\n")
  assert embed.collect_paths(str(tmp_path / "list.csv")) == [files["a"], files["b"]]
  (tmp_path / "list.txt").write_text(f"# clips\naudio/c.wav\n\n{files['tiny']}\n")
  assert embed.collect_paths(str(tmp_path / "list.txt")) == [files["c"], files["tiny"]]
  (tmp_path / "bad.csv").write_text("file\naudio/a.wav\n")
  with pytest.raises(ValueError, match="'path' column"):
    embed.collect_paths(str(tmp_path / "bad.csv"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    embed.collect_paths(str(tmp_path / "nowhere"))


def test_flac_and_ogg_are_read(tmp_path):
  soundfile = pytest.importorskip("soundfile")
  x = _noise(0.5, 22050, seed=9, channels=2)
  soundfile.write(tmp_path / "clip.flac", x, 22050, subtype="PCM_16")
  decoded = audio_io.load_audio(str(tmp_path / "clip.flac"), 16000)
  assert (decoded.sample_rate, decoded.channels) == (22050, 2)
  reference = audio_io.resample(np.round(x * 32767).astype(np.int16).mean(axis=1) / 32768, 22050, 16000)
  np.testing.assert_allclose(decoded.wave, reference, atol=1e-4)
  assert str(tmp_path / "clip.flac") in embed.collect_paths(str(tmp_path))


@pytest.mark.slow
def test_embed_command_line(trained_workdir, tmp_path, capsys):
  """The command on a trained checkpoint (the suite's trained workdir, read only): exit 0 with a readable file, 1
  when every file fails."""
  files = _folder(tmp_path / "audio")
  args = [f"--model={trained_workdir}", f"--out={tmp_path / 'out'}", "--queries=A calm voice.",
          "--batch_size=8", "--window_seconds=1.0", "--hop_seconds=0.5"]
  assert embed.main([*args, f"--audio={tmp_path / 'audio'}"]) == 0
  frame = _read_shards(tmp_path / "out")
  assert len(frame) == 6 and frame.set_index("path").loc[files["long"], "num_windows"] == 5
  assert "clips/s" in capsys.readouterr().err
  (tmp_path / "bad.txt").write_text(f"{files['corrupt']}\nmissing.wav\n")
  assert embed.main([*args[:1], f"--out={tmp_path / 'out2'}", f"--audio={tmp_path / 'bad.txt'}"]) == 1
  assert len(pd.read_csv(tmp_path / "out2" / "unreadable.tsv", sep="\t")) == 2


def test_zero_hz_header_and_non_utf8_name_are_listed_and_the_rest_embedded(model, tmp_path):
  files = _folder(tmp_path / "audio")
  os.remove(files["corrupt"])
  zero_hz = tmp_path / "audio" / "zero_hz.wav"
  wavfile.write(zero_hz, 16000, audio_io.to_int16(_noise(0.5, seed=11)))
  header = bytearray(zero_hz.read_bytes())
  header[24:32] = struct.pack("<II", 0, 0)  # the fmt chunk's sample rate and byte rate
  zero_hz.write_bytes(bytes(header))
  bad_name = os.path.join(os.fsencode(tmp_path / "audio"), b"take-\xff.wav")  # Latin-1 bytes: not UTF-8
  with open(bad_name, "wb") as f:
    f.write(open(files["a"], "rb").read())
  paths = embed.collect_paths(str(tmp_path / "audio"))
  out = str(tmp_path / "out")
  summary = embed.embed_files(model, paths, out, shard_size=4)
  assert (summary.total, summary.embedded, summary.unreadable) == (8, 6, 2)
  assert sorted(_read_shards(out)["path"]) == sorted(files[k] for k in ("long", "stereo", "tiny", "a", "b", "c"))
  listed = pd.read_csv(os.path.join(out, "unreadable.tsv"), sep="\t", encoding="utf-8").set_index("path")["error"]
  escaped = os.path.join(str(tmp_path / "audio"), "take-\\xff.wav")
  assert sorted(listed.index) == sorted([str(zero_hz), escaped])
  assert "sample rate of 0 Hz" in listed[str(zero_hz)] and "not valid UTF-8" in listed[escaped]
  again = embed.embed_files(model, paths, out, shard_size=4)  # both tried again, listed once each
  assert (again.embedded, again.unreadable, again.rows) == (0, 2, 6)
  assert len(pd.read_csv(os.path.join(out, "unreadable.tsv"), sep="\t")) == 2


def test_second_run_on_one_output_directory_is_refused(model, tmp_path):
  files = _folder(tmp_path / "audio")
  out = str(tmp_path / "out")
  with embed.output_lock(out):  # a run writing there now
    with pytest.raises(workdir_lock.WorkdirLockedError) as info:
      embed.embed_files(model, [files["a"]], out)
  message = str(info.value)
  assert f"Output directory {out} is in use by another run" in message and f"pid {os.getpid()}" in message
  assert "--out" in message and not [n for n in os.listdir(out) if n != ".erclap.lock"]
  assert embed.embed_files(model, [files["a"]], out).rows == 1  # released: the next run goes on


def test_output_path_that_is_a_file_or_read_only_stops_before_the_model_loads(tmp_path, capsys):
  _folder(tmp_path / "audio")
  (tmp_path / "taken").write_text("notes")
  args = ["--model=/nonexistent/model", f"--audio={tmp_path / 'audio'}"]
  assert embed.main([*args, f"--out={tmp_path / 'taken'}"]) == 2
  assert f"--out={tmp_path / 'taken'} is a file, not a directory" in capsys.readouterr().err
  assert (tmp_path / "taken").read_text() == "notes"
  (tmp_path / "ro").mkdir()
  (tmp_path / "ro").chmod(0o555)
  try:
    out = "/sys/kernel/out" if os.access(tmp_path / "ro", os.W_OK) else str(tmp_path / "ro" / "out")  # root: sysfs
    assert embed.main([*args, f"--out={out}"]) == 2
    assert f"error: Output directory {out} is not writable" in capsys.readouterr().err
  finally:
    (tmp_path / "ro").chmod(0o755)
