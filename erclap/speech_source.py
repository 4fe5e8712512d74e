"""Where a run's speech comes from: audio through the speech path (``AUDIO``), or a speech-feature cache of its
frozen representation (``CACHED``, ``erclap.speech_cache``).

``of(config)`` is the one decision: ``CACHED`` when ``config.data.speech_features`` names a cache, else ``AUDIO``;
``problems(config)`` (checked at resolution, ``erclap.validation``) refuses a cache where something of the speech
path trains (``erclap.trainable``: ``Trainable.cached``) or the stage reads audio. Code that must run on audio
whatever the config says (``--mode=cache_speech`` computes the cache from audio) asks for ``AUDIO`` explicitly.

A source owns everything that differs between the two:

* the batch's speech inputs (``input_keys``: ``audio`` / ``audio_mask`` float32 / bool (B, T), or
  ``speech_features`` float32 (B, D)), its train-step keys (``step_keys``), model inputs of the right shapes
  (``dummy_inputs`` / ``dummy_batch``: the plan's input bytes and the step's batch shardings);
* which model method turns its inputs into the stage's training outputs (``forward_method``), into the stage's
  per-clip speech output (``output_method``: what evaluation keeps) and, for audio, into the representation a
  cache holds (``representation_method``);
* how the input pipeline reads a record's speech (``open``: the corpus split and a random or centre crop of its
  audio, or the cache rows, which hold the per-clip columns ``CACHED_COLUMNS`` too, so that the corpus records
  are never read), and its padding rows;
* the checks of a cache against the config (``open``) and against the parameters (``check``; a no-op for audio).

The model's parameters do not depend on the source: they are always initialised from audio (``AUDIO``'s dummy
inputs), so checkpoints serve both.

The corpora (TFDS) and the cache format are imported where records are read or a cache is checked: the train
step, the state and the plan use a source without the data stack (the accelerator benchmark runs where it is not
installed, ``benchmarks/bench_accelerator.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from erclap import trainable
from erclap.schema import LABEL_NAMES, TARGET_KEYS, TEXT_INPUT_KEYS

# The fields of a record that the input pipeline reads besides "id" and the speech: the per-clip columns a
# speech-feature cache stores beside the features.
CACHED_COLUMNS: dict[str, type] = {**dict.fromkeys(LABEL_NAMES, np.float32), "class_id": np.int32}
# Width of the placeholder ``speech_features`` of ``CACHED.dummy_inputs`` where only ranks and dtypes matter.
DUMMY_FEATURE_WIDTH = 1


def cache_columns(labels: np.ndarray, class_id: np.ndarray) -> dict[str, np.ndarray]:
  """Batch rows' ``labels`` (n, 3) and ``class_id`` (n,) -> the ``CACHED_COLUMNS`` of those rows."""
  labels = np.asarray(labels, np.float32)
  return {**{name: labels[:, j] for j, name in enumerate(LABEL_NAMES)},
          "class_id": np.asarray(class_id, np.int32)}


def num_samples(seconds: float, sample_rate: int) -> int:
  """Samples of a crop of ``seconds`` at ``sample_rate``; ValueError when shorter than one sample."""
  t = int(round(float(seconds) * int(sample_rate)))
  if t < 1:
    raise ValueError(f"crop length {seconds} s at {sample_rate} Hz is shorter than one sample")
  return t


def _to_float(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio)
  if audio.dtype == np.int16:
    return audio.astype(np.float32) * (1.0 / 32768.0)
  return audio.astype(np.float32)


def crop_or_pad(audio: np.ndarray, length: int, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(T0,) waveform -> ((length,) float32, (length,) bool valid-sample mask).

  Longer clips are cut at ``start`` (centre when None); shorter ones are zero-padded at the end."""
  wave = _to_float(audio)
  n = wave.shape[0]
  if n >= length:
    s = (n - length) // 2 if start is None else int(start)
    if not 0 <= s <= n - length:
      raise ValueError(f"crop start {s} outside 0..{n - length}")
    return np.ascontiguousarray(wave[s:s + length]), np.ones(length, bool)
  out, mask = np.zeros(length, np.float32), np.zeros(length, bool)
  out[:n], mask[:n] = wave, True
  return out, mask


# --------------------------------------------------------------------------- reading a record's speech


@dataclasses.dataclass(frozen=True)
class AudioCrop:
  """A record's speech from its audio: a random crop of ``length`` samples (with a generator, training) or the
  centre crop (without, evaluation), padded and masked. Picklable (Grain workers)."""
  length: int

  def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
    start = None
    if rng is not None:
      n = int(np.asarray(record["audio"]).shape[0])
      start = int(rng.integers(0, n - self.length + 1)) if n > self.length else 0
    audio, mask = crop_or_pad(record["audio"], self.length, start)
    return dict(audio=audio, audio_mask=mask)

  def padding(self) -> dict:
    """The speech of a padding row (masked out everywhere)."""
    return dict(audio=np.zeros(self.length, np.float32), audio_mask=np.zeros(self.length, bool))


@dataclasses.dataclass(frozen=True)
class CachedRow:
  """A record's speech from a cache row: its ``speech_features`` (``width`` floats); the generator is not used
  (the cache holds one crop per clip). Picklable (Grain workers)."""
  width: int

  def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
    del rng
    return dict(speech_features=np.asarray(record["speech_features"], np.float32))

  def padding(self) -> dict:
    return dict(speech_features=np.zeros(self.width, np.float32))


# --------------------------------------------------------------------------- the two sources


@dataclasses.dataclass(frozen=True)
class SpeechSource:
  """Where speech comes from (see the module docstring); ``AUDIO`` and ``CACHED`` are the two instances.

  Attributes:
    name: "audio" or "cached" (also the word run titles use).
    input_keys: the batch keys of its speech inputs, in the order the model methods take them.
    forward_method: the model method from these inputs (and the text inputs) to the stage's training outputs;
      None: the model's ``__call__``.
    representation_method: the model method from these inputs to the speech representation a cache holds
      (None: the inputs are that representation already).
  """
  name: str
  input_keys: tuple[str, ...]
  forward_method: str | None
  representation_method: str | None

  @property
  def step_keys(self) -> tuple[str, ...]:
    """The keys of a host batch that enter the jitted train step."""
    return self.input_keys + TEXT_INPUT_KEYS + TARGET_KEYS

  def output_method(self, stage) -> str:
    """The model method from these inputs to ``stage``'s per-clip speech output (``Stage.speech_output``)."""
    return stage.speech_output_method if self == AUDIO else "embed_speech_features"

  def model_inputs(self, stage, batch: dict) -> dict:
    """The keyword inputs of ``stage``'s model in ``batch``: the speech inputs and the stage's text inputs."""
    return {k: batch[k] for k in self.input_keys + stage.text_input_keys}

  def dummy_inputs(self, config, batch_size: int = 2, feature_width: int = DUMMY_FEATURE_WIDTH) -> dict:
    """Model inputs of the right ranks, shapes and dtypes (cached features ``feature_width`` wide)."""
    length = config.data.max_text_tokens
    text = dict(input_ids=np.zeros((batch_size, length), np.int32),
                attention_mask=np.ones((batch_size, length), np.int32))
    if self == CACHED:
      return dict(speech_features=np.zeros((batch_size, int(feature_width)), np.float32), **text)
    n = num_samples(config.data.max_seconds, config.data.sample_rate)
    return dict(audio=np.zeros((batch_size, n), np.float32), audio_mask=np.ones((batch_size, n), bool), **text)

  def dummy_batch(self, config, batch_size: int = 2, feature_width: int = DUMMY_FEATURE_WIDTH) -> dict:
    """A train-step batch (``step_keys``: model inputs, labels, class ids, validity) of the right shapes."""
    batch = self.dummy_inputs(config, batch_size, feature_width)
    batch.update(labels=np.zeros((batch_size, len(LABEL_NAMES)), np.float32),
                 class_id=np.zeros((batch_size,), np.int32), valid=np.ones((batch_size,), bool))
    return batch

  def open(self, config, split: str, *, train: bool):
    """The records of ``split`` and the reader of their speech (``AudioCrop`` / ``CachedRow``).

    Audio: the corpus split, cropped to ``data.max_seconds`` (training) or the evaluation crop. Cached: the
    cache's rows of the split (``store.CachedSpeechSource``: the corpus is only spot-checked), after checking the
    cache against everything ``config`` fixes (SpeechCacheError naming what differs)."""
    from erclap import data  # the data stack: see the module docstring
    from erclap.speech_cache import store

    d = config.data
    if self == AUDIO:
      seconds = d.max_seconds if train else data.eval_crop_seconds(d)
      return data.get_data_source(d, split), AudioCrop(num_samples(seconds, d.sample_rate))
    cached = open_split(config, split)
    return store.CachedSpeechSource(data.get_data_source(d, split), cached), CachedRow(cached.width)

  def check(self, config, params) -> None:
    """SpeechCacheError naming every difference between the cache and the representation ``params`` compute
    under ``config`` (weights, width, config); nothing to check for audio. Collective (multi-host)."""
    if self == CACHED:
      check_cache(config, params)

  def problems(self, config) -> list[str]:
    """Why ``config`` cannot take its speech from this source (empty: it can)."""
    if self == AUDIO:
      return []
    because = trainable.of(config).uncached_because
    if not because:
      return []
    where = config.data.speech_features
    return [f"config.data.speech_features={where!r}: a speech-feature cache stands for a frozen speech path, but "
            f"{because} (train on audio: config.data.speech_features='')"]


AUDIO = SpeechSource("audio", ("audio", "audio_mask"), forward_method=None, representation_method="speech_feature")
CACHED = SpeechSource("cached", ("speech_features",), forward_method="from_speech_features",
                      representation_method=None)


def of(config) -> SpeechSource:
  """The speech source of ``config``: ``CACHED`` when ``config.data.speech_features`` names a cache, else
  ``AUDIO``."""
  return CACHED if config.data.get("speech_features", "") else AUDIO


# --------------------------------------------------------------------------- a cache against the run


def open_split(config, split: str):
  """The cached split (``store.CachedSplit``) of ``config.data.speech_features``, checked against everything
  ``config`` fixes (the parameters are checked where they are known: ``check_cache``)."""
  from erclap.speech_cache import fingerprint as cache_fingerprint  # the data stack: see the module docstring
  from erclap.speech_cache import store

  directory = config.data.speech_features
  cached = store.CachedSplit(directory, split)
  differences = cache_fingerprint.fingerprint_differences(cached.fingerprint, cache_fingerprint.config_fingerprint(
      config), ignore=("params_digest", "width"))
  if differences:
    raise store.SpeechCacheError(
        f"the speech-feature cache {cached.directory} (data.speech_features) was made with another config:\n  "
        + "\n  ".join(differences) + "\nRebuild it with --mode=cache_speech into a fresh directory.")
  missing = [name for name in CACHED_COLUMNS if name not in cached.column_names]
  if missing:
    raise store.SpeechCacheError(f"split {split!r} of the speech-feature cache {cached.directory} lacks the columns "
                                 f"{missing}: rebuild it with --mode=cache_speech")
  return cached


def check_cache(config, params) -> dict:
  """Raises SpeechCacheError naming every difference between ``config.data.speech_features`` and the speech
  representation of ``params`` (weights, width, config); returns the fingerprint. Collective (multi-host)."""
  from erclap.speech_cache import fingerprint as cache_fingerprint  # the data stack: see the module docstring
  from erclap.speech_cache import store

  directory = config.data.speech_features
  current = cache_fingerprint.representation_fingerprint(config, params)
  recorded = store.read_fingerprint(directory)
  if recorded is None:
    raise store.SpeechCacheError(f"data.speech_features={directory!r} holds no speech-feature cache: run "
                                 f"--mode=cache_speech with the same config first")
  differences = cache_fingerprint.fingerprint_differences(recorded, current)
  if differences:
    raise store.SpeechCacheError(
        f"the speech-feature cache {directory} (data.speech_features) does not match the model:\n  "
        + "\n  ".join(differences) + "\nRebuild it with --mode=cache_speech (from these weights) into a fresh "
        "directory.")
  return current
