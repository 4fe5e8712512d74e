"""erclap.plots: PNG files are written complete, named as asked, and nothing partial is left on error."""

import os

import numpy as np
import pytest

from erclap import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n=30, d=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.uniform(1, 7, (n, 3))
  speech = rng.normal(size=(n, d)) + labels[:, :1]
  text = rng.normal(size=(n, d)) + labels[:, 1:2]
  return speech, text, labels


def _assert_png(path):
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC


def _no_temporaries(directory):
  return [name for name in os.listdir(directory) if ".tmp-" in name]


def test_all_plots_write_valid_png(tmp_path):
  speech, text, labels = _data()
  sim = speech @ text.T
  levels = np.linspace(1, 7, 5)
  prompt_sim = -np.abs(levels[:, None] - labels[None, :, 0])
  paths = [
      plots.plot_embedding_pca(speech, text, labels, str(tmp_path / "pca.png")),
      plots.plot_similarity_vs_distance(sim, labels, str(tmp_path / "sim.png")),
      plots.plot_prompt_ordering(prompt_sim, levels, labels[:, 0], str(tmp_path / "prompts.png")),
  ]
  assert sorted(os.listdir(tmp_path)) == ["pca.png", "prompts.png", "sim.png"]
  for path in paths:
    _assert_png(path)
  # Overwriting an existing plot replaces it (rename onto the old file), again with no temporaries.
  plots.plot_similarity_vs_distance(sim * 0.5, labels, str(tmp_path / "sim.png"))
  _assert_png(tmp_path / "sim.png")
  assert not _no_temporaries(tmp_path)


def test_pca_2d_matches_covariance_eigenvectors():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 4)) * np.array([5.0, 2.0, 1.0, 0.1])
  xy = plots.pca_2d(x)
  centred = x - x.mean(0)
  _, vecs = np.linalg.eigh(np.cov(centred.T))
  want = centred @ vecs[:, ::-1][:, :2]
  np.testing.assert_allclose(np.abs(xy), np.abs(want), atol=1e-8)   # components are defined up to sign


def test_similarity_by_distance_bins():
  sim = np.array([1.0, 0.8, 0.2, 0.0])
  distance = np.array([0.0, 0.1, 5.9, 6.0])
  centres, means, counts = plots.similarity_by_distance(sim, distance, num_bins=2)
  np.testing.assert_allclose(means, [0.9, 0.1])
  np.testing.assert_array_equal(counts, [2, 2])
  assert centres[0] < centres[1]


def test_errors_leave_no_partial_file(tmp_path):
  speech, text, labels = _data()
  # Bad input: rejected before anything is written.
  with pytest.raises(ValueError, match="labels"):
    plots.plot_embedding_pca(speech, text, labels[:5], str(tmp_path / "pca.png"))
  with pytest.raises(ValueError, match="sim"):
    plots.plot_similarity_vs_distance(np.zeros((3, 4)), labels[:3], str(tmp_path / "sim.png"))
  with pytest.raises(ValueError, match="prompt_sim"):
    plots.plot_prompt_ordering(np.zeros((4, 30)), np.linspace(1, 7, 5), labels[:, 0], str(tmp_path / "p.png"))
  with pytest.raises(FileNotFoundError, match="missing does not exist"):
    plots.plot_embedding_pca(speech, text, labels, str(tmp_path / "missing" / "pca.png"))
  # A directory in the way of the output: refused, and left untouched.
  (tmp_path / "taken.png").mkdir()
  with pytest.raises(IsADirectoryError, match="taken.png: a directory is in the way"):
    plots.plot_embedding_pca(speech, text, labels, str(tmp_path / "taken.png"))
  assert sorted(os.listdir(tmp_path)) == ["taken.png"] and not os.listdir(tmp_path / "taken.png")
  assert not _no_temporaries(tmp_path)
