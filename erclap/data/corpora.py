"""The registry of corpora (``CORPORA``): each corpus's name, TFDS builder, identity and split names, registered once.

Adding a corpus is one ``register(Corpus(...))`` call: its ``data.name``, its builder class (its ``VERSION`` is
part of the corpus's identity), the builder's keyword arguments from the data config, how the variant a config
selects is named (the builder config of a synthesised corpus, a fold), whether it is built from licensed files in
``data.manual_dir``, and how its split names map to stored splits (``erclap.data.splits``). Everything else reads
the registry: building (``erclap.data.prepare``), reading (``erclap.data.source``), the speech-feature cache's
corpus identity (``erclap.speech_cache.fingerprint``) and config validation.

Also here, the data config's readings every part shares: where corpora live (``resolve_data_dir``) and the
evaluation crop (``eval_crop_seconds``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from erclap.data import builders, embedded, espeak, splits

SAMPLE_RATE = 16000  # every corpus is stored at this rate


@dataclasses.dataclass(frozen=True)
class Corpus:
  """One corpus ERCLAP can build and read.

  Attributes:
    name: its ``data.name``.
    builder: its TFDS builder class; ``builder.VERSION`` is part of its identity.
    builder_kwargs: ``builder_kwargs(data_config) -> dict``, the builder's keyword arguments besides ``data_dir``.
    variant: ``variant(data_config) -> str``, the variant the config selects, for its identity ("" = the only
      one): a synthesised corpus's spec name (its builder config), a fold of a licensed corpus.
    licensed: built from the user's files in ``data.manual_dir``, with a record of that source
      (``erclap.data.prepare``); otherwise synthesised from the config alone.
    split_parts: ``split_parts(data_config, split, available) -> list[str]``, the stored splits a split name
      is read from (``erclap.data.splits``).
  """
  name: str
  builder: type
  builder_kwargs: Callable[[Any], dict]
  variant: Callable[[Any], str]
  licensed: bool = False
  split_parts: Callable[[Any, str, list[str]], list[str]] = splits.by_name

  def identity(self, data_config) -> dict:
    """What names the corpus a config selects: {"name", "version" (the builder's), "config" (the variant)}."""
    return dict(name=self.name, version=str(self.builder.VERSION), config=self.variant(data_config))


CORPORA: dict[str, Corpus] = {}


def register(corpus: Corpus) -> Corpus:
  """Adds ``corpus`` to ``CORPORA`` under its name (a name registered twice is an error); returns it."""
  if corpus.name in CORPORA:
    raise ValueError(f"corpus {corpus.name!r} is already registered")
  CORPORA[corpus.name] = corpus
  return corpus


def _unreadable_tolerance(data_config) -> dict:
  return dict(unreadable_audio_tolerance=float(data_config.unreadable_audio_tolerance))


register(Corpus(
    name="embedded", builder=builders.ErclapEmbedded,
    builder_kwargs=lambda d: dict(spec=embedded.EmbeddedSpec.from_config(d)),
    variant=lambda d: embedded.EmbeddedSpec.from_config(d).config_name()))
register(Corpus(
    name="espeak", builder=builders.ErclapEspeak,
    builder_kwargs=lambda d: dict(spec=espeak.EspeakSpec.from_config(d)),
    variant=lambda d: espeak.EspeakSpec.from_config(d).config_name()))
register(Corpus(
    name="msp_podcast", builder=builders.ErclapMspPodcast, builder_kwargs=_unreadable_tolerance,
    variant=lambda d: "", licensed=True))
register(Corpus(
    name="iemocap", builder=builders.ErclapIemocap, builder_kwargs=_unreadable_tolerance,
    variant=lambda d: f"test_session{int(d.iemocap_test_session)}", licensed=True,
    split_parts=splits.iemocap_folds))


def get(data_config) -> Corpus:
  """The registered corpus of ``data_config.name``; ValueError naming the known ones, or a sample rate other
  than the stored one."""
  name = data_config.name
  if name not in CORPORA:
    raise ValueError(f"data.name={name!r} is not one of {tuple(CORPORA)}")
  if int(data_config.sample_rate) != SAMPLE_RATE:
    raise ValueError(f"data.sample_rate={data_config.sample_rate}: the corpora are stored at {SAMPLE_RATE} Hz")
  return CORPORA[name]


class _QuietCustomConfig:
  """Drops TFDS's "Using custom data configuration" warning: our builder configs are always custom."""

  def filter(self, record) -> bool:
    return "custom data configuration" not in record.getMessage()


def make_builder(data_config, data_dir: str):
  """The TFDS builder of the configured corpus in ``data_dir`` (built or not)."""
  corpus = get(data_config)
  absl_logger, quiet = logging.getLogger("absl"), _QuietCustomConfig()
  absl_logger.addFilter(quiet)
  try:
    return corpus.builder(data_dir=data_dir, **corpus.builder_kwargs(data_config))
  finally:
    absl_logger.removeFilter(quiet)


def is_built(builder) -> bool:
  """Whether the builder's corpus is completely built (TFDS writes dataset_info.json last)."""
  return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def resolve_data_dir(data_config) -> str:
  """data_config.data_dir, else $ERCLAP_DATA_DIR, else ~/tensorflow_datasets (expanded, absolute)."""
  path = data_config.get("data_dir", "") or os.environ.get("ERCLAP_DATA_DIR", "") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(path))


def eval_crop_seconds(data_config) -> float:
  """Length of the evaluation (centre) crop: ``data.eval_max_seconds``, or ``data.max_seconds`` when 0."""
  return float(data_config.eval_max_seconds) or float(data_config.max_seconds)
