"""Random-access reading of a built corpus: ``get_data_source(data_config, split)`` returns a picklable source
(``len`` and ``__getitem__``) of records in the common schema::

  {"id": str, "audio": int16 (T,) at 16 kHz, "arousal" / "valence" / "dominance": float32 on 1–7,
   "class_id": int32 (-1 = no categorical label), "speaker": str}

A split name may be read from several stored splits (``Corpus.split_parts``, ``erclap.data.splits``).
TensorFlow is never imported here: TFDS reads ArrayRecord without it.
"""

from __future__ import annotations

import numpy as np

from erclap.data import corpora
from erclap.schema import LABEL_NAMES


class DataSource:
  """Random access over one or more stored TFDS splits, records normalised to the common schema.

  Picklable (grain worker processes): it pickles its recipe and reopens the ArrayRecord files lazily."""

  def __init__(self, data_config, split: str):
    # The data config as plain values (picklable), with the data dir resolved once.
    self._config = dict(_plain(data_config), data_dir=corpora.resolve_data_dir(data_config))
    self.split = split
    corpus = corpora.get(data_config)
    builder = self._make_builder()
    if not corpora.is_built(builder):
      raise ValueError(f"{data_config.name} is not built in {self._config['data_dir']}: call "
                       f"erclap.data.ensure_dataset(config.data) first")
    available = list(builder.info.splits.keys())
    self.parts = corpus.split_parts(_AttrDict(self._config), split, available)
    self._sizes = [builder.info.splits[p].num_examples for p in self.parts]
    self._offsets = np.cumsum([0] + self._sizes)
    self._sources = None

  def _make_builder(self):
    return corpora.make_builder(_AttrDict(self._config), self._config["data_dir"])

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_sources"] = None
    return state

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def _open(self):
    if self._sources is None:
      builder = self._make_builder()
      self._sources = [builder.as_data_source(split=p) for p in self.parts]
    return self._sources

  def __getitem__(self, index) -> dict:
    index = int(index)
    n = len(self)
    if index < 0:
      index += n
    if not 0 <= index < n:
      raise IndexError(f"index {index} out of range for {self._config['name']}:{self.split} of {n} records")
    part = int(np.searchsorted(self._offsets, index, side="right") - 1)
    return normalize_record(self._open()[part][index - int(self._offsets[part])])

  def __repr__(self):
    return f"DataSource({self._config['name']}:{self.split}, {len(self)} records, parts={self.parts})"


class _AttrDict(dict):
  """The few data-config fields the builders need, readable as attributes like a ConfigDict."""

  def __getattr__(self, key):
    try:
      value = self[key]
    except KeyError:
      raise AttributeError(key) from None
    return _AttrDict(value) if isinstance(value, dict) else value


def _plain(data_config) -> dict:
  """A data config (ConfigDict, or a dict of its values) as nested plain dicts."""
  return data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def normalize_record(record: dict) -> dict:
  """A stored TFDS record -> the common schema (str ids, int16 audio, float32 labels, int32 class)."""
  return {
      "id": _text(record["id"]),
      "audio": np.asarray(record["audio"]),
      **{name: np.float32(record[name]) for name in LABEL_NAMES},
      "class_id": np.int32(record["class_id"]),
      "speaker": _text(record["speaker"]),
  }


def get_data_source(data_config, split: str) -> DataSource:
  """Random-access source of ``split`` (see the module docstring); the corpus must be built."""
  return DataSource(data_config, split)
