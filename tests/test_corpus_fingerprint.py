"""A built licensed corpus records its source; a changed manual dir is never silently taken for the built one.

A tiny fake MSP-Podcast manual dir (Audios/*.wav written with scipy, Labels/labels_consensus.csv) is built,
then changed: a label edited, a file added, removed or touched.
"""

import csv
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from scipy.io import wavfile
from train_helpers import tiny_data_config

from erclap import data
from erclap.data import builders

ROWS = [
    # FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    ("MSP-PODCAST_0001_0001.wav", "H", "5.2", "6.0", "4.4", "12", "Female", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "A", "6.8", "1.6", "6.2", "12", "Female", "Train"),
    ("MSP-PODCAST_0003_0001.wav", "S", "2.0", "2.4", "3.0", "40", "Male", "Development"),
    ("MSP-PODCAST_0004_0001.wav", "N", "3.6", "4.2", "3.8", "51", "Female", "Test1"),
]
LABELS = os.path.join("Labels", "labels_consensus.csv")


def _wav(path, seconds=0.1, f0=220.0):
  t = np.arange(int(seconds * 16000)) / 16000
  wavfile.write(path, 16000, np.round(0.3 * 32767 * np.sin(2 * np.pi * f0 * t)).astype(np.int16))


def _write_labels(root, rows):
  with open(root / LABELS, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(builders.MSP_COLUMNS)
    writer.writerows(rows)


def _msp(root, rows=ROWS):
  os.makedirs(root / "Audios", exist_ok=True)
  os.makedirs(root / "Labels", exist_ok=True)
  for i, row in enumerate(rows):
    _wav(root / "Audios" / row[0], f0=200.0 + 20 * i)
  _write_labels(root, rows)
  return root


def _config(tmp_path, manual, **overrides):
  config = tiny_data_config(tmp_path / "tfds")
  config.data.name, config.data.manual_dir = "msp_podcast", str(manual) if manual else ""
  for key, value in overrides.items():
    config.data[key] = value
  return config


def _valence(config, split="train"):
  source = data.get_data_source(config.data, split)
  return {source[i]["id"]: float(source[i]["valence"]) for i in range(len(source))}


def _version_dir(tmp_path):
  return tmp_path / "tfds" / "erclap_msp_podcast" / "1.0.0"


@pytest.fixture
def built(tmp_path, capsys):
  """(config, manual dir): the fake corpus built once from tmp_path/msp1."""
  manual = _msp(tmp_path / "msp1")
  config = _config(tmp_path, manual)
  data.ensure_dataset(config.data)
  assert "[data] building msp_podcast" in capsys.readouterr().out
  return config, manual


def test_fingerprint_lists_what_the_builder_reads(tmp_path):
  manual = _msp(tmp_path / "msp[v1.12]")  # glob characters in the path are taken literally
  (manual / "README.txt").write_text("not read by the builder")
  (manual / "Audios" / ".DS_Store").write_bytes(b"\0")
  os.makedirs(manual / "Audios" / "sub")
  _wav(manual / "Audios" / "sub" / "nested.wav")
  got = builders.source_fingerprint(builders.ErclapMspPodcast, str(manual))
  raw = (manual / LABELS).read_bytes()
  assert got["labels"] == {LABELS: {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}}
  names = [os.path.join("Audios", r[0]) for r in ROWS] + [os.path.join("Audios", "sub", "nested.wav")]
  expected = {n: [os.stat(manual / n).st_size, os.stat(manual / n).st_mtime_ns] for n in names}
  assert got["files"] == expected
  assert got["manual_dir"] == str(manual) and got["builder"] == "erclap_msp_podcast"
  assert builders.source_differences(got, builders.source_fingerprint(builders.ErclapMspPodcast, str(manual))) == []


def test_iemocap_fingerprint_covers_evaluations_and_sentence_audio(tmp_path):
  root = tmp_path / "iemocap"
  wav_dir = root / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
  eval_dir = root / "Session1" / "dialog" / "EmoEvaluation"
  os.makedirs(wav_dir)
  os.makedirs(eval_dir)
  os.makedirs(root / "Session1" / "dialog" / "wav")  # whole-dialog audio: not read by the builder
  _wav(wav_dir / "Ses01F_impro01_F000.wav")
  _wav(root / "Session1" / "dialog" / "wav" / "Ses01F_impro01.wav")
  (eval_dir / "Ses01F_impro01.txt").write_text("[6.2 - 8.2]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n")
  got = builders.source_fingerprint(builders.ErclapIemocap, str(root))
  assert list(got["labels"]) == [os.path.join("Session1", "dialog", "EmoEvaluation", "Ses01F_impro01.txt")]
  assert list(got["files"]) == [os.path.join("Session1", "sentences", "wav", "Ses01F_impro01",
                                             "Ses01F_impro01_F000.wav")]


def test_audio_the_labels_name_outside_the_audio_directory_is_fingerprinted(tmp_path, capsys):
  """A FileName reaching outside Audios/ (``../``, into the manual dir or beyond it): that file is read by the
  build, so re-recording it after the build is reported like any audio file."""
  manual = _msp(tmp_path / "msp1")
  os.makedirs(tmp_path / "more")
  _wav(tmp_path / "more" / "outside.wav", f0=300.0)
  _wav(manual / "Labels" / "beside.wav", f0=320.0)
  rows = [*ROWS, ("../../more/outside.wav", "N", "4.0", "4.0", "4.0", "60", "Male", "Train"),
          ("../Labels/beside.wav", "N", "4.0", "4.0", "4.0", "61", "Male", "Train")]
  _write_labels(manual, rows)
  got = builders.source_fingerprint(builders.ErclapMspPodcast, str(manual))
  outside, beside = os.path.join("..", "more", "outside.wav"), os.path.join("Labels", "beside.wav")
  assert sorted(got["outside_files"]) == sorted([outside, beside]) and len(got["files"]) == len(ROWS)
  config = _config(tmp_path, manual)
  data.ensure_dataset(config.data)
  assert "[data] building msp_podcast" in capsys.readouterr().out
  assert len(_valence(config)) == 4  # the 2 train rows of ROWS and the 2 files outside Audios/
  data.ensure_dataset(config.data)  # unchanged: reused
  assert "unchanged since" in capsys.readouterr().out
  _wav(tmp_path / "more" / "outside.wav", seconds=0.2, f0=350.0)  # re-recorded after the build
  with pytest.raises(data.SourceChangedError) as info:
    data.ensure_dataset(config.data)
  message = str(info.value)
  assert f"1 audio file(s) outside the audio directories changed: {outside} (size " in message
  assert "--config.data.rebuild=True" in message
  record = data.read_source_record(builders.ErclapMspPodcast(data_dir=str(tmp_path / "tfds")))
  del record["outside_files"]  # a record of an earlier version, which fingerprinted Audios/ only
  lines = builders.source_differences(record, builders.source_fingerprint(builders.ErclapMspPodcast, str(manual)))
  assert len(lines) == 1 and "does not cover the 2 audio file(s) its labels name outside" in lines[0]


def test_iemocap_utterance_id_with_a_path_separator_is_refused(tmp_path):
  evaluation = tmp_path / "Ses01F_impro01.txt"
  evaluation.write_text("[6.2 - 8.2]\t../../x_F000\tneu\t[2.5, 2.5, 2.5]\n")
  with pytest.raises(ValueError, match=r"line 1 \(\.\./\.\./x_F000\): an utterance id cannot contain a path"):
    builders.parse_iemocap_evaluation(str(evaluation))


def test_build_records_its_source(built, tmp_path):
  config, manual = built
  with open(_version_dir(tmp_path) / data.SOURCE_RECORD) as f:
    record = json.load(f)
  assert record.pop("built_at")
  assert record == builders.source_fingerprint(builders.ErclapMspPodcast, str(manual))
  assert not [n for n in os.listdir(_version_dir(tmp_path)) if n.startswith(".")]  # no temporary debris


def test_unchanged_source_is_reused_without_rebuild(built, tmp_path, capsys):
  config, manual = built
  info = _version_dir(tmp_path) / "dataset_info.json"
  before = os.stat(info).st_mtime_ns
  data.ensure_dataset(config.data)
  out = capsys.readouterr().out
  assert "[data] building" not in out and f"built from {manual} (unchanged since)" in out
  assert os.stat(info).st_mtime_ns == before
  # The same files moved elsewhere (names, sizes and times kept) are the same source.
  moved = shutil.copytree(manual, tmp_path / "moved", copy_function=shutil.copy2)
  data.ensure_dataset(_config(tmp_path, moved).data)
  assert "[data] building" not in capsys.readouterr().out


def test_without_manual_dir_the_build_is_used_and_its_source_named(built, tmp_path, capsys):
  config, manual = built
  shutil.rmtree(manual)
  data.ensure_dataset(_config(tmp_path, None).data)
  out = capsys.readouterr().out
  assert "[data] building" not in out
  assert f"built from {manual} (4 audio files; {LABELS} sha256 " in out


def test_changed_label_stops_naming_the_label_file(built, tmp_path):
  config, manual = built
  rows = [ROWS[0][:3] + ("2.0",) + ROWS[0][4:], *ROWS[1:]]
  old_hash = hashlib.sha256((manual / LABELS).read_bytes()).hexdigest()
  _write_labels(manual, rows)
  new_hash = hashlib.sha256((manual / LABELS).read_bytes()).hexdigest()
  with pytest.raises(data.SourceChangedError) as info:
    data.ensure_dataset(config.data)
  message = str(info.value)
  assert f"label file {LABELS} changed: sha256 {old_hash[:16]} -> {new_hash[:16]}" in message
  assert "--config.data.rebuild=True" in message and "--config.data.manual_dir=''" in message
  assert "audio file(s)" not in message  # only the labels changed
  assert _valence(config)["MSP-PODCAST_0001_0001"] == pytest.approx(6.0)  # the old build is untouched


def test_added_removed_and_touched_audio_are_named(built, tmp_path):
  config, manual = built
  _wav(manual / "Audios" / "MSP-PODCAST_0009_0001.wav")
  os.remove(manual / "Audios" / ROWS[3][0])
  touched = manual / "Audios" / ROWS[1][0]
  st = os.stat(touched)
  os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
  with pytest.raises(data.SourceChangedError) as info:
    data.ensure_dataset(config.data)
  message = str(info.value)
  assert "1 audio file(s) added: " + os.path.join("Audios", "MSP-PODCAST_0009_0001.wav") in message
  assert "1 audio file(s) removed: " + os.path.join("Audios", ROWS[3][0]) in message
  assert "1 audio file(s) changed: " + os.path.join("Audios", ROWS[1][0]) + " (modified " in message
  assert "label file" not in message


def test_rebuild_reads_the_new_source_then_reuses_it(built, tmp_path, capsys):
  config, manual = built
  dir2 = shutil.copytree(manual, tmp_path / "msp2")
  _write_labels(dir2, [ROWS[0][:3] + ("2.0",) + ROWS[0][4:], *ROWS[1:]])
  config2 = _config(tmp_path, dir2, rebuild=True)
  data.ensure_dataset(config2.data)
  out = capsys.readouterr().out
  assert "[data] building msp_podcast" in out and "changed: sha256" in out
  assert _valence(config2)["MSP-PODCAST_0001_0001"] == pytest.approx(2.0)
  assert sorted(os.listdir(_version_dir(tmp_path).parent)) == ["1.0.0"]  # the replaced build is gone
  data.ensure_dataset(config2.data)  # rebuild=True only rebuilds a changed source
  assert "[data] building" not in capsys.readouterr().out
  with pytest.raises(data.SourceChangedError, match="label file"):  # back to DIR1: differs from the build
    data.ensure_dataset(config.data)


def test_failed_rebuild_keeps_the_old_build(built, tmp_path):
  config, manual = built
  _write_labels(manual, [ROWS[0][:3] + ("9",) + ROWS[0][4:], *ROWS[1:]])
  with pytest.raises(ValueError, match=r"row 2 .*EmoVal='9'"):
    data.ensure_dataset(_config(tmp_path, manual, rebuild=True).data)
  assert sorted(os.listdir(_version_dir(tmp_path).parent)) == ["1.0.0"]
  assert _valence(config)["MSP-PODCAST_0001_0001"] == pytest.approx(6.0)
  with pytest.raises(data.SourceChangedError, match="EmoVal|label file"):  # still recorded as the old source
    data.ensure_dataset(config.data)


def test_build_without_record_is_not_taken_for_the_manual_dir(built, tmp_path):
  config, _ = built
  os.remove(_version_dir(tmp_path) / data.SOURCE_RECORD)
  with pytest.raises(data.SourceChangedError, match="no record of the source"):
    data.ensure_dataset(config.data)
  data.ensure_dataset(_config(tmp_path, None).data)  # without manual_dir: used as it is


def test_missing_manual_dir_of_a_built_corpus_is_named(built, tmp_path):
  with pytest.raises(ValueError, match=r"is built in .*manual_dir=.*nowhere.*manual_dir=''"):
    data.ensure_dataset(_config(tmp_path, tmp_path / "nowhere").data)
