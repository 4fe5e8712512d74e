"""PNG plots of an exported split: the joint space (PCA), similarity vs label distance, prompt ordering.

Matplotlib with the Agg backend (no display). Every function writes its PNG atomically
(``erclap.fileio.atomic_path``): a reader never sees a partial image and an error leaves no file behind.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, and the same output on every machine

import matplotlib.pyplot as plt
import numpy as np

from erclap import fileio, metrics


def _save_atomically(fig, path: str) -> str:
  """Writes ``fig`` as a PNG through ``fileio.atomic_path`` and closes it, whatever happens."""
  try:
    with fileio.atomic_path(path) as tmp:
      fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
  finally:
    plt.close(fig)
  return path


def _check_labels(labels, n: int) -> np.ndarray:
  labels = np.asarray(labels, np.float64)
  if labels.ndim != 2 or labels.shape[0] != n or labels.shape[1] < 2:
    raise ValueError(f"labels: expected shape ({n}, >=2) (arousal, valence, ...), got {labels.shape}")
  return labels


def pca_2d(x) -> np.ndarray:
  """(N, D) -> (N, 2) projection on the two leading principal components (centred, via SVD)."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  components = vt[:2]
  if components.shape[0] < 2:  # D == 1: pad a zero component so callers always get two columns
    components = np.concatenate([components, np.zeros((2 - components.shape[0], x.shape[1]))])
  return x @ components.T


def plot_embedding_pca(speech, text, labels, path: str) -> str:
  """2-D PCA of both modalities together (one joint fit), two panels coloured by arousal and by valence.

  speech: (N, D), text: (M, D) embeddings (normalised here). labels: (N, >=2) arousal, valence, ... shared
  by both modalities when they are paired (M == N), or (N + M, >=2) for speech rows then text rows.
  Speech points are circles, text points triangles.
  """
  speech = metrics.l2_normalize(metrics.arrays._as_2d("speech", speech, np.float64))
  text = metrics.l2_normalize(metrics.arrays._as_2d("text", text, np.float64))
  if speech.shape[1] != text.shape[1]:
    raise ValueError(f"speech, text: dimensions differ ({speech.shape[1]} vs {text.shape[1]})")
  labels = np.asarray(labels, np.float64)
  if labels.ndim == 2 and labels.shape[0] == len(speech) and len(speech) == len(text):
    labels = np.concatenate([labels, labels])
  labels = _check_labels(labels, len(speech) + len(text))
  xy = pca_2d(np.concatenate([speech, text]))
  n = len(speech)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
  for ax, column, name in ((axes[0], 0, "arousal"), (axes[1], 1, "valence")):
    kw = dict(cmap="coolwarm", vmin=1.0, vmax=7.0, s=12, alpha=0.8, linewidths=0)
    points = ax.scatter(xy[:n, 0], xy[:n, 1], c=labels[:n, column], marker="o", label="speech", **kw)
    ax.scatter(xy[n:, 0], xy[n:, 1], c=labels[n:, column], marker="^", label="text", **kw)
    fig.colorbar(points, ax=ax, label=name)
    ax.set_title(f"joint space PCA, coloured by {name}")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best", fontsize=8)
  return _save_atomically(fig, path)


def similarity_by_distance(sim, distance, num_bins: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean similarity per label-distance bin: (bin centres, means, counts), empty bins dropped."""
  sim, distance = np.asarray(sim, np.float64).ravel(), np.asarray(distance, np.float64).ravel()
  edges = np.linspace(distance.min(), distance.max() + 1e-9, num_bins + 1)
  which = np.clip(np.digitize(distance, edges) - 1, 0, num_bins - 1)
  counts = np.bincount(which, minlength=num_bins)
  sums = np.bincount(which, weights=sim, minlength=num_bins)
  keep = counts > 0
  centres = 0.5 * (edges[:-1] + edges[1:])
  return centres[keep], sums[keep] / counts[keep], counts[keep]


def plot_similarity_vs_distance(sim, labels, path: str, num_bins: int = 12) -> str:
  """Mean speech-text similarity against label distance (|Δarousal|, |Δvalence|, L1 over all columns).

  sim: (N, N) similarities of paired items (rows speech, columns text); labels: (N, L>=2). The matched
  pairs' mean similarity is drawn as a horizontal line for reference."""
  sim = metrics.arrays._as_2d("sim", sim, np.float64)
  if sim.shape[0] != sim.shape[1]:
    raise ValueError(f"sim: expected a square (N, N) matrix of paired items, got {sim.shape}")
  labels = _check_labels(labels, len(sim))
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  curves = (("|Δ arousal|", np.abs(labels[:, None, 0] - labels[None, :, 0])),
            ("|Δ valence|", np.abs(labels[:, None, 1] - labels[None, :, 1])),
            ("L1 over all labels", np.abs(labels[:, None, :] - labels[None, :, :]).sum(-1)))
  for name, distance in curves:
    centres, means, _ = similarity_by_distance(sim, distance, num_bins)
    ax.plot(centres, means, marker="o", label=name)
  ax.axhline(np.mean(np.diagonal(sim)), color="gray", linestyle="--", label="matched pairs")
  ax.set_xlabel("label distance")
  ax.set_ylabel("mean cosine similarity")
  ax.set_title("similarity vs label distance")
  ax.legend(loc="best", fontsize=8)
  return _save_atomically(fig, path)


def plot_prompt_ordering(prompt_sim, prompt_levels, clip_values, path: str, num_bins: int = 12) -> str:
  """Level prompts vs clips: left, each prompt's mean similarity against the clips' attribute (binned);
  right, each prompt's level against the mean attribute of its top-10% clips (a monotone rising line
  means the prompts keep their order), titled with the prompt taus of ``prompt_ordinal_consistency``."""
  result = metrics.prompt_ordinal_consistency(prompt_sim, prompt_levels, clip_values)
  prompt_sim = np.asarray(prompt_sim, np.float64)
  levels = np.asarray(prompt_levels, np.float64)
  values = np.asarray(clip_values, np.float64)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
  colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(levels)))
  for k in np.argsort(levels, kind="stable"):
    centres, means, _ = similarity_by_distance(prompt_sim[k], values, num_bins)
    axes[0].plot(centres, means, color=colours[k], marker=".",
                 label=f"level {levels[k]:.2g} (τ={result['tau_per_prompt'][k]:+.2f})")
  axes[0].set_xlabel("clip attribute")
  axes[0].set_ylabel("mean similarity to prompt")
  axes[0].set_title(f"prompt similarity vs attribute (signed τ {result['signed_tau']:+.3f})")
  axes[0].legend(loc="best", fontsize=7)
  order = np.argsort(levels, kind="stable")
  axes[1].plot(levels[order], result["top_clip_values"][order], marker="o")
  axes[1].plot(levels[order], levels[order], color="gray", linestyle="--", label="identity")
  axes[1].set_xlabel("prompt level")
  axes[1].set_ylabel("mean attribute of top-10% clips")
  axes[1].set_title(f"order τ {result['order_tau']:+.3f}, monotone: {result['monotone']}")
  axes[1].legend(loc="best", fontsize=8)
  return _save_atomically(fig, path)
