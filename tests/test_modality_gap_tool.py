"""erclap.tools.modality_gap on small export directories written here: its table and JSON hold the values of the
metric functions on the exported arrays, and a missing file is named."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from erclap import metrics
from erclap.tools import modality_gap as tool


def write_export(directory, speech, text, descriptions, split="test"):
  os.makedirs(directory, exist_ok=True)
  np.save(os.path.join(directory, f"{split}_speech.npy"), speech.astype(np.float32))
  np.save(os.path.join(directory, f"{split}_text.npy"), text.astype(np.float32))
  table = pa.table({"id": [f"clip{i}" for i in range(len(speech))], "arousal": np.full(len(speech), 4.0),
                    "description": descriptions})
  pq.write_table(table, os.path.join(directory, f"{split}.parquet"))
  return str(directory)


def expected_values(speech, text, descriptions):
  s = metrics.l2_normalize(speech.astype(np.float32))
  t = metrics.l2_normalize(text.astype(np.float32))
  gap = metrics.description_centroid_gap(s, t, descriptions)
  return {"num_clips": float(len(s)), "mmd": metrics.mmd(s, t), "mmd_fixed": metrics.mmd(s, t, bandwidth=1.0),
          "mmd_linear": metrics.mmd_linear(s, t), "centroid_distance": metrics.centroid_distance(s, t),
          "paired_cosine": metrics.mean_paired_cosine(s, t), "wasserstein": metrics.wasserstein(s, t).value,
          "wasserstein_num_points": float(len(s)),
          "wasserstein_sliced": metrics.wasserstein(s, t, exact_max_n=0).value,
          "wasserstein_centered": metrics.wasserstein_centered(s, t).value,
          "description_centroid_distance": gap["distance"], "description_centroid_cosine": gap["cosine"],
          "num_descriptions": float(len(set(descriptions)))}


def test_table_and_json_hold_the_metric_values(tmp_path, capsys):
  rng = np.random.default_rng(0)
  exports = {}
  for name, offset in (("near", 0.1), ("far", 2.0)):
    speech = rng.normal(size=(20, 6))
    text = speech + offset + 0.3 * rng.normal(size=(20, 6))
    descriptions = [f"a {['calm', 'loud', 'sad'][i % 3]} voice" for i in range(20)]
    exports[write_export(tmp_path / name / "export", speech, text, descriptions, split="validation")] = (
        speech, text, descriptions)
  out_json = tmp_path / "gap.json"
  argv = [f"--export={d}" for d in exports] + ["--split=validation", f"--json={out_json}"]
  assert tool.main(argv) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  written = json.loads(out_json.read_text())
  assert written["split"] == "validation" and set(written["exports"]) == set(exports)
  header = printed[0].split()
  assert header[0] == "export" and len(printed) == 1 + len(exports)
  for line, (directory, arrays) in zip(printed[1:], exports.items(), strict=True):
    expected = expected_values(*arrays)
    got = written["exports"][directory]
    assert set(got) == set(expected)
    for key, value in expected.items():
      assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    cells = dict(zip(header, line.split(), strict=True))
    assert cells["export"] == directory
    for key, value in expected.items():
      shown = f"{value:.0f}" if key.startswith("num_") or key == "wasserstein_num_points" else f"{value:.4g}"
      assert cells[key] == shown, key
  near, far = (written["exports"][d] for d in exports)
  assert far["centroid_distance"] > near["centroid_distance"] and far["paired_cosine"] < near["paired_cosine"]


def test_missing_file_and_missing_column_are_named(tmp_path):
  rng = np.random.default_rng(1)
  speech = rng.normal(size=(6, 4))
  directory = write_export(tmp_path / "export", speech, speech + 1.0, ["x"] * 6)
  os.remove(os.path.join(directory, "test_text.npy"))
  with pytest.raises(SystemExit, match=f"{os.path.join(directory, 'test_text.npy')}: not found"):
    tool.main([f"--export={directory}"])
  with pytest.raises(SystemExit, match="validation_speech.npy: not found"):
    tool.main([f"--export={directory}", "--split=validation"])
  np.save(os.path.join(directory, "test_text.npy"), speech.astype(np.float32))
  pq.write_table(pa.table({"id": [str(i) for i in range(6)]}), os.path.join(directory, "test.parquet"))
  with pytest.raises(SystemExit, match="test.parquet: no 'description' column"):
    tool.main([f"--export={directory}"])
  write_export(directory, speech, speech[:5], ["x"] * 6)
  with pytest.raises(SystemExit, match="must agree"):
    tool.main([f"--export={directory}"])
