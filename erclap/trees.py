"""Comparing parameter trees by path and shape, with one report format for every loader.

Paths are written ``a/b/0/c`` whatever the container (dataclass attribute, dict key, list index), so a
tree read back from a checkpoint's metadata (plain dicts) compares like with like against the
``TrainState`` dataclass the config builds.
"""

from __future__ import annotations

import jax
import numpy as np


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path) -> str:
  """A key path (``jax.tree_util`` keys of any kind) as ``a/b/0/c``."""
  return "/".join(_key_name(k) for k in path)


def leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
  """{path: shape} of every leaf (arrays, ShapeDtypeStructs, or metadata objects with ``.shape``)."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = getattr(leaf, "shape", None)
    out[path_str(path)] = tuple(np.shape(leaf) if shape is None else shape)
  return out


def mismatch_lines(want: dict[str, tuple], have: dict[str, tuple], *, have_name: str = "checkpoint",
                   want_name: str = "config", limit: int = 20) -> list[str]:
  """One line per missing, unexpected or differently shaped leaf (at most ``limit`` of each); [] if equal."""
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  shapes = sorted(k for k in set(want) & set(have) if tuple(want[k]) != tuple(have[k]))
  lines = [f"  missing in {have_name}: {k} {want[k]}" for k in missing[:limit]]
  lines += [f"  unexpected in {have_name}: {k} {have[k]}" for k in unexpected[:limit]]
  lines += [f"  shape mismatch: {k}: {have_name} {have[k]} vs {want_name} {want[k]}" for k in shapes[:limit]]
  hidden = sum(max(len(x) - limit, 0) for x in (missing, unexpected, shapes))
  if hidden:
    lines.append(f"  ... and {hidden} more")
  return lines
