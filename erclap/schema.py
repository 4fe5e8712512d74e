"""What an example and a batch hold: the label names and the arrays that enter the jitted step.

The one definition of the emotion attributes (their order is the order of every ``labels`` array), of the
batch keys, and of the metric names that changed between releases; training, evaluation, export and inference
all read them from here.
"""

from __future__ import annotations

import numpy as np

# The emotion attributes, in the column order of every (N, 3) ``labels`` array.
LABEL_NAMES: tuple[str, ...] = ("arousal", "valence", "dominance")

# The paper's names of the retrieval Kendall tau per attribute: AOC / VOC (arousal / valence ordinal consistency).
ORDINAL_CONSISTENCY_NAMES = {"arousal": "aoc", "valence": "voc", "dominance": "doc"}

# Metric names of earlier releases -> today's. Before, ``aoc_*`` / ``voc_*`` named the anchor-wise statistic
# and ``retrieval_tau_*`` the paper's AOC / VOC; the paper's names now go to the paper's figures.
METRIC_RENAMES = {
    **{f"{old}{suffix}": f"anchor_tau_{attribute}{new_suffix}"
       for old, attribute in (("aoc", "arousal"), ("voc", "valence"))
       for suffix, new_suffix in (("_mean", ""), ("_s2t", "_s2t"), ("_t2s", "_t2s"))},
    **{f"retrieval_tau_{attribute}": name for attribute, name in ORDINAL_CONSISTENCY_NAMES.items()},
    **{f"retrieval_tau_std_{attribute}": f"{name}_std" for attribute, name in ORDINAL_CONSISTENCY_NAMES.items()},
    "retrieval_num_levels": "aoc_voc_num_levels",
    "retrieval_num_draws": "aoc_voc_num_draws",
    "retrieval_top_k": "aoc_voc_top_k",
}


def renamed_metric_message(name: str) -> str | None:
  """Why ``name`` is no longer a metric and what to use instead (None when it is not an old name)."""
  new = METRIC_RENAMES.get(name)
  if new is None:
    return None
  message = f"metric {name!r} was renamed {new!r}"
  if new.startswith("anchor_tau_"):
    message += (f" (the anchor-wise Kendall tau; the paper's {name[:3].upper()}, Kendall's tau of retrieval order, "
                f"is {name[:3]!r})")
  return message


# Top-level parameters of the speech representation (what the projection reads): tower, pooling, SER head.
SPEECH_REPRESENTATION: tuple[str, ...] = ("speech_tower", "speech_pool", "ser_head")

# Keys of a host batch that enter the model (strings such as ids stay on the host).
SPEECH_INPUT_KEYS = ("audio", "audio_mask")
# With a speech-feature cache (``config.data.speech_features``, ``erclap.speech_features``) the speech side of
# a batch is the cached representation, float32 (B, D), instead of the waveform.
CACHED_SPEECH_INPUT_KEYS = ("speech_features",)
TEXT_INPUT_KEYS = ("input_ids", "attention_mask")
MODEL_INPUT_KEYS = SPEECH_INPUT_KEYS + TEXT_INPUT_KEYS
CACHED_MODEL_INPUT_KEYS = CACHED_SPEECH_INPUT_KEYS + TEXT_INPUT_KEYS
TARGET_KEYS = ("labels", "class_id", "valid")
# Keys of a host batch that enter the jitted train step (uncached / cached speech).
STEP_KEYS = MODEL_INPUT_KEYS + TARGET_KEYS
CACHED_STEP_KEYS = CACHED_MODEL_INPUT_KEYS + TARGET_KEYS


def uses_speech_cache(config) -> bool:
  """Whether the run reads cached speech features (``config.data.speech_features`` names a directory)."""
  return bool(config.data.get("speech_features", ""))


def speech_input_keys(config) -> tuple[str, ...]:
  return CACHED_SPEECH_INPUT_KEYS if uses_speech_cache(config) else SPEECH_INPUT_KEYS


def step_keys(config) -> tuple[str, ...]:
  """The keys of a train-step batch of ``config``: ``CACHED_STEP_KEYS`` with a speech cache, else ``STEP_KEYS``."""
  return CACHED_STEP_KEYS if uses_speech_cache(config) else STEP_KEYS


def step_keys_of(batch: dict) -> tuple[str, ...]:
  """The train-step keys a host batch carries (cached or uncached speech): for code that has no config."""
  return CACHED_STEP_KEYS if CACHED_SPEECH_INPUT_KEYS[0] in batch else STEP_KEYS


# Width of the placeholder ``speech_features`` of ``dummy_inputs``: the model initialises its parameters from
# a short silent clip through the tower whatever width is passed (``CLAPModel.__call__``), so the parameter
# tree is the uncached model's; the placeholder only fixes ranks and dtypes.
DUMMY_FEATURE_WIDTH = 1


def dummy_inputs(config, batch_size: int = 2, feature_width: int = DUMMY_FEATURE_WIDTH) -> dict[str, np.ndarray]:
  """Model inputs of the right ranks, shapes and dtypes (for initialisation and shape inference); with a speech
  cache, ``speech_features`` of ``feature_width`` (the real width where a step is traced on them)."""
  length = config.data.max_text_tokens
  text = dict(input_ids=np.zeros((batch_size, length), np.int32),
              attention_mask=np.ones((batch_size, length), np.int32))
  if uses_speech_cache(config):
    return dict(speech_features=np.zeros((batch_size, int(feature_width)), np.float32), **text)
  num_samples = int(round(config.data.max_seconds * config.data.sample_rate))
  return dict(audio=np.zeros((batch_size, num_samples), np.float32),
              audio_mask=np.ones((batch_size, num_samples), bool), **text)


def dummy_batch(config, batch_size: int = 2, feature_width: int = DUMMY_FEATURE_WIDTH) -> dict[str, np.ndarray]:
  """A step batch (model inputs, labels, class ids, validity) of the right shapes and dtypes."""
  batch = dummy_inputs(config, batch_size, feature_width)
  batch.update(labels=np.zeros((batch_size, len(LABEL_NAMES)), np.float32),
               class_id=np.zeros((batch_size,), np.int32), valid=np.ones((batch_size,), bool))
  return batch
