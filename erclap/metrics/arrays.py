"""Input checks and small array helpers shared by the metrics: 2-D / 1-D / label arrays, row chunking, L2
normalisation, the mean direction of several embeddings (overall and per level), attribute columns."""

from __future__ import annotations

import numpy as np

from erclap.schema import LABEL_NAMES

# Rows per chunk are chosen so that one chunk holds about this many matrix elements (int64: 32 MB).
_CHUNK_ELEMENTS = 1 << 22


def _as_2d(name: str, a, dtype=None) -> np.ndarray:
  a = np.asarray(a, dtype=dtype)
  if a.ndim != 2:
    raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
  if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
    raise ValueError(f"{name}: contains NaN or infinite values")
  return a


def _as_1d(name: str, a, dtype=np.float64) -> np.ndarray:
  a = np.asarray(a, dtype=dtype)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name}: contains NaN or infinite values")
  return a


def _labels_2d(name: str, a) -> np.ndarray:
  """(N,) or (N, L) labels -> (N, L) float64."""
  a = np.asarray(a, np.float64)
  if a.ndim == 1:
    a = a[:, None]
  return _as_2d(name, a)


def _row_chunks(num_rows: int, row_length: int):
  step = max(1, _CHUNK_ELEMENTS // max(row_length, 1))
  for start in range(0, num_rows, step):
    yield slice(start, min(num_rows, start + step))


def _attribute_column(attribute: str) -> int:
  if attribute not in LABEL_NAMES:
    raise ValueError(f"attribute: expected one of {LABEL_NAMES}, got {attribute!r}")
  return LABEL_NAMES.index(attribute)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero). Returns float32 if x is float32, else float64."""
  x = np.asarray(x)
  x = x.astype(np.float32 if x.dtype == np.float32 else np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def normalized_mean(x, axis: int = 0) -> np.ndarray:
  """The mean direction of embeddings: L2-normalise each, average along ``axis``, re-normalise.

  One embedding for several (wordings of a level prompt, windows of a long clip), each counted equally."""
  x = np.asarray(x)
  if x.ndim < 2 or x.shape[axis] == 0:
    raise ValueError(f"normalized_mean: expected a non-empty stack of embeddings, got shape {x.shape}")
  return l2_normalize(l2_normalize(x).mean(axis=axis))


def mean_by_level(embeddings, levels) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings of several texts per level -> one per level (``normalized_mean`` of each level's rows).

  embeddings: (M, D); levels: (M,). Returns (sorted unique levels (K,), (K, D) unit-norm embeddings)."""
  emb = _as_2d("embeddings", embeddings)
  levels = _as_1d("levels", levels)
  if len(levels) != len(emb):
    raise ValueError(f"levels: {len(levels)} entries for {len(emb)} embeddings")
  unique = np.unique(levels)
  return unique, np.stack([normalized_mean(emb[levels == v]) for v in unique])
