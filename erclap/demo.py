"""--mode=all: the end-to-end run (the README's main command on the embedded corpus).

Builds the corpus if needed, trains (or resumes / finds training complete), then exports the test split's
embeddings, metrics and plots, and prints the metrics table. For a two-stage config (``config.recipe.stage1``)
``erclap.main`` has run stage 1 and cached its speech features before (``erclap.recipe``).
"""

from __future__ import annotations

import jax

from erclap import evaluate, export, train


def run_all(config, workdir: str) -> dict[str, float]:
  train.train_and_evaluate(config, workdir)
  results = export.export_embeddings(config, workdir)
  split = config.export.splits[0]
  if jax.process_index() == 0:
    speech = f", speech: {config.recipe.stage1} (stage 1, frozen, cached)" if config.recipe.stage1 else ""
    print("\n" + evaluate.format_table(results[split], f"ERCLAP {config.stage}/{config.loss} on "
                                       f"{config.data.name}/{split}{speech} — outputs in {workdir}"), flush=True)
  return results[split]
