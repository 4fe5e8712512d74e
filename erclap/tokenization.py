"""Tokenisers: a word-level one over the description vocabulary, or a checkpoint's own (HF, offline).

``build_tokenizer(config.model, max_length, descriptions=config.data.descriptions)`` returns a picklable
callable (it runs inside grain worker processes): ``tokenizer(texts) -> {"input_ids": int32 (B, L),
"attention_mask": int32 (B, L)}``, padded / truncated to ``max_length``, with ``.vocab_size`` and ``.pad_id``.
The word-level vocabulary is the template words, plus the words of an LLM-written descriptions file when
``config.data.descriptions`` names one (``description_vocabulary``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors

from erclap import descriptions, fileio

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # ids 0..3
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 1, 2, 3


def _normalizer():
  return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def _pre_tokenizer():
  return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                  pre_tokenizers.Punctuation(behavior="isolated")])


def _word_entry(word) -> str:
  return str(word).lower().strip()


def _build_word_level(vocabulary: Sequence[str], max_length: int):
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  for word in vocabulary:
    word = _word_entry(word)
    if word and word not in vocab:
      vocab[word] = len(vocab)
  tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.normalizer = _normalizer()
  tok.pre_tokenizer = _pre_tokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
  tok.enable_truncation(max_length)
  tok.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=max_length)
  return tok


class Tokenizer:
  """Picklable: pickles its recipe (vocabulary or directory), rebuilds the backend lazily in each process."""

  def __init__(self, *, max_length: int, vocabulary: Sequence[str] | None = None, path: str | None = None):
    if int(max_length) < 2:
      raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
    if (vocabulary is None) == (path is None):
      raise ValueError("give exactly one of vocabulary= (word-level) or path= (a HF tokenizer directory)")
    self.max_length = int(max_length)
    self.vocabulary = None if vocabulary is None else tuple(str(w) for w in vocabulary)
    self.path = path
    self._backend = None
    if path is not None and not os.path.isdir(path):
      raise FileNotFoundError(f"tokenizer directory {path!r} does not exist "
                              f"(model.tokenizer / model.text_init)")
    self._load()

  def _load(self):
    if self._backend is None:
      if self.vocabulary is not None:
        self._backend = _build_word_level(self.vocabulary, self.max_length)
      else:
        # transformers takes seconds to import and is needed only for a checkpoint's own tokenizer.
        from transformers import AutoTokenizer

        try:
          self._backend = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
          raise ValueError(f"cannot load a tokenizer from {self.path!r} (offline): {e}") from e
    return self._backend

  def __getstate__(self):
    return dict(max_length=self.max_length, vocabulary=self.vocabulary, path=self.path)

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._backend = None

  @property
  def vocab_size(self) -> int:
    backend = self._load()
    return backend.get_vocab_size() if self.vocabulary is not None else len(backend)

  @property
  def pad_id(self) -> int:
    if self.vocabulary is not None:
      return PAD_ID
    pad = self._load().pad_token_id
    if pad is None:
      raise ValueError(f"the tokenizer in {self.path!r} has no pad token")
    return int(pad)

  def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(texts, str):
      raise TypeError("texts must be a list of strings, not one string")
    texts = [str(t) for t in texts]
    b, length = len(texts), self.max_length
    if b == 0:
      return dict(input_ids=np.zeros((0, length), np.int32), attention_mask=np.zeros((0, length), np.int32))
    backend = self._load()
    if self.vocabulary is not None:
      encodings = backend.encode_batch(texts)
      ids = np.asarray([e.ids for e in encodings], np.int32)
      mask = np.asarray([e.attention_mask for e in encodings], np.int32)
    else:
      out = backend(texts, padding="max_length", truncation=True, max_length=length, return_tensors="np")
      ids, mask = out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)
    return dict(input_ids=ids, attention_mask=mask)


def build_word_tokenizer(vocabulary: Sequence[str], max_length: int) -> Tokenizer:
  return Tokenizer(max_length=max_length, vocabulary=vocabulary)


class _WordSplitter:
  """The words the word-level tokenizer looks up for a text (NFKC, lowercase, split at whitespace, every
  punctuation mark a word of its own), as vocabulary entries: its own normalizer and pre-tokenizer, so that
  a file's words are exactly the tokens its texts become ("5€" one word, "snake_case" three)."""

  def __init__(self):
    self.normalizer, self.pre_tokenizer = _normalizer(), _pre_tokenizer()

  def __call__(self, text: str) -> list[str]:
    pieces = self.pre_tokenizer.pre_tokenize_str(self.normalizer.normalize_str(str(text)))
    return [_word_entry(piece) for piece, _ in pieces]


@functools.lru_cache(maxsize=4)
def _file_words(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
  del mtime_ns, size  # cache keys only: an edited file is read again
  split = _WordSplitter()
  texts = {text for texts in descriptions.load_jsonl(path).values() for text in texts}
  return tuple(sorted({word for text in texts for word in split(text) if word}))


def description_vocabulary(source: str = "templates") -> list[str]:
  """The word-level vocabulary for ``config.data.descriptions``: ``erclap.descriptions.vocabulary()`` for
  "templates"; for a JSONL file, that vocabulary (its words keep their ids) followed by every other word of
  the file's descriptions, sorted.

  Raises:
    ValueError: the file does not exist (naming it; a model exported with ``--mode=export_model`` carries
      its vocabulary instead) or is not a valid descriptions file.
  """
  base = descriptions.vocabulary()
  if source == "templates":
    return base
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise ValueError(f"data.descriptions={path!r}: file not found; the word-level tokenizer "
                     f"(model.tokenizer='descriptions') takes its vocabulary from it (a model directory written "
                     f"by --mode=export_model carries the vocabulary instead)")
  info = os.stat(path)
  known = set(base)
  return base + [w for w in _file_words(os.path.abspath(path), info.st_mtime_ns, info.st_size) if w not in known]


def build_tokenizer(model_config, max_length: int, *, vocabulary: Sequence[str] | None = None,
                    descriptions: str = "templates") -> Tokenizer:
  """The tokenizer ``model_config.tokenizer`` names: "descriptions" (word level over
  ``description_vocabulary(descriptions)``, or ``vocabulary`` if given) or a local HF directory ("" with a HF
  ``text_init``: that checkpoint's tokenizer, whatever ``descriptions``).

  Args:
    model_config: ``config.model``.
    max_length: tokens per text (padding / truncation).
    vocabulary: the word-level vocabulary itself.
    descriptions: ``config.data.descriptions`` ("templates" or a JSONL file whose words join the vocabulary).
  """
  name = model_config.get("tokenizer", "descriptions") or model_config.get("text_init", "")
  if name == "descriptions":
    if vocabulary is None:
      vocabulary = description_vocabulary(descriptions)
    elif descriptions != "templates":
      raise ValueError(f"give vocabulary= or descriptions= ({descriptions!r}), not both")
    return build_word_tokenizer(vocabulary, max_length)
  if vocabulary is not None:
    raise ValueError(f"vocabulary= only applies to model.tokenizer='descriptions', not {name!r}")
  if not name:
    raise ValueError("model.tokenizer is empty: use 'descriptions' or a Hugging Face tokenizer directory")
  return Tokenizer(max_length=max_length, path=name)


VOCABULARY_FILE = "vocabulary.json"  # a word-level tokenizer's recipe (its words, in order)


def save_tokenizer(tokenizer: Tokenizer, directory: str) -> None:
  """Writes ``tokenizer`` into ``directory`` (existing) so that ``load_saved_tokenizer`` rebuilds it offline.

  Word level: ``vocabulary.json`` (the recipe) and the backend's ``tokenizer.json`` (for readers outside
  Python); a checkpoint's tokenizer: its files as ``save_pretrained`` writes them (without the model weights
  that may share its source directory)."""
  backend = tokenizer._load()
  if tokenizer.vocabulary is not None:
    with fileio.atomic_path(os.path.join(directory, "tokenizer.json")) as tmp:
      backend.save(tmp)
    fileio.write_json(os.path.join(directory, VOCABULARY_FILE), list(tokenizer.vocabulary))
  else:
    backend.save_pretrained(directory)


def load_saved_tokenizer(directory: str, max_length: int) -> Tokenizer:
  """The tokenizer ``save_tokenizer`` wrote into ``directory``, padding / truncating to ``max_length``."""
  vocabulary_file = os.path.join(directory, VOCABULARY_FILE)
  if os.path.isfile(vocabulary_file):
    with open(vocabulary_file) as f:
      vocabulary = json.load(f)
    if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
      raise ValueError(f"{vocabulary_file}: expected a JSON list of words")
    return build_word_tokenizer(vocabulary, max_length)
  return Tokenizer(max_length=max_length, path=directory)
