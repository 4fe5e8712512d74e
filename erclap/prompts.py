"""The texts a cross-modal model is evaluated and queried with, embedded by any text-embedding function.

* level prompts: per attribute one embedding per level 1..7, the ``metrics.mean_by_level`` of
  ``config.eval.prompt_wordings`` template descriptions per level (``descriptions.level_descriptions``: one
  attribute at the level, the others neutral, in the words the model was trained on) -> zero-shot attribute
  prediction and the prompt metrics;
* fixed prompts "very low arousal" ... "very high arousal" (``descriptions.level_prompts``: words the training
  descriptions never contain) -> the ``*_fixed_*`` metrics;
* paraphrased prompts (``descriptions.paraphrased_level_prompts``: "a drowsy voice, barely awake" ...) averaged
  per level -> the ``*_paraphrase_*`` metrics;
* retrieval queries: single-attribute description pools (``descriptions.attribute_queries``) -> the paper's
  AOC / VOC.

``embed_texts(list[str]) -> (N, D)`` is whatever embeds text: the evaluation embedder on the mesh, or the
inference API's. Evaluation embeds the texts first and computes the metrics from arrays: ``text_batches`` lists
the texts ``prompt_embeddings`` embeds, one list per call, and ``replay`` serves their embeddings back in that
order (each list embedded as one call, as ``prompt_embeddings`` would have).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from erclap import descriptions, metrics
from erclap.schema import LABEL_NAMES

EmbedTexts = Callable[[list[str]], np.ndarray]
# The attributes with level prompts (every prompt set), and those with a retrieval query pool (the paper's AOC and
# VOC).
PROMPT_ATTRIBUTES = LABEL_NAMES
QUERY_ATTRIBUTES = ("arousal", "valence")


def level_prompts(embed_texts: EmbedTexts, config) -> dict:
  """The level prompts of every prompt set.

  Returns a dict of {attribute: array} dicts:
    prompts / prompt_levels: (7, D) unit-norm embeddings (template wordings averaged per level) and (7,) levels;
    fixed_prompts / fixed_prompt_levels: the fixed prompts and their levels;
    paraphrase_prompts / paraphrase_prompt_levels: the paraphrased prompts averaged per level, and the levels.
  """
  out = {k: {} for k in ("prompts", "prompt_levels", "fixed_prompts", "fixed_prompt_levels", "paraphrase_prompts",
                         "paraphrase_prompt_levels")}
  for attribute in PROMPT_ATTRIBUTES:
    levels, texts = descriptions.level_descriptions(attribute, num_wordings=config.eval.prompt_wordings,
                                                    seed=config.seed)
    out["prompt_levels"][attribute], out["prompts"][attribute] = metrics.mean_by_level(embed_texts(texts), levels)
    fixed = descriptions.level_prompts(attribute)
    out["fixed_prompts"][attribute] = embed_texts(fixed)
    out["fixed_prompt_levels"][attribute] = np.linspace(1.0, 7.0, len(fixed))
    levels, texts = descriptions.paraphrased_level_prompts(attribute)
    out["paraphrase_prompt_levels"][attribute], out["paraphrase_prompts"][attribute] = metrics.mean_by_level(
        embed_texts(texts), levels)
  return out


def retrieval_queries(embed_texts: EmbedTexts, config) -> dict:
  """{"queries": {attribute: (Q, D)}, "query_values": {attribute: (Q,)}}: the single-attribute description
  pools of the retrieval Kendall tau (``QUERY_ATTRIBUTES``), four wordings per value 1..7."""
  out = {"queries": {}, "query_values": {}}
  for attribute in QUERY_ATTRIBUTES:
    values = np.arange(1, 8, dtype=np.float32)
    texts = descriptions.attribute_queries(attribute, values, num_wordings=4, seed=config.seed)
    query_values = np.repeat(values, len(texts) // len(values)) if len(texts) != len(values) else values
    out["queries"][attribute] = embed_texts(texts)
    out["query_values"][attribute] = np.asarray(query_values, np.float32)
  return out


def prompt_embeddings(embed_texts: EmbedTexts, config) -> dict:
  """``level_prompts`` and ``retrieval_queries`` in one dict (what ``metrics.summarize`` takes)."""
  return {**level_prompts(embed_texts, config), **retrieval_queries(embed_texts, config)}


def text_batches(config) -> list[list[str]]:
  """The texts ``prompt_embeddings(embed_texts, config)`` embeds, one list per ``embed_texts`` call, in order."""
  calls = []

  def record(texts: list[str]) -> np.ndarray:
    calls.append(list(texts))
    return np.ones((len(texts), 1), np.float32)  # a stand-in: only the texts are kept

  prompt_embeddings(record, config)
  return calls


def replay(embeddings: Sequence[np.ndarray]) -> EmbedTexts:
  """An ``embed_texts`` that returns ``embeddings`` one array per call, in order: the embedded ``text_batches``.

  Raises ValueError when a call asks for another number of texts than the next array holds, or runs past them."""
  remaining = list(embeddings)

  def embed_texts(texts: list[str]) -> np.ndarray:
    if not remaining:
      raise ValueError(f"replay: {len(embeddings)} embedded text batches, and a further one was asked for")
    array = np.asarray(remaining.pop(0))
    if len(array) != len(texts):
      raise ValueError(f"replay: {len(texts)} texts asked for, the next embedded batch has {len(array)} rows")
    return array

  return embed_texts
