"""The exported views of an export (``--mode=export`` of a stage with ``Stage.export_views``: the cross-modal one):
TensorBoard projector files and the report page, written from the splits' embeddings after the export's own files.

``write_views`` is the one entry point ``erclap.export`` calls; ``output_paths`` lists what it writes, so that
the export checks every path before any work.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from erclap import stages
from erclap.results import projector, report


@dataclasses.dataclass(frozen=True)
class SplitView:
  """One exported split, as the views read it.

  Attributes:
    split: its name.
    ids: (N,) clip ids.
    labels: (N, 3) arousal, valence, dominance.
    descriptions: (N,) the clips' descriptions.
    speech, text: (N, D) embeddings, row i of both from clip i.
    metrics: the split's metrics (``<split>_metrics.json``).
    level_prompts: ``erclap.prompts.level_prompts``: {"prompts": {attribute: (K, D)}, "prompt_levels":
      {attribute: (K,)}}, or None.
  """
  split: str
  ids: Sequence[str]
  labels: np.ndarray
  descriptions: Sequence[str]
  speech: np.ndarray
  text: np.ndarray
  metrics: dict[str, float]
  level_prompts: dict | None = None


def output_paths(out_dir: str, splits: Sequence[str]) -> list[str]:
  """Every file ``write_views`` writes into ``out_dir`` for ``splits``."""
  return [*projector.output_paths(out_dir, splits), os.path.join(out_dir, report.REPORT_NAME)]


def write_views(out_dir: str, views: Sequence[SplitView], config, workdir: str, step: int) -> None:
  """The projector files of every split and ``report.html`` (``erclap.results.projector`` / ``report``).

  Args:
    out_dir: the export directory.
    views: the exported splits.
    config: the run's resolved config (the page's identity, its stage's headline metrics, and its config folded).
    workdir: the run's directory.
    step: the exported checkpoint's step.
  """
  projector.write_projector(out_dir, views)
  report.write_report(os.path.join(out_dir, report.REPORT_NAME), views, report.run_identity(config, workdir, step),
                      report.config_text(config), stages.of(config).headline_metrics)
