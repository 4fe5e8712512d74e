"""docs/layout.md's table of layers holds for the code: every module of the package is in it, and each imports only
modules of its own row's layer or of layers above it in the table (the foundations first).

Imports are read from the source (``ast``), at module top and inside functions alike, so a late import cannot hide
an arrow that runs the wrong way.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "erclap")
LAYOUT = os.path.join(ROOT, "docs", "layout.md")


def _table():
  """{path in the table (a module file or a folder ending in '/'): its layer's index}, from docs/layout.md."""
  layers, found = [], {}
  for line in open(LAYOUT, encoding="utf-8"):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if not line.startswith("|") or len(cells) < 3 or cells[0] in ("layer", "---"):
      continue
    if cells[0]:
      layers.append(cells[0])
    for path in re.findall(r"`(erclap/[^`]+)`", cells[1]):
      found[path] = len(layers) - 1
  return found, layers


def _modules():
  """Every module file of the package, as a repository-relative path."""
  out = []
  for root, _, names in os.walk(PACKAGE):
    out += [os.path.relpath(os.path.join(root, n), ROOT) for n in names if n.endswith(".py")]
  return sorted(out)


def _layer_of(path, table):
  """The layer of a module file: its own row, else the row of the nearest folder holding it."""
  if path in table:
    return table[path]
  folder = os.path.dirname(path)
  while folder:
    if folder + "/" in table:
      return table[folder + "/"]
    folder = os.path.dirname(folder)
  return None


def _target(name):
  """The file (or package __init__) of the dotted module ``name``, or None when it is not a file of the package."""
  base = os.path.join(ROOT, *name.split("."))
  for candidate in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.exists(candidate):
      return os.path.relpath(candidate, ROOT)
  return None


def _imports(path, source=None):
  """The package modules ``path`` (its text: ``source``, else the file's) imports, as files, with each line."""
  if source is None:
    source = open(os.path.join(ROOT, path), encoding="utf-8").read()
  tree = ast.parse(source, path)
  package = ".".join(os.path.dirname(path).split(os.sep))
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the importing file's package
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    else:
      continue
    for name in names:
      if not name.startswith("erclap"):
        continue
      target = _target(name)
      if target and target != path and not (target.endswith("__init__.py") and path.startswith(
          os.path.dirname(target) + os.sep)):  # a module's own package's __init__ is its folder
        out.append((target, node.lineno))
  return out


def test_every_module_has_a_row():
  table, _ = _table()
  assert len(table) > 30
  # A package's __init__ that imports nothing of the package (its modules sit on rows of their own) needs no row.
  missing = [p for p in _modules() if _layer_of(p, table) is None
             and not (p.endswith("__init__.py") and not _imports(p))]
  assert not missing, f"modules docs/layout.md does not place: {missing}"
  stale = [p for p in table if not os.path.exists(os.path.join(ROOT, p))]
  assert not stale, f"docs/layout.md names paths that do not exist: {stale}"


def test_imports_run_from_each_layer_to_its_own_or_those_above():
  table, layers = _table()
  wrong = []
  for path in _modules():
    own = _layer_of(path, table)
    for target, line in _imports(path):
      other = _layer_of(target, table)
      if other is not None and other > own:
        wrong.append(f"{path}:{line} ({layers[own]}) imports {target} ({layers[other]})")
  assert not wrong, "imports that run down the table of docs/layout.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("from erclap import trees\n", ["erclap/trees.py"]),
    ("def f():\n  from erclap.metrics import ranking\n", ["erclap/metrics/ranking.py", "erclap/metrics/__init__.py"]),
    ("import erclap.fileio as f\n", ["erclap/fileio.py"]),
    ("import numpy\nfrom erclap.schema import LABEL_NAMES\n", ["erclap/schema.py"]),
])
def test_imports_are_read_at_top_and_inside_functions(source, expected):
  assert sorted(t for t, _ in _imports("erclap/tools/probe.py", source)) == sorted(expected)
