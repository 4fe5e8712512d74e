"""What an example and a batch hold: the label names and the arrays that enter the jitted step.

The one definition of the emotion attributes (their order is the order of every ``labels`` array) and of
the batch keys; training, evaluation, export and inference all read them from here.
"""

from __future__ import annotations

import numpy as np

# The emotion attributes, in the column order of every (N, 3) ``labels`` array.
LABEL_NAMES: tuple[str, ...] = ("arousal", "valence", "dominance")

# Keys of a host batch that enter the model (strings such as ids stay on the host).
SPEECH_INPUT_KEYS = ("audio", "audio_mask")
TEXT_INPUT_KEYS = ("input_ids", "attention_mask")
MODEL_INPUT_KEYS = SPEECH_INPUT_KEYS + TEXT_INPUT_KEYS
# Keys of a host batch that enter the jitted train step.
STEP_KEYS = MODEL_INPUT_KEYS + ("labels", "class_id", "valid")


def model_inputs(config, batch: dict) -> dict:
  """The model's inputs of ``batch``: audio only for the SER stage, audio and text for the CLAP stage."""
  keys = SPEECH_INPUT_KEYS if config.stage == "ser" else MODEL_INPUT_KEYS
  return {k: batch[k] for k in keys}


def dummy_inputs(config, batch_size: int = 2) -> dict[str, np.ndarray]:
  """Model inputs of the right shapes and dtypes (for initialisation and shape inference)."""
  num_samples = int(round(config.data.max_seconds * config.data.sample_rate))
  length = config.data.max_text_tokens
  return dict(audio=np.zeros((batch_size, num_samples), np.float32),
              audio_mask=np.ones((batch_size, num_samples), bool),
              input_ids=np.zeros((batch_size, length), np.int32),
              attention_mask=np.ones((batch_size, length), np.int32))


def dummy_batch(config, batch_size: int = 2) -> dict[str, np.ndarray]:
  """A step batch (model inputs, labels, class ids, validity) of the right shapes and dtypes."""
  batch = dummy_inputs(config, batch_size)
  batch.update(labels=np.zeros((batch_size, len(LABEL_NAMES)), np.float32),
               class_id=np.zeros((batch_size,), np.int32), valid=np.ones((batch_size,), bool))
  return batch
