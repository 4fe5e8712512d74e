"""The speech-feature cache: a frozen speech representation computed once per clip and read instead of audio.

When nothing of the speech path trains (``erclap.trainable``: ``Trainable.cached``), the speech representation
(tower -> pooling -> optional SER head: everything the CLAP model computes from audio before its projection)
never changes while the cross-modal stage trains, yet an uncached step runs the whole tower again for every
example of every step. The cache holds it once per clip:

* ``store``: the on-disk format (one directory: fingerprint, per-split features, columns, ids, manifests),
  written atomically and read by random access;
* ``fingerprint``: what the features were computed from (made from a config and the parameters), compared and
  digested.

``erclap.speech_source.CACHED`` reads it (and checks it against the run's config and parameters);
``erclap.speech_cache_mode`` (``--mode=cache_speech``) computes and writes it.

Where it lives: ``config.data.speech_features`` (``directory``); ``erclap.resolve`` puts a two-stage run's cache
in ``<workdir>/speech_features``.
"""

from __future__ import annotations

import os

DEFAULT_DIR = "speech_features"


def directory(config, workdir: str) -> str:
  """Where the cache of a run is: ``config.data.speech_features``, or ``<workdir>/speech_features`` when it is ""
  (an absolute path for a local one)."""
  path = config.data.speech_features or os.path.join(workdir, DEFAULT_DIR)
  return path if "://" in path else os.path.abspath(path)
