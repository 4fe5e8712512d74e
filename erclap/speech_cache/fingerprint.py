"""What a speech-feature cache was computed from: its fingerprint, made from a config and the parameters, compared
and digested.

A cache (``erclap.speech_cache.store``) records its fingerprint (``fingerprint.json``); a run reads the cache only
when the fingerprint of its own config and parameters matches (``erclap.speech_source`` checks). The fields
(``FINGERPRINT_FIELDS``): the cache format's version, the digest of the parameters the cache stands for
(``erclap.trainable``: the frozen speech path), the representation, pooling, tower architecture, input
standardisation, dtype, crop, sample rate, corpus, and the feature width.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from erclap import data, models, sharding, trainable

# 2: per-split columns (labels, class) beside the features, rows in corpus order.
FORMAT_VERSION = 2
# Fields of a fingerprint, in the order a difference is reported.
FINGERPRINT_FIELDS = ("format_version", "params_digest", "representation", "speech_pooling", "speech_arch",
                      "speech_input", "dtype", "crop_seconds", "sample_rate", "corpus", "width")


def params_digest(tree) -> str:
  """sha256 of a nested dict of arrays: every leaf's path, dtype, shape and bytes (in sorted path order)."""
  digest = hashlib.sha256()

  def visit(prefix: str, node):
    if isinstance(node, Mapping):
      for key in sorted(node, key=str):
        visit(f"{prefix}/{key}", node[key])
      return
    leaf = np.ascontiguousarray(np.asarray(node))
    digest.update(f"{prefix}|{leaf.dtype.str}|{leaf.shape}\n".encode())
    digest.update(leaf.tobytes())

  visit("", tree)
  return digest.hexdigest()


def make_fingerprint(*, params_digest: str, representation: str, speech_pooling: str, speech_arch: str,
                     speech_input: tuple[float, float], dtype: str, crop_seconds: float, sample_rate: int,
                     corpus: Mapping, width: int) -> dict:
  """Everything the cached features depend on, as a JSON-able dict (``FINGERPRINT_FIELDS``).

  Args:
    params_digest: ``params_digest`` of the representation's parameters (tower, pooling, SER head).
    representation: what the projection reads ("pooled", "ser_hidden", "ser_output").
    speech_pooling: the pooling ("mean", "attentive_stats").
    speech_arch: a description of the tower's architecture (its dataclass repr).
    speech_input: (mean, std) of the waveform standardisation (std 0: off).
    dtype: the compute dtype.
    crop_seconds: length of the centre crop the features were computed on.
    sample_rate: audio sample rate.
    corpus: the corpus identity (name, builder version, builder config).
    width: D, the feature width.
  """
  return dict(format_version=FORMAT_VERSION, params_digest=str(params_digest), representation=str(representation),
              speech_pooling=str(speech_pooling), speech_arch=str(speech_arch),
              speech_input=[float(x) for x in speech_input], dtype=str(dtype), crop_seconds=float(crop_seconds),
              sample_rate=int(sample_rate), corpus={str(k): corpus[k] for k in sorted(corpus)}, width=int(width))


def fingerprint_differences(recorded: Mapping, current: Mapping, *, ignore: tuple[str, ...] = ()) -> list[str]:
  """One line per field that differs between a recorded and a current fingerprint ([] if they match)."""
  lines = []
  for key in FINGERPRINT_FIELDS:
    if key in ignore:
      continue
    old, new = recorded.get(key), current.get(key)
    if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
      what = "the speech representation's parameters (tower / pooling / SER head weights)" \
          if key == "params_digest" else key
      lines.append(f"{what}: cache {_short(old)} vs now {_short(new)}")
  return lines


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= 120 else text[:117] + "..."


def fingerprint_digest(fingerprint: Mapping) -> str:
  return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- from a config and its parameters


def speech_representation_name(model_config) -> str:
  """What the speech projection reads: one of ``models.SPEECH_REPRESENTATIONS``."""
  return model_config.get("speech_representation", model_config.get("speech_features", "pooled"))


def corpus_identity(data_config) -> dict:
  """The corpus the features belong to: name, builder version and variant (``data.CORPORA``), and data dir."""
  return dict(data.corpora.get(data_config).identity(data_config), data_dir=data.resolve_data_dir(data_config))


def config_fingerprint(config, *, params_digest: str = "", width: int = 0) -> dict:
  """The fingerprint (``make_fingerprint``) of the representation ``config`` describes.

  ``params_digest`` / ``width``: of the representation's parameters and output ("" / 0 where unknown)."""
  d, m = config.data, config.model
  return make_fingerprint(
      params_digest=params_digest, representation=speech_representation_name(m), speech_pooling=m.speech_pooling,
      speech_arch=repr(models.speech_arch_for(m)), speech_input=(m.speech_input_mean, m.speech_input_std),
      dtype=m.dtype, crop_seconds=data.eval_crop_seconds(d), sample_rate=int(d.sample_rate), corpus=corpus_identity(d),
      width=width)


def representation_fingerprint(config, params) -> dict:
  """The fingerprint of the speech representation of ``params`` (global arrays or numpy) under ``config``: the
  digest covers the parameters a cache stands for (``trainable.of(config).cached``).

  Gathers those parameters to every host: multi-host, every process must call it."""
  host = sharding.to_host({k: params[k] for k in trainable.of(config).cached if k in params})
  return config_fingerprint(config, params_digest=params_digest(host), width=models.speech_feature_width(params))
