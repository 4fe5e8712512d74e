"""The Grain pipeline on a tiny embedded corpus: content, epochs, determinism, resumption, sharding, eval."""

import copy

import numpy as np
import pytest

from erclap import data, input_pipeline, speech_source, tokenization
from erclap import descriptions as d

BATCH = 8
TOKENS = 32  # room for the longest template description (23 tokens with [CLS] and [SEP]): none is truncated


@pytest.fixture
def setup(tiny_embedded):
  config, _ = tiny_embedded
  config = copy.deepcopy(config)
  config.train.global_batch_size = BATCH
  config.data.max_text_tokens = TOKENS
  tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
  inverse = list(tokenization.SPECIAL_TOKENS) + [w for w in d.vocabulary()]
  records = {}
  for split in ("train", "test"):
    source = data.get_data_source(config.data, split)
    records[split] = [source[i] for i in range(len(source))]
  return config, tokenizer, inverse, records


def _decode(inverse, ids):
  return " ".join(inverse[i] for i in ids if i >= len(tokenization.SPECIAL_TOKENS))


def _norm(text):
  return " ".join(d.words(text))


def _by_labels(records):
  return {tuple(np.float32([r["arousal"], r["valence"], r["dominance"]])): r for r in records}


def _take(iterator, n):
  return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batch_contents(setup):
  config, tokenizer, inverse, records = setup
  it = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  lookup = _by_labels(records["train"])
  t = speech_source.num_samples(config.data.max_seconds, 16000)
  saw_crop = saw_pad = False
  for batch in _take(it, 3):
    assert batch["audio"].shape == (BATCH, t) and batch["audio"].dtype == np.float32
    assert batch["audio_mask"].shape == (BATCH, t) and batch["audio_mask"].dtype == bool
    assert batch["input_ids"].shape == (BATCH, TOKENS) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].dtype == np.int32 and batch["labels"].shape == (BATCH, 3)
    assert batch["class_id"].dtype == np.int32 and batch["valid"].dtype == bool and batch["valid"].all()
    for row in range(BATCH):
      rec = lookup[tuple(batch["labels"][row])]
      ref = rec["audio"].astype(np.float32) / 32768.0
      audio, mask = batch["audio"][row], batch["audio_mask"][row]
      if ref.size > t:  # a random window of the clip
        saw_crop = True
        candidates = np.flatnonzero(ref[: ref.size - t + 1] == audio[0])
        starts = [s for s in candidates if np.array_equal(ref[s:s + t], audio)]
        assert starts and mask.all()
      else:  # the whole clip, zero-padded, mask marks the real samples
        saw_pad = True
        np.testing.assert_array_equal(audio[: ref.size], ref)
        assert mask[: ref.size].all() and not mask[ref.size:].any() and not audio[ref.size:].any()
      text = _decode(inverse, batch["input_ids"][row][batch["attention_mask"][row] == 1])
      allowed = {_norm(d.describe(rec["arousal"], rec["valence"], rec["dominance"], variant=k))
                 for k in d.example_variants(rec["id"], config.data.descriptions_per_example, config.seed)}
      assert text in allowed
      assert batch["class_id"][row] == -1
  assert saw_crop and saw_pad


def test_epochs_cover_every_example_once_and_reshuffle(setup):
  config, tokenizer, inverse, records = setup
  it = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  per_epoch = len(records["train"]) // BATCH
  epochs = [_take(it, per_epoch) for _ in range(3)]
  orders, texts = [], []
  for batches in epochs:
    labels = np.concatenate([b["labels"] for b in batches])
    assert sorted(map(tuple, labels)) == sorted(_by_labels(records["train"]))
    orders.append([tuple(x) for x in labels])
    texts.append({tuple(lab): tuple(ids) for b in batches
                  for lab, ids in zip(b["labels"], b["input_ids"], strict=True)})
  assert orders[0] != orders[1] != orders[2]
  changed = sum(texts[0][k] != texts[1][k] for k in texts[0])
  assert changed > len(records["train"]) // 2  # a fresh description per epoch (7 in 8 differ on average)


def test_deterministic_given_seed(setup):
  config, tokenizer, _, _ = setup
  make = lambda c: input_pipeline.create_train_iterator(c, tokenizer, process_index=0, process_count=1)
  _assert_batches_equal(_take(make(config), 3), _take(make(config), 3))
  other = copy.deepcopy(config)
  other.seed = 1
  assert not np.array_equal(next(make(other))["labels"], next(make(config))["labels"])


def test_state_resumes_exactly_across_epochs(setup):
  config, tokenizer, _, records = setup
  it = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  _take(it, 3)
  state = it.get_state()
  assert 3 < len(records["train"]) // BATCH < 8
  expected = _take(it, 5)  # batches 4..8: they cross the epoch boundary
  resumed = input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 5), expected)


def test_shards_per_process(setup):
  config, tokenizer, _, records = setup
  seen = []
  for pi in range(2):
    it = input_pipeline.create_train_iterator(config, tokenizer, process_index=pi, process_count=2)
    batches = _take(it, len(records["train"]) // BATCH)  # one epoch of this process's half
    assert batches[0]["audio"].shape[0] == BATCH // 2
    seen.append({tuple(x) for b in batches for x in b["labels"]})
  assert len(seen[0]) == len(seen[1]) == len(records["train"]) // 2 and not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(_by_labels(records["train"]))
  # The process slices, stacked, are exactly the single-process global batches (crops included).
  single = _take(input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1), 3)
  halves = [_take(input_pipeline.create_train_iterator(config, tokenizer, process_index=pi, process_count=2), 3)
            for pi in range(2)]
  stacked = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves, strict=True)]
  _assert_batches_equal(stacked, single)
  with pytest.raises(ValueError, match="global_batch_size=8 is not a multiple of process_count=3"):
    input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=3)


def test_eval_iterates_once_with_padding(setup):
  config, tokenizer, inverse, records = setup
  config.data.eval_max_seconds = 0.6
  t = speech_source.num_samples(0.6, 16000)
  by_id = {r["id"]: r for r in records["test"]}
  n, size = len(by_id), 6
  assert n % size, "the last batch must need padding"
  batches = list(input_pipeline.create_eval_iterator(config, tokenizer, "test", batch_size=size,
                                                     process_index=0, process_count=1))
  assert [int(b["valid"].sum()) for b in batches] == [size] * (n // size) + [n % size]
  ids = [i for b in batches for i, v in zip(b["id"], b["valid"], strict=True) if v]
  assert sorted(ids) == sorted(by_id)
  for b in batches:
    assert b["audio"].shape == (size, t) and b["input_ids"].shape == (size, TOKENS)
    assert isinstance(b["description"], list) and len(b["description"]) == size
    for row in range(size):
      if not b["valid"][row]:
        assert b["id"][row] == "" and not b["audio_mask"][row].any() and not b["audio"][row].any()
        continue
      rec = by_id[b["id"][row]]
      ref = rec["audio"].astype(np.float32) / 32768.0
      if ref.size >= t:
        start = (ref.size - t) // 2
        np.testing.assert_array_equal(b["audio"][row], ref[start:start + t])
      else:
        np.testing.assert_array_equal(b["audio"][row][: ref.size], ref)
        assert b["audio_mask"][row].sum() == ref.size
      np.testing.assert_array_equal(b["labels"][row], [rec["arousal"], rec["valence"], rec["dominance"]])
      expected = d.describe(rec["arousal"], rec["valence"], rec["dominance"], variant=0)
      assert b["description"][row] == expected
      assert _decode(inverse, b["input_ids"][row][b["attention_mask"][row] == 1]) == _norm(expected)


def test_eval_shards_per_process_with_equal_batch_counts(setup):
  config, tokenizer, _, records = setup
  got = []
  share = len(records["test"]) // 2
  assert share % 3, "each share's last batch must need padding"
  for pi in range(2):
    batches = list(input_pipeline.create_eval_iterator(config, tokenizer, "test", batch_size=3,
                                                       process_index=pi, process_count=2))
    assert [int(b["valid"].sum()) for b in batches] == [3] * (share // 3) + [share % 3]
    got.append([i for b in batches for i, v in zip(b["id"], b["valid"], strict=True) if v])
  assert not set(got[0]) & set(got[1]) and sorted(got[0] + got[1]) == sorted(r["id"] for r in records["test"])
  five = list(input_pipeline.create_eval_iterator(config, tokenizer, "test", batch_size=4, process_index=4,
                                                  process_count=5))
  assert len(five) == 1 and int(five[0]["valid"].sum()) == 0  # an empty share still yields the static batch


def test_llm_descriptions_from_jsonl(setup, tmp_path):
  config, tokenizer, inverse, records = setup
  table = {r["id"]: [d.describe(r["arousal"], r["valence"], r["dominance"], variant=v) for v in (30, 31)]
           for r in records["train"] + records["test"]}
  path = str(tmp_path / "llm.jsonl")
  d.write_jsonl(path, table)
  config.data.descriptions = path
  lookup = _by_labels(records["train"])
  batch = next(input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1))
  for row in range(BATCH):
    rec = lookup[tuple(batch["labels"][row])]
    text = _decode(inverse, batch["input_ids"][row][batch["attention_mask"][row] == 1])
    assert text in {_norm(x) for x in table[rec["id"]]}
  ev = next(iter(input_pipeline.create_eval_iterator(config, tokenizer, "test", batch_size=4,
                                                     process_index=0, process_count=1)))
  assert ev["description"][0] == table[ev["id"][0]][0]
  missing = dict(table)
  for r in records["train"][:3]:
    del missing[r["id"]]
  d.write_jsonl(path, missing)
  with pytest.raises(ValueError, match=r"3 example id\(s\) of embedded:train have no LLM-written"):
    input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)


@pytest.mark.slow  # starts Grain worker processes (about half a minute on 2 cores)
def test_worker_processes(setup):
  """One worker process reproduces the in-process stream; with two, Grain batches within each worker (the
  stream then depends on worker_count, as its checkpointed state records) and still covers each epoch once."""
  config, tokenizer, _, records = setup
  make = lambda: input_pipeline.create_train_iterator(config, tokenizer, process_index=0, process_count=1)
  reference = _take(make(), 3)
  config.data.worker_count = 1
  _assert_batches_equal(_take(make(), 3), reference)
  config.data.worker_count = 2
  two_epochs = _take(make(), 2 * len(records["train"]) // BATCH)  # workers take alternate positions
  labels = sorted(tuple(x) for b in two_epochs for x in b["labels"])
  assert labels == sorted(2 * list(_by_labels(records["train"])))


def test_crop_or_pad_reference():
  x = (np.arange(10) * 1000).astype(np.int16)
  audio, mask = speech_source.crop_or_pad(x, 4)
  np.testing.assert_array_equal(audio * 32768, [3000, 4000, 5000, 6000])  # centre crop
  np.testing.assert_array_equal(mask, [True] * 4)
  audio, mask = speech_source.crop_or_pad(x, 4, start=6)
  np.testing.assert_array_equal(audio * 32768, [6000, 7000, 8000, 9000])
  np.testing.assert_array_equal(mask, [True] * 4)
  audio, mask = speech_source.crop_or_pad(x[:3], 5)
  np.testing.assert_array_equal(audio * 32768, [0, 1000, 2000, 0, 0])
  np.testing.assert_array_equal(mask, [True, True, True, False, False])
  assert audio.dtype == np.float32 and mask.dtype == bool
  with pytest.raises(ValueError, match="crop start"):
    speech_source.crop_or_pad(x, 4, start=7)
