"""Audio I/O, the synthesised corpora (embedded, espeak), the registry and the TFDS builders (embedded, espeak, fake
MSP-Podcast and IEMOCAP layouts)."""

import csv
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
from scipy import signal, stats
from scipy.io import wavfile
from train_helpers import TINY_CORPUS, tiny_data_config

from erclap import data
from erclap.data import audio as audio_io
from erclap.data import builders, embedded, espeak

# ----------------------------------------------------------------------------- audio I/O


def _write_pcm24(path, samples_int32, rate, channels=1):
  """A 24-bit PCM WAV written by hand (scipy cannot write 24-bit)."""
  raw = np.asarray(samples_int32, np.int32).reshape(-1)
  b = raw.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
  block = 3 * channels
  header = b"RIFF" + struct.pack("<I", 36 + len(b)) + b"WAVE"
  header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 24)
  header += b"data" + struct.pack("<I", len(b))
  with open(path, "wb") as f:
    f.write(header + b)


def test_read_audio_formats(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.9, 0.9, 800)
  p16 = tmp_path / "a16.wav"
  wavfile.write(p16, 16000, np.round(x * 32767).astype(np.int16))
  np.testing.assert_allclose(audio_io.read_audio(str(p16)), np.round(x * 32767) / 32768, atol=1e-6)
  pf = tmp_path / "f32.wav"
  wavfile.write(pf, 16000, x.astype(np.float32))
  np.testing.assert_allclose(audio_io.read_audio(str(pf)), x, atol=1e-6)
  p24 = tmp_path / "a24.wav"
  ints = np.round(x * (2 ** 23 - 1)).astype(np.int32)
  _write_pcm24(p24, ints, 16000)
  np.testing.assert_allclose(audio_io.read_audio(str(p24)), ints / 2 ** 23, atol=1e-6)
  p32 = tmp_path / "a32.wav"
  wavfile.write(p32, 16000, np.round(x * (2 ** 31 - 1)).astype(np.int32))
  np.testing.assert_allclose(audio_io.read_audio(str(p32)), x, atol=1e-6)
  stereo = tmp_path / "stereo.wav"
  wavfile.write(stereo, 16000, np.stack([x, -x / 2], axis=1).astype(np.float32))
  np.testing.assert_allclose(audio_io.read_audio(str(stereo)), x / 4, atol=1e-6)


def test_read_audio_resamples_44k(tmp_path):
  t = np.arange(44100) / 44100.0
  x = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
  path = tmp_path / "tone.wav"
  wavfile.write(path, 44100, x.astype(np.float32))
  y = audio_io.read_audio(str(path), 16000)
  assert y.shape == (16000,)
  reference = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(16000) / 16000.0)
  np.testing.assert_allclose(y[200:-200], reference[200:-200], atol=2e-3)  # edges see the filter's ramp


def test_read_audio_errors_name_the_file(tmp_path):
  bad = tmp_path / "broken.wav"
  bad.write_bytes(b"RIFF0000WAVEnot really audio")
  with pytest.raises(ValueError, match="broken.wav"):
    audio_io.read_audio(str(bad))
  with pytest.raises(ValueError, match="missing.wav.*not found"):
    audio_io.read_audio(str(tmp_path / "missing.wav"))


# ----------------------------------------------------------------------------- embedded corpus


def test_embedded_spec_name_changes_with_every_field():
  base = embedded.EmbeddedSpec()
  names = {base.config_name()}
  for field, value in dict(num_train=1, num_validation=2, num_test=3, num_speakers=2, min_seconds=1.5,
                           max_seconds=3.5, label_noise=0.1, seed=1, sample_rate=22050, version=99).items():
    names.add(embedded.EmbeddedSpec(**{**base.__dict__, field: value}).config_name())
  assert len(names) == 11
  assert embedded.EmbeddedSpec().config_name() == base.config_name()
  with pytest.raises(ValueError, match="min_seconds"):
    embedded.EmbeddedSpec(min_seconds=3.0, max_seconds=2.0)


def test_embedded_examples_are_deterministic_and_cover_the_scale():
  spec = embedded.EmbeddedSpec(min_seconds=0.3, max_seconds=0.6)
  a, b = embedded.generate_example(spec, "train", 3), embedded.generate_example(spec, "train", 3)
  np.testing.assert_array_equal(a["audio"], b["audio"])
  assert a["id"] == "embedded-train-000003" and a["audio"].dtype == np.int16
  assert not np.array_equal(a["audio"][:4000], embedded.generate_example(spec, "test", 3)["audio"][:4000])
  keys = ("arousal", "valence", "dominance")
  labels = np.array([[embedded.generate_example(spec, "train", i)[k] for k in keys] for i in range(150)])
  assert labels.min() >= 1 and labels.max() <= 7
  assert np.all(labels.min(0) < 1.8) and np.all(labels.max(0) > 6.2) and np.all(labels.std(0) > 1.3)


def _f0(wave, sr=16000):
  """Median autocorrelation pitch (Hz) over voiced 40 ms frames (independent of the synthesiser)."""
  frame, out = 640, []
  for s in range(0, len(wave) - frame, frame // 2):
    x = wave[s:s + frame] - wave[s:s + frame].mean()
    if np.sqrt(np.mean(x * x)) < 0.01:
      continue
    ac = np.correlate(x, x, "full")[frame - 1:]
    lo, hi = sr // 500, sr // 60
    out.append(sr / (lo + np.argmax(ac[lo:hi])))
  return float(np.median(out))


def _brightness(wave, sr=16000):
  """Energy of 2–6 kHz relative to 0–1 kHz, in dB (spectral tilt)."""
  spec = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
  f = np.fft.rfftfreq(len(wave), 1 / sr)
  return float(10 * np.log10(spec[(f > 2000) & (f < 6000)].sum() / spec[f < 1000].sum()))


def _syllable_levels(wave, sr=16000):
  """dB level of each voiced run (20 ms RMS envelope above a threshold), and the number of runs."""
  hop = 320
  env = np.sqrt(np.convolve(wave.astype(np.float64) ** 2, np.ones(hop) / hop, "same"))[::hop // 4]
  on = env > 10 ** (-45 / 20)
  edges = np.flatnonzero(np.diff(on.astype(int)))
  runs = np.split(env, edges + 1)
  levels = [20 * np.log10(r.max()) for r, flag in zip(runs, np.split(on, edges + 1), strict=True) if flag[0]]
  return np.array(levels)


def test_embedded_cues_follow_the_labels():
  """Vary one attribute with the others neutral: the documented cues move the documented way."""
  spk = embedded.Speaker("x", 120.0, 1.0)
  levels = np.arange(1.0, 8.0)
  n = 3 * 16000

  def clips(attribute):
    out = []
    for value in levels:
      row = []
      for seed in range(3):
        avd = {"arousal": 4.0, "valence": 4.0, "dominance": 4.0, attribute: value}
        row.append(embedded.synthesize(avd["arousal"], avd["valence"], avd["dominance"], spk, n,
                                       np.random.default_rng(seed)))
      out.append(row)
    return out

  def rho(values):
    return stats.spearmanr(np.repeat(levels, 3), np.ravel(values)).statistic

  arousal = clips("arousal")
  assert rho([[_f0(w) for w in row] for row in arousal]) > 0.9
  assert rho([[np.sqrt(np.mean(w.astype(np.float64) ** 2)) for w in row] for row in arousal]) > 0.9
  assert rho([[len(_syllable_levels(w)) for w in row] for row in arousal]) > 0.8
  valence = clips("valence")
  assert rho([[_brightness(w) for w in row] for row in valence]) > 0.85
  dominance = clips("dominance")
  assert rho([[np.std(_syllable_levels(w)) for w in row] for row in dominance]) < -0.7


# ----------------------------------------------------------------------------- embedded build


def test_embedded_build_cache_and_source(tiny_embedded, capsys):
  config, data_dir = tiny_embedded
  assert data.ensure_dataset(config.data) == data_dir
  assert "[data] building" not in capsys.readouterr().out  # built once by the fixture, reused here
  source = data.get_data_source(config.data, "train")
  n_train, n_test = TINY_CORPUS["num_train"], TINY_CORPUS["num_test"]
  assert len(source) == n_train and len(data.get_data_source(config.data, "test")) == n_test
  records = [source[i] for i in range(len(source))]
  ids = sorted(r["id"] for r in records)
  assert ids == [f"embedded-train-{i:06d}" for i in range(n_train)]
  spec = embedded.EmbeddedSpec.from_config(config.data)
  for r in records[:5]:
    expected = embedded.generate_example(spec, "train", int(r["id"].split("-")[-1]))
    np.testing.assert_array_equal(r["audio"], expected["audio"])
    assert r["audio"].dtype == np.int16 and isinstance(r["speaker"], str)
    assert r["class_id"] == -1 and r["arousal"].dtype == np.float32
    assert TINY_CORPUS["min_seconds"] * 16000 - 1 <= r["audio"].size <= TINY_CORPUS["max_seconds"] * 16000 + 1
    assert r["arousal"] == expected["arousal"]
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[7]["audio"], source[7]["audio"])
  with pytest.raises(ValueError, match="nonexistent.*available"):
    data.get_data_source(config.data, "nonexistent")
  with pytest.raises(IndexError):
    source[n_train]


def test_embedded_spec_change_builds_a_new_corpus(tmp_path, capsys):
  config = tiny_data_config(tmp_path, num_train=4, num_validation=2, num_test=2)
  with pytest.raises(ValueError, match="ensure_dataset"):
    data.get_data_source(config.data, "train")
  data.ensure_dataset(config.data)
  assert "[data] building" in capsys.readouterr().out
  first = data.get_data_source(config.data, "train")[0]
  data.ensure_dataset(config.data)
  assert "[data] building" not in capsys.readouterr().out
  config.data.embedded.seed = 8
  data.ensure_dataset(config.data)
  assert "[data] building" in capsys.readouterr().out
  assert len(os.listdir(tmp_path / "erclap_embedded")) == 2
  other = data.get_data_source(config.data, "train")
  assert not any(np.array_equal(other[i]["audio"], first["audio"]) for i in range(4))


# ----------------------------------------------------------------------------- the espeak corpus


@pytest.fixture
def espeak_engine():
  """The espeak-ng program, which rendering the corpus needs (``.ci/run`` installs the Debian package)."""
  if shutil.which(espeak.ENGINE) is None:
    pytest.skip(f"no {espeak.ENGINE} program on PATH: the espeak corpus tests that render speech did NOT run; "
                f"install it with `apt-get install espeak-ng`")


def _active_level_db(wave, sr=16000):
  """dB level over the 20 ms frames within 30 dB of the loudest (independent of the synthesiser's own)."""
  frames = wave[: len(wave) // 320 * 320].astype(np.float64).reshape(-1, 320)
  power = np.mean(frames ** 2, axis=1)
  return float(10 * np.log10(np.mean(power[power >= power.max() * 1e-3])))


def _espeak_sentence_clips(attribute, speaker, spec, values=(1.0, 3.0, 5.0, 7.0)):
  """One sentence by one speaker with one attribute varied (others neutral), the same clip seed each time."""
  text = "The old farmer carried seven wooden boxes before noon."
  out = []
  for value in values:
    avd = {"arousal": 4.0, "valence": 4.0, "dominance": 4.0, attribute: value}
    out.append(espeak.render(avd["arousal"], avd["valence"], avd["dominance"], speaker, text, spec,
                             np.random.default_rng(0)))
  return out


def test_espeak_arousal_is_loud_and_clear_valence_weak(espeak_engine):
  """Arousal moves loudness and duration a lot; valence leaves them alone and moves the spectral tilt by less than
  the speakers differ; over generated clips a loudness statistic recovers arousal (not valence), and the spectral
  tilt valence only weakly."""
  spec = espeak.EspeakSpec()
  speakers = espeak.speakers(spec)
  arousal = _espeak_sentence_clips("arousal", speakers[0], spec)
  levels, seconds = [_active_level_db(w) for w in arousal], [len(w) / 16000 for w in arousal]
  assert np.all(np.diff(levels) > 2) and levels[-1] - levels[0] > 10
  assert np.all(np.diff(seconds) < 0) and seconds[-1] / seconds[0] < 0.6
  valence = _espeak_sentence_clips("valence", speakers[0], spec)
  levels, seconds = [_active_level_db(w) for w in valence], [len(w) / 16000 for w in valence]
  assert np.ptp(levels) < 1.0 and np.ptp(seconds) / np.mean(seconds) < 0.03
  tilt = [_brightness(w) for w in valence]
  assert np.all(np.diff(tilt) > 0)
  between_speakers = [_brightness(_espeak_sentence_clips("valence", s, spec, (4.0,))[0]) for s in speakers[:8]]
  assert tilt[-1] - tilt[0] < np.ptp(between_speakers)
  clips = [espeak.generate_example(spec, "train", i, speakers) for i in range(32)]
  level = [_active_level_db(c["audio"] / 32768.0) for c in clips]
  brightness = [_brightness(c["audio"] / 32768.0) for c in clips]
  arousal, valence = [c["arousal"] for c in clips], [c["valence"] for c in clips]
  assert stats.spearmanr(level, arousal).statistic > 0.7
  assert abs(stats.spearmanr(level, valence).statistic) < 0.4
  assert 0.0 < stats.spearmanr(brightness, valence).statistic < 0.5


def test_espeak_spec_speakers_and_sentences():
  spec = espeak.EspeakSpec()
  names = {field: espeak.EspeakSpec(**{field: value}).config_name()
           for field, value in (("num_test", 7), ("valence_cue", 0.5), ("held_out_speakers", False),
                                          ("seed", 1), ("num_speakers", 12))}
  assert len(set(names.values()) | {spec.config_name()}) == 6
  speakers = espeak.speakers(espeak.EspeakSpec(num_speakers=224))
  assert len({s.voice for s in speakers}) == 224  # every accent x variant pair once
  parts = {split: {s.name for s in espeak.split_speakers(spec, split, espeak.speakers(spec))}
           for split in espeak.SPLITS}
  assert [len(parts[s]) for s in espeak.SPLITS] == [21, 3, 6]
  assert not parts["train"] & (parts["validation"] | parts["test"]) and not parts["validation"] & parts["test"]
  rng = np.random.default_rng(0)
  assert len({espeak.sentence(rng) for _ in range(500)}) > 480
  with pytest.raises(ValueError, match="data.espeak.num_speakers"):
    espeak.EspeakSpec(num_speakers=2)
  with pytest.raises(ValueError, match="data.espeak.valence_cue"):
    espeak.EspeakSpec(valence_cue=-1.0)


def _espeak_config(data_dir):
  config = tiny_data_config(data_dir)
  config.data.name = "espeak"
  e = config.data.espeak
  e.num_train, e.num_validation, e.num_test, e.num_speakers = 4, 2, 2, 3
  return config


def test_espeak_build_through_tfds(espeak_engine, tmp_path, capsys):
  config = _espeak_config(tmp_path)
  assert data.ensure_dataset(config.data) == str(tmp_path)
  assert "[data] building espeak" in capsys.readouterr().out
  spec = espeak.EspeakSpec.from_config(config.data)
  speakers = {}
  for split, size in (("train", 4), ("validation", 2), ("test", 2)):
    source = data.get_data_source(config.data, split)
    assert len(source) == size
    records = sorted((source[i] for i in range(size)), key=lambda r: r["id"])
    speakers[split] = {r["speaker"] for r in records}
    for index, record in enumerate(records):
      expected = espeak.generate_example(spec, split, index)
      assert record["id"] == f"espeak-{split}-{index:06d}" and record["class_id"] == -1
      np.testing.assert_array_equal(record["audio"], expected["audio"])  # deterministic
      assert record["valence"] == expected["valence"] and record["audio"].dtype == np.int16
  assert speakers["train"].isdisjoint(speakers["test"] | speakers["validation"])  # held-out speakers
  version_dir = tmp_path / "erclap_espeak" / spec.config_name() / "1.0.0"
  with open(version_dir / "metadata.json") as f:
    assert espeak.engine_version() in f.read()  # the espeak-ng that built it
  data.ensure_dataset(config.data)
  assert "[data] building" not in capsys.readouterr().out


def test_espeak_without_the_engine_names_the_package(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on it
  espeak.engine_version.cache_clear()
  try:
    with pytest.raises(RuntimeError, match="package `espeak-ng`"):
      data.ensure_dataset(_espeak_config(tmp_path / "tfds").data)
  finally:
    espeak.engine_version.cache_clear()


def test_registry_names_every_corpus_once():
  assert set(data.CORPORA) == {"embedded", "espeak", "msp_podcast", "iemocap"}
  assert {c.builder for c in data.CORPORA.values()} == {builders.ErclapEmbedded, builders.ErclapEspeak,
                                                       builders.ErclapMspPodcast, builders.ErclapIemocap}
  with pytest.raises(ValueError, match="already registered"):
    data.register(data.CORPORA["espeak"])


# ----------------------------------------------------------------------------- fake MSP-Podcast


def _tone(seconds, rate, f0=200.0):
  t = np.arange(int(seconds * rate)) / rate
  return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


MSP_ROWS = [
    # FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    ("MSP-PODCAST_0001_0001.wav", "H", "5.2", "6.0", "4.4", "12", "Female", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "A", "6.8", "1.6", "6.2", "12", "Female", "Train"),
    ("MSP-PODCAST_0002_0001.wav", "N", "4.0", "4.0", "4.0", "31", "Male", "Train"),
    ("MSP-PODCAST_0003_0001.wav", "S", "2.0", "2.4", "3.0", "40", "Male", "Development"),
    ("MSP-PODCAST_0004_0001.wav", "X", "3.6", "4.2", "3.8", "51", "Female", "Test1"),
    ("MSP-PODCAST_0005_0001.wav", "C", "1.0", "7.0", "2.2", "52", "Male", "Test2"),
]


def _msp_layout(root, rows=MSP_ROWS, columns=builders.MSP_COLUMNS):
  os.makedirs(root / "Audios", exist_ok=True)
  os.makedirs(root / "Labels", exist_ok=True)
  for i, row in enumerate(rows):
    if i == 1:  # one file at 44.1 kHz (resampled), one 24-bit stereo
      wavfile.write(root / "Audios" / row[0], 44100, _tone(0.5, 44100))
    elif i == 2:
      x = np.round(_tone(0.25, 16000) * (2 ** 23 - 1)).astype(np.int32)
      _write_pcm24(root / "Audios" / row[0], np.stack([x, x], axis=1), 16000, channels=2)
    else:
      audio_io.write_wav(root / "Audios" / row[0], _tone(0.2 + 0.1 * i, 16000))
  with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(columns)
    for row in rows:
      w.writerow([dict(zip(builders.MSP_COLUMNS, row, strict=True))[c] for c in columns])


def _msp_config(tmp_path, manual, **overrides):
  config = tiny_data_config(tmp_path / "tfds")
  config.data.name, config.data.manual_dir = "msp_podcast", str(manual)
  for k, v in overrides.items():
    config.data[k] = v
  return config


def test_msp_podcast_build(tmp_path):
  _msp_layout(tmp_path / "msp")
  config = _msp_config(tmp_path, tmp_path / "msp")
  data.ensure_dataset(config.data)
  train = data.get_data_source(config.data, "train")
  assert len(train) == 3 and len(data.get_data_source(config.data, "validation")) == 1
  assert len(data.get_data_source(config.data, "test")) == 1
  assert len(data.get_data_source(config.data, "test2")) == 1
  with pytest.raises(ValueError, match="test3"):
    data.get_data_source(config.data, "test3")
  records = {r["id"]: r for r in (train[i] for i in range(3))}
  angry = records["MSP-PODCAST_0001_0002"]
  assert angry["audio"].shape == (8000,)  # 0.5 s at 44.1 kHz -> 16 kHz
  np.testing.assert_allclose(angry["audio"][1000:-1000] / 32768, _tone(0.5, 16000)[1000:-1000], atol=2e-3)
  assert records["MSP-PODCAST_0002_0001"]["audio"].shape == (4000,)  # 24-bit stereo, 0.25 s
  assert (angry["arousal"], angry["valence"], angry["dominance"]) == (np.float32(6.8), np.float32(1.6),
                                                                      np.float32(6.2))
  assert angry["class_id"] == builders.MSP_CLASSES.index("A") and angry["speaker"] == "12"
  assert data.get_data_source(config.data, "test")[0]["class_id"] == -1  # X: no agreement


def test_msp_podcast_missing_manual_dir(tmp_path):
  config = _msp_config(tmp_path, tmp_path / "nowhere")
  with pytest.raises(ValueError, match="manual_dir=.*nowhere"):
    data.ensure_dataset(config.data)


def test_msp_podcast_missing_column(tmp_path):
  _msp_layout(tmp_path / "msp", columns=tuple(c for c in builders.MSP_COLUMNS if c != "EmoDom"))
  with pytest.raises(ValueError, match=r"labels_consensus.csv.*missing column.*EmoDom"):
    data.ensure_dataset(_msp_config(tmp_path, tmp_path / "msp").data)


@pytest.mark.parametrize("value", ["nan", "9.5", "high"])
def test_msp_podcast_bad_label_names_file_and_row(tmp_path, value):
  rows = list(MSP_ROWS)
  rows[3] = rows[3][:3] + (value,) + rows[3][4:]
  _msp_layout(tmp_path / "msp", rows=rows)
  with pytest.raises(ValueError, match=r"labels_consensus.csv row 5 \(MSP-PODCAST_0003_0001.wav\).*EmoVal"):
    data.ensure_dataset(_msp_config(tmp_path, tmp_path / "msp").data)
  assert not os.path.exists(tmp_path / "tfds" / "erclap_msp_podcast" / "1.0.0" / "dataset_info.json")


def test_msp_podcast_unreadable_audio_error_or_counted_skip(tmp_path, capsys):
  _msp_layout(tmp_path / "msp")
  (tmp_path / "msp" / "Audios" / MSP_ROWS[0][0]).write_bytes(b"garbage")
  os.remove(tmp_path / "msp" / "Audios" / MSP_ROWS[2][0])
  with pytest.raises(ValueError, match=r"(?s)unreadable.*_tolerance=0.0.*MSP-PODCAST_0001_0001"):
    data.ensure_dataset(_msp_config(tmp_path, tmp_path / "msp").data)
  config = _msp_config(tmp_path, tmp_path / "msp", unreadable_audio_tolerance=0.34)
  data.ensure_dataset(config.data)
  out = capsys.readouterr().out
  assert "skipped 2 unreadable audio file(s) of 6" in out and "MSP-PODCAST_0002_0001.wav" in out
  train = data.get_data_source(config.data, "train")
  assert [train[i]["id"] for i in range(len(train))] == ["MSP-PODCAST_0001_0002"]
  assert len(data.get_data_source(config.data, "test")) == 1


# ----------------------------------------------------------------------------- fake IEMOCAP


def _iemocap_layout(root, bad_line=None):
  # (session, dialog, utterance, category, [V, A, D])
  utts = [
      (1, "Ses01F_impro01", "Ses01F_impro01_F000", "neu", (2.5, 2.5, 2.5)),
      (1, "Ses01F_impro01", "Ses01F_impro01_M000", "ang", (1.5, 4.5, 4.0)),
      (1, "Ses01M_script01_1", "Ses01M_script01_1_F001", "hap", (4.0, 3.5, 3.0)),
      (2, "Ses02F_impro02", "Ses02F_impro02_F000", "sad", (1.0, 1.0, 2.0)),
      (2, "Ses02F_impro02", "Ses02F_impro02_M001", "xxx", (3.0, 5.0, 5.0)),
      (2, "Ses02F_impro02", "Ses02F_impro02_M002", "exc", (5.0, 4.0, 3.5)),
  ]
  by_dialog = {}
  for i, (session, dialog, utt, cat, vad) in enumerate(utts):
    wav_dir = root / f"Session{session}" / "sentences" / "wav" / dialog
    os.makedirs(wav_dir, exist_ok=True)
    rate = 44100 if i == 3 else 16000
    wavfile.write(wav_dir / f"{utt}.wav", rate, np.round(_tone(0.3, rate) * 32767).astype(np.int16))
    by_dialog.setdefault((session, dialog), []).append((utt, cat, vad))
  for (session, dialog), rows in by_dialog.items():
    eval_dir = root / f"Session{session}" / "dialog" / "EmoEvaluation"
    os.makedirs(eval_dir, exist_ok=True)
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for j, (utt, cat, vad) in enumerate(rows):
      values = ", ".join(f"{x:.4f}" for x in vad)
      lines.append(f"[{6.29 + j:.4f} - {8.23 + j:.4f}]\t{utt}\t{cat}\t[{values}]")
      lines += ["C-E2:\tNeutral;\t()", "A-F1:\tval 3; act 2; dom  2;\t()", ""]
    if bad_line and dialog == "Ses02F_impro02":
      lines.append(bad_line)
    (eval_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")


def _iemocap_config(tmp_path, manual, test_session=2):
  config = tiny_data_config(tmp_path / "tfds")
  config.data.name, config.data.manual_dir = "iemocap", str(manual)
  config.data.iemocap_test_session = test_session
  return config


def test_iemocap_build_and_leave_one_session_out(tmp_path):
  _iemocap_layout(tmp_path / "iemocap")
  config = _iemocap_config(tmp_path, tmp_path / "iemocap")
  data.ensure_dataset(config.data)
  train = data.get_data_source(config.data, "train")
  val, test = data.get_data_source(config.data, "validation"), data.get_data_source(config.data, "test")
  assert sorted(train[i]["id"] for i in range(len(train))) == [
      "Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01M_script01_1_F001"]
  assert [val[0]["id"]] == ["Ses02F_impro02_F000"] and len(val) == 1
  assert sorted(test[i]["id"] for i in range(len(test))) == ["Ses02F_impro02_M001", "Ses02F_impro02_M002"]
  sad = val[0]
  assert sad["audio"].shape == (4800,)  # 0.3 s at 44.1 kHz resampled
  assert (sad["valence"], sad["arousal"], sad["dominance"]) == (1.0, 1.0, 2.5)  # 1 -> 1, 2 -> 2.5
  assert sad["class_id"] == builders.IEMOCAP_CLASSES.index("sad") and sad["speaker"] == "Ses02F"
  by_id = {test[i]["id"]: test[i] for i in range(len(test))}
  assert by_id["Ses02F_impro02_M001"]["class_id"] == -1
  assert by_id["Ses02F_impro02_M001"]["arousal"] == 7.0 and by_id["Ses02F_impro02_M002"]["valence"] == 7.0
  config.data.iemocap_test_session = 1  # another fold of the same build
  assert len(data.get_data_source(config.data, "train")) == 3
  assert [r["id"] for r in [data.get_data_source(config.data, "test")[0]]] == ["Ses01F_impro01_M000"]
  config.data.iemocap_test_session = 5
  with pytest.raises(ValueError, match="iemocap_test_session=5"):
    data.get_data_source(config.data, "train")


@pytest.mark.parametrize("bad_line, match", [
    ("[9.0 - 10.0]\tSes02F_impro02_M009\tneu\t[2.0, nan, 2.0]", r"Ses02F_impro02.txt line \d+ .*A="),
    ("[9.0 - 10.0]\tSes02F_impro02_M009\tneu\t[2.0, 6.0, 2.0]",
     r"Ses02F_impro02.txt line \d+ .*outside 1..5"),
    ("[9.0 - 10.0] Ses02F_impro02_M009", r"Ses02F_impro02.txt line \d+: cannot parse"),
])
def test_iemocap_bad_lines_name_file_and_line(tmp_path, bad_line, match):
  _iemocap_layout(tmp_path / "iemocap", bad_line=bad_line)
  with pytest.raises(ValueError, match=match):
    data.ensure_dataset(_iemocap_config(tmp_path, tmp_path / "iemocap").data)


def test_unknown_corpus_name(tmp_path):
  config = tiny_data_config(tmp_path)
  config.data.name = "librispeech"
  with pytest.raises(ValueError, match="data.name='librispeech'"):
    data.ensure_dataset(config.data)


def test_resample_matches_scipy_fft_resampling():
  rng = np.random.default_rng(1)
  # Band-limited to 6 kHz so the comparison is not about the filters' transition bands near 8 kHz.
  x = signal.sosfilt(signal.butter(8, 6000, fs=22050, output="sos"), rng.standard_normal(22050))
  x = (0.1 * x).astype(np.float32)
  y = audio_io.resample(x, 22050, 16000)
  reference = signal.resample(x, 16000)  # FFT method: an independent band-limited reference
  assert y.shape == (16000,)
  err = np.abs(y[500:-500] - reference[500:-500]).max() / np.abs(reference).max()
  assert err < 0.01
