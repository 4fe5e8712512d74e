"""Grain input pipeline: stored corpus -> seeded shuffle -> this process's rows -> decode -> crop/pad ->
description -> batch -> tokenize (-> multiprocess prefetch).

Training (``create_train_iterator``) is infinite: an IndexSampler reshuffles every epoch from the data seed
(``config_lib.data_seed``: ``config.data.seed``, -1 = ``config.seed``), each JAX process reads only its rows of every
global batch (``GlobalBatchSlice``: the global batch does not depend on the process count), and every random choice
(crop offset, which of the example's descriptions) comes from the per-record generator Grain derives from the seed and
the record's position in the global order, so the stream is deterministic and its ``get_state()`` resumes exactly. The
state identifies the sample order and the records by content (the sampler's settings, the corpus split, a cache's row
ids), never by a path, so a moved or copied workdir resumes; a state of other settings is refused naming them
(``TrainIterator``).
Evaluation (``create_eval_iterator``) runs a split once in stored order, centre-crops, uses description
variant 0, and pads the last batch with ``valid=False`` rows so shapes stay static.

Which records and how a record's speech is read is the speech source's (``erclap.speech_source``: the config's,
or one given explicitly): from audio (a random crop for training, the centre crop for evaluation), or from a
speech-feature cache alone (``speech_source.CACHED``: record i is cache row i, holding the id, the
``speech_source.CACHED_COLUMNS`` and the cached speech representation), never the corpus records and their
audio: batches then carry ``speech_features`` in place of ``audio`` / ``audio_mask``, and training sees the one
crop the cache holds per clip (the evaluation crop) instead of random crops.

Batches (host-local, B = global batch // process count; T = round(seconds * sample_rate); L =
``config.data.max_text_tokens``; D = the cached representation's width)::

  audio float32 (B, T)   audio_mask bool (B, T)   | cached: speech_features float32 (B, D)
  input_ids int32 (B, L)   attention_mask int32 (B, L)
  labels float32 (B, 3) (arousal, valence, dominance)   class_id int32 (B,)   valid bool (B,)
  eval only: id (B,) numpy object array of str, description list[str]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator

import grain
import jax
import numpy as np
from absl import flags

from erclap import checkpointing, config_lib, speech_source
from erclap import descriptions as desc_lib
from erclap.schema import LABEL_NAMES
from erclap.speech_source import SpeechSource


class DescriptionPicker:
  """Chooses an example's description: from LLM-written ones (JSONL) or from its template variants."""

  def __init__(self, data_config, seed: int, ids: list[str] | None = None, *, source_name: str = ""):
    self.per_example = int(data_config.descriptions_per_example)
    if self.per_example < 1:
      raise ValueError(f"data.descriptions_per_example must be >= 1, got {self.per_example}")
    self.seed = int(seed)
    self.table = None
    if data_config.descriptions != "templates":
      table = desc_lib.load_jsonl(data_config.descriptions)
      if ids is not None:
        desc_lib.check_coverage(table, ids, source=source_name or data_config.descriptions)
        wanted = set(ids)
        table = {k: v for k, v in table.items() if k in wanted}  # smaller pickles for grain workers
      self.table = table

  def texts(self, record: dict) -> list[str]:
    if self.table is not None:
      try:
        return self.table[record["id"]]
      except KeyError:
        raise ValueError(f"example id {record['id']!r} has no LLM-written description") from None
    a, v, d = (float(record[k]) for k in LABEL_NAMES)
    return [desc_lib.describe(a, v, d, variant=k)
            for k in desc_lib.example_variants(record["id"], self.per_example, self.seed)]

  def pick(self, record: dict, rng: np.random.Generator | None) -> str:
    """rng None: the first (deterministic, for evaluation); otherwise a uniform draw."""
    if self.table is not None:
      texts = self.texts(record)
      return texts[0] if rng is None else texts[int(rng.integers(len(texts)))]
    variants = desc_lib.example_variants(record["id"], self.per_example, self.seed)
    k = 0 if rng is None else variants[int(rng.integers(len(variants)))]
    a, v, d = (float(record[key]) for key in LABEL_NAMES)
    return desc_lib.describe(a, v, d, variant=k)


def _example(record: dict, speech: dict, text: str, valid: bool = True) -> dict:
  """``speech``: what the source's reader gives ({"audio", "audio_mask"} or {"speech_features"})."""
  return {
      **speech, "text": text,
      "labels": np.array([record[k] for k in LABEL_NAMES], np.float32),
      "class_id": np.int32(record["class_id"]), "valid": np.bool_(valid),
  }


def _tokenize_batch(batch: dict, tokenizer: Callable, max_tokens: int) -> dict:
  texts = [str(t) for t in batch.pop("text")]
  tok = tokenizer(texts)
  ids, attn = np.asarray(tok["input_ids"], np.int32), np.asarray(tok["attention_mask"], np.int32)
  if ids.shape != (len(texts), max_tokens) or attn.shape != ids.shape:
    raise ValueError(f"tokenizer returned input_ids {ids.shape} / attention_mask {attn.shape}; expected "
                     f"({len(texts)}, {max_tokens}) (padded to data.max_text_tokens)")
  batch["input_ids"], batch["attention_mask"] = ids, attn
  return batch


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= int(process_index) < int(process_count):
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
  return int(process_index), int(process_count)


# ----------------------------------------------------------------------------- training


class _TrainExample(grain.transforms.RandomMap):
  """RandomMap: record -> its speech (the source's reader: a random crop, or the cache row), labels and one
  description (Grain's per-record rng: the crop first, then the description)."""

  def __init__(self, speech: Callable, picker: DescriptionPicker):
    self.speech, self.picker = speech, picker

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    speech = self.speech(record, rng)
    return _example(record, speech, self.picker.pick(record, rng))


class _Tokenize(grain.transforms.Map):
  def __init__(self, tokenizer: Callable, max_tokens: int):
    self.tokenizer, self.max_tokens = tokenizer, max_tokens

  def map(self, batch: dict) -> dict:
    return _tokenize_batch(batch, self.tokenizer, self.max_tokens)


def create_train_iterator(config, tokenizer: Callable, *, source: SpeechSource | None = None,
                          process_index: int | None = None, process_count: int | None = None) -> TrainIterator:
  """Infinite, seeded, per-process-sharded iterator of training batches (a ``TrainIterator`` around a Grain
  DataLoader iterator, with get_state()/set_state()); batch size config.train.global_batch_size // process_count.
  ``source``: where the speech comes from (None: ``speech_source.of(config)``)."""
  pi, pc = _process(process_index, process_count)
  d = config.data
  global_bs = int(config.train.global_batch_size)
  if global_bs % pc:
    raise ValueError(f"config.train.global_batch_size={global_bs} is not a multiple of process_count={pc}")
  local_bs = global_bs // pc
  source = speech_source.of(config) if source is None else source
  records, speech = source.open(config, d.train_split, train=True)
  if len(records) < pc:
    raise ValueError(f"split {d.train_split!r} has {len(records)} examples, fewer than {pc} processes")
  ids = source_ids(records) if d.descriptions != "templates" else None
  picker = DescriptionPicker(d, config_lib.data_seed(config), ids, source_name=f"{d.name}:{d.train_split}")
  if int(d.worker_count) > 0:
    if not flags.FLAGS.is_parsed():  # library use outside absl.app: Grain's workers read its flags
      flags.FLAGS.mark_as_parsed()
  sampler = GlobalBatchSlice(
      grain.samplers.IndexSampler(num_records=len(records), shuffle=True, num_epochs=None,
                                  seed=config_lib.data_seed(config),
                                  shard_options=grain.sharding.NoSharding()),
      global_batch_size=global_bs, process_index=pi, process_count=pc)
  loader = grain.DataLoader(
      data_source=records, sampler=sampler,
      operations=[_TrainExample(speech, picker),
                  grain.transforms.Batch(batch_size=local_bs, drop_remainder=True),
                  _Tokenize(tokenizer, int(d.max_text_tokens))],
      worker_count=int(d.worker_count), worker_buffer_size=max(1, int(d.prefetch_buffer_size)),
      read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(local_bs, 16)))
  return TrainIterator(iter(loader), sampler=sampler, source=records, worker_count=int(d.worker_count))


# What each field of the sampler's repr (``GlobalBatchSlice`` around Grain's ``IndexSampler``) comes from.
SAMPLER_FIELDS = {
    "seed": "config.data.seed (the shuffling seed; -1: config.seed)",
    "global": "config.train.global_batch_size",
    "num_records": "the number of training records (the corpus or config.data.train_split changed)",
    "local": "the rows each process reads (the process count)",
    "offset": "this process's rows (the process index or count)",
}
_REPR_FIELD = re.compile(r"(\w+)=([^,()]+)")


class TrainIterator:
  """The training stream: a Grain DataLoader iterator whose checkpointed state is checked against this run.

  Grain records ``repr`` of the sampler and of the data source in the iterator state and refuses to restore
  another. ``state_differences`` names the settings behind such a difference (the seed, the global batch size,
  the training records, the worker count), which ``erclap.checkpointing`` reports as a mismatch of the config
  rather than damage; ``set_state`` also takes a state whose data source is recorded in an earlier form of the
  same source (a speech-feature cache named by its absolute directory: ``CachedSpeechSource.is_recorded_as``).
  """

  def __init__(self, iterator, *, sampler, source, worker_count: int):
    self._iterator, self._sampler, self._source = iterator, sampler, source
    self._worker_count = int(worker_count)

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict:
    return next(self._iterator)

  def get_state(self) -> bytes:
    return self._iterator.get_state()

  def start_prefetch(self) -> None:
    self._iterator.start_prefetch()

  def _source_matches(self, recorded) -> bool:
    accepts = getattr(self._source, "is_recorded_as", None)
    return recorded == repr(self._source) or (accepts is not None and accepts(str(recorded)))

  def state_differences(self, state) -> list[str]:
    """One line per setting where a saved state (bytes, str or the parsed dict) differs from this iterator's;
    [] when it restores here."""
    if not isinstance(state, dict):
      state = json.loads(state)
    lines = []
    if state.get("worker_count", self._worker_count) != self._worker_count:
      lines.append(f"config.data.worker_count: checkpoint {state['worker_count']}, this run {self._worker_count}")
    recorded, current = state.get("sampler"), repr(self._sampler)
    if recorded is not None and recorded != current:
      old, new = dict(_REPR_FIELD.findall(recorded)), dict(_REPR_FIELD.findall(current))
      changed = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
      lines += [f"{SAMPLER_FIELDS.get(k, f'the sampler setting {k}')}: checkpoint {old.get(k)}, this run {new.get(k)}"
                for k in changed] or [f"the sampler: checkpoint {recorded}, this run {current}"]
    recorded = state.get("data_source")
    if recorded is not None and not self._source_matches(recorded):
      lines.append(f"the training data: checkpoint {recorded}, this run {self._source!r}")
    return lines

  def set_state(self, state: bytes) -> None:
    """Restores a saved position (``get_state``'s bytes).

    Raises:
      erclap.checkpointing.CheckpointMismatchError: the state was saved with other settings (named).
    """
    record = json.loads(state)
    differences = self.state_differences(record)
    if differences:
      raise checkpointing.CheckpointMismatchError(
          "the data iterator's state was saved with other settings:\n  " + "\n  ".join(differences))
    if "data_source" in record:
      record["data_source"] = repr(self._source)  # an earlier record of this very source (see the class doc)
    self._iterator.set_state(json.dumps(record).encode())


class GlobalBatchSlice:
  """A Grain sampler: this process's rows of each *global* batch of one shared, seeded record order.

  Every process walks the same shuffled sequence; global batch b is positions [b·G, (b+1)·G) of it, and
  process p takes the contiguous rows [p·G/P, (p+1)·G/P) of each. So the global batch, and each record's
  random crop (Grain's per-position rng), is the same for any process count: 2 processes x 4 devices see
  exactly what 1 process x 8 devices sees (the rows land on the same devices too, see runtime.global_batch).
  """

  def __init__(self, base, *, global_batch_size: int, process_index: int, process_count: int):
    self._base, self._global = base, int(global_batch_size)
    self._local = self._global // int(process_count)
    self._offset = int(process_index) * self._local
    self._shard_options = grain.sharding.NoSharding()  # the DataLoader must not shard a second time

  def __len__(self) -> int:
    return len(self._base)

  def __repr__(self) -> str:  # part of the iterator checkpoint: must identify the sample order
    return f"GlobalBatchSlice({self._base!r}, global={self._global}, local={self._local}, offset={self._offset})"

  def __getitem__(self, index: int):
    batch, row = divmod(int(index), self._local)
    meta = self._base[batch * self._global + self._offset + row]
    return type(meta)(index=index, record_key=meta.record_key, rng=meta.rng)


def source_ids(source) -> list[str]:
  """Every record id of a source (its ``ids()`` where it has one, else reads the records once)."""
  if hasattr(source, "ids"):
    return list(source.ids())
  return [source[i]["id"] for i in range(len(source))]


# ----------------------------------------------------------------------------- evaluation


class EvalIterator:
  """One pass over a split: this process's contiguous slice, fixed-size batches, padded last batch.

  Every process yields the same number of batches (collectives in the consumer stay in step)."""

  def __init__(self, source, speech: Callable, picker: DescriptionPicker, tokenizer: Callable, *, batch_size: int,
               max_tokens: int, process_index: int, process_count: int):
    """``speech``: the speech source's reader of ``source``'s records (``speech(record)``, ``speech.padding()``)."""
    self.source, self.speech, self.picker, self.tokenizer = source, speech, picker, tokenizer
    self.batch_size, self.max_tokens = batch_size, max_tokens
    n = len(source)
    per = math.ceil(n / process_count)
    self.start, self.stop = min(process_index * per, n), min((process_index + 1) * per, n)
    self.num_batches = max(1, math.ceil(per / batch_size))

  def __len__(self) -> int:
    return self.num_batches

  def batch_rows(self, b: int) -> np.ndarray:
    """(B,) int32: the split row (record index) of every row of batch ``b``; padding rows run past the end."""
    return self.start + int(b) * self.batch_size + np.arange(self.batch_size, dtype=np.int32)

  def __iter__(self) -> Iterator[dict]:
    for b in range(self.num_batches):
      rows, ids, texts = [], [], []
      for i in self.batch_rows(b).tolist():
        if i < self.stop:
          record = self.source[i]
          rows.append(_example(record, self.speech(record), self.picker.pick(record, None)))
          ids.append(record["id"])
        else:  # padding row: masked out everywhere
          blank = {**dict.fromkeys(LABEL_NAMES, 0.0), "class_id": -1}
          rows.append(_example(blank, self.speech.padding(), "", valid=False))
          ids.append("")
        texts.append(rows[-1]["text"])
      batch = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "text"}
      batch["text"] = texts
      batch = _tokenize_batch(batch, self.tokenizer, self.max_tokens)
      batch["id"] = np.array(ids, dtype=object)
      batch["description"] = texts
      yield batch



def create_eval_iterator(config, tokenizer: Callable, split: str, *, batch_size: int,
                         source: SpeechSource | None = None, process_index: int | None = None,
                         process_count: int | None = None) -> EvalIterator:
  """Iterates ``split`` exactly once (this process's share) in batches of ``batch_size`` (per process);
  ``source``: where the speech comes from (None: ``speech_source.of(config)``)."""
  pi, pc = _process(process_index, process_count)
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  d = config.data
  source = speech_source.of(config) if source is None else source
  records, speech = source.open(config, split, train=False)
  ids = source_ids(records) if d.descriptions != "templates" else None
  picker = DescriptionPicker(d, config_lib.data_seed(config), ids, source_name=f"{d.name}:{split}")
  return EvalIterator(records, speech, picker, tokenizer, batch_size=int(batch_size),
                      max_tokens=int(d.max_text_tokens), process_index=pi, process_count=pc)
