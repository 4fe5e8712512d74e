"""Which speech-feature cache fits a config and a model: its fingerprint, its per-clip columns, and the checks.

A cache (``erclap.speech_cache.store``) records what its features were computed from. Here that record is made
from a config (``config_fingerprint``: representation, pooling, architecture, input standardisation, dtype, crop,
sample rate, corpus) and from the parameters themselves (``representation_fingerprint``: their digest and the
feature width); ``open_split`` opens a cached split checked against a config, ``check`` checks a cache against
the parameters a run trains or evaluates with.
"""

from __future__ import annotations

import numpy as np

from erclap import data, models, schema, sharding
from erclap.schema import LABEL_NAMES
from erclap.speech_cache import store

# The fields of a record that the input pipeline reads besides "id" and the audio (``erclap.input_pipeline``):
# the per-clip columns a speech-feature cache stores beside the features.
CACHED_COLUMNS: dict[str, type] = {**dict.fromkeys(LABEL_NAMES, np.float32), "class_id": np.int32}


def cache_columns(labels: np.ndarray, class_id: np.ndarray) -> dict[str, np.ndarray]:
  """Batch rows' ``labels`` (n, 3) and ``class_id`` (n,) -> the ``CACHED_COLUMNS`` of those rows."""
  labels = np.asarray(labels, np.float32)
  return {**{name: labels[:, j] for j, name in enumerate(LABEL_NAMES)},
          "class_id": np.asarray(class_id, np.int32)}


def speech_representation_name(model_config) -> str:
  """What the speech projection reads: "pooled", "ser_hidden" or "ser_output"."""
  return model_config.get("speech_representation", model_config.get("speech_features", "pooled"))


def corpus_identity(data_config) -> dict:
  """The corpus the features belong to: name, builder version and variant (``data.CORPORA``), and data dir."""
  return dict(data.corpora.get(data_config).identity(data_config), data_dir=data.resolve_data_dir(data_config))


def config_fingerprint(config, *, params_digest: str = "", width: int = 0) -> dict:
  """The fingerprint (``store.make_fingerprint``) of the representation ``config`` describes.

  ``params_digest`` / ``width``: of the representation's parameters and output ("" / 0 where unknown)."""
  d, m = config.data, config.model
  return store.make_fingerprint(
      params_digest=params_digest, representation=speech_representation_name(m), speech_pooling=m.speech_pooling,
      speech_arch=repr(models.speech_arch_for(m)), speech_input=(m.speech_input_mean, m.speech_input_std),
      dtype=m.dtype, crop_seconds=data.eval_crop_seconds(d), sample_rate=int(d.sample_rate), corpus=corpus_identity(d),
      width=width)


def open_split(config, split: str) -> store.CachedSplit:
  """The cached split of ``config.data.speech_features``, checked against everything ``config`` fixes
  (the parameters are checked where they are known: ``check``)."""
  directory = config.data.speech_features
  cached = store.CachedSplit(directory, split)
  differences = store.fingerprint_differences(cached.fingerprint, config_fingerprint(config),
                                                        ignore=("params_digest", "width"))
  if differences:
    raise store.SpeechCacheError(
        f"the speech-feature cache {cached.directory} (data.speech_features) was made with another config:\n  "
        + "\n  ".join(differences) + "\nRebuild it with --mode=cache_speech into a fresh directory.")
  missing = [name for name in CACHED_COLUMNS if name not in cached.column_names]
  if missing:
    raise store.SpeechCacheError(f"split {split!r} of the speech-feature cache {cached.directory} "
                                           f"lacks the columns {missing}: rebuild it with --mode=cache_speech")
  return cached


def representation_fingerprint(config, params) -> dict:
  """The fingerprint of the speech representation of ``params`` (global arrays or numpy) under ``config``.

  Gathers the representation's parameters to every host: multi-host, every process must call it."""
  host = sharding.to_host({k: params[k] for k in schema.SPEECH_REPRESENTATION if k in params})
  return config_fingerprint(config, params_digest=store.params_digest(host),
                                  width=models.speech_feature_width(params))


def check(config, params) -> dict:
  """Raises SpeechCacheError naming every difference between ``config.data.speech_features`` and the speech
  representation of ``params`` (weights, width, config); returns the fingerprint. Collective (multi-host)."""
  directory = config.data.speech_features
  current = representation_fingerprint(config, params)
  recorded = store.read_fingerprint(directory)
  if recorded is None:
    raise store.SpeechCacheError(f"data.speech_features={directory!r} holds no speech-feature cache: "
                                           f"run --mode=cache_speech with the same config first")
  differences = store.fingerprint_differences(recorded, current)
  if differences:
    raise store.SpeechCacheError(
        f"the speech-feature cache {directory} (data.speech_features) does not match the model:\n  "
        + "\n  ".join(differences) + "\nRebuild it with --mode=cache_speech (from these weights) into a fresh "
        "directory.")
  return current
