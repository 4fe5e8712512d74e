"""``--mode=all``: the end-to-end run (the README's main command on the embedded corpus).

Builds the corpus if needed, trains (a two-stage config: stage 1 and its speech cache first, ``erclap.recipe``;
a run that is already complete is not retrained), then exports the test split's embeddings, metrics and plots,
and prints the metrics table.
"""

from __future__ import annotations

import jax

from erclap import evaluate, export, progress, recipe, resolve, stages


def run_all(config, workdir: str) -> dict[str, float]:
  """Train, export, print the table of the first export split; returns its metrics.

  Args:
    config: the run's config (resolved for ``all`` here when it is not already, ``erclap.resolve``).
    workdir: the run's directory.
  """
  config = resolve.ensure(config, workdir, "all")
  recipe.train_stages(config, workdir)
  results = export.export_embeddings(config, workdir)
  split = config.export.splits[0]
  if jax.process_index() == 0:
    stage = stages.of(config)
    speech = f", speech: {config.recipe.stage1} (stage 1, frozen, cached)" if config.recipe.stage1 else ""
    title = f"ERCLAP {stage.name}/{config.loss} on {config.data.name}/{split}{speech} — outputs in {workdir}"
    progress.print_line("\n" + evaluate.format_table(results[split], title, stage.headline_metrics))
  return results[split]
