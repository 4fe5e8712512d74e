"""Template descriptions, level prompts, vocabulary, JSONL loading and the prompt-request tool."""

import itertools
import json
import re

import numpy as np
import pytest
from train_helpers import TINY_CORPUS

from erclap import descriptions as d
from erclap.schema import LABEL_NAMES
from erclap.tools import make_description_requests as tool


def _level_of(attribute, text):
  """Which level phrase of ``attribute`` occurs in ``text`` (longest match wins: "very calm" over "calm")."""
  found = [(len(phrase), i + 1) for phrases in d.LEVEL_PHRASES[attribute] for i, phrase in enumerate(phrases)
           if re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text.lower())]
  assert found, (attribute, text)
  return max(found)[1]


def test_monotone_wording_every_variant():
  """Higher arousal (others fixed) never gets a phrase of a lower level, in every variant; also v, d."""
  values = np.linspace(1.0, 7.0, 25)
  for variant in range(d.NUM_VARIANTS):
    for attribute in LABEL_NAMES:
      got = []
      for x in values:
        labels = {"arousal": 4.0, "valence": 4.0, "dominance": 4.0, attribute: x}
        text = d.describe(labels["arousal"], labels["valence"], labels["dominance"], variant=variant)
        got.append(_level_of(attribute, text))
      assert got == sorted(got), (variant, attribute, got)
      assert got[0] == 1 and got[-1] == 7


def test_every_level_reachable_and_level_word():
  for attribute in LABEL_NAMES:
    words = [d.level_word(attribute, x) for x in (1.0, 1.6, 2.4, 3.2, 4.0, 4.6, 5.5, 6.6, 7.0)]
    assert len(set(words)) == 7
    assert d.level_word(attribute, 0.2) == d.level_word(attribute, 1.0)  # clipped to the scale
    assert d.level_word(attribute, 9.0) == d.level_word(attribute, 7.0)
  assert d.level_word("arousal", 7) == "extremely excited" and d.level_word("arousal", 1) == "very calm"
  assert [d.level(x) for x in (1.49, 1.5, 3.5, 6.51)] == [1, 2, 4, 7]
  with pytest.raises(ValueError, match="attribute="):
    d.level_word("pleasure", 3.0)
  with pytest.raises(ValueError, match="finite"):
    d.describe(float("nan"), 4.0, 4.0, variant=0)


def test_variants_are_distinct_and_deterministic():
  texts = [d.describe(6.0, 2.0, 5.0, variant=k) for k in range(d.NUM_VARIANTS)]
  assert len(set(texts)) == d.NUM_VARIANTS >= 24
  assert d.describe(6.0, 2.0, 5.0, variant=3) == texts[3]
  assert d.describe(6.0, 2.0, 5.0, variant=3 + d.NUM_VARIANTS) == texts[3]
  assert all(" a a" not in t and " a e" not in t.lower() for t in texts)  # articles fixed ("an extremely")
  ids = d.example_variants("utt-1", 8, seed=0)
  assert len(set(ids)) == 8 and ids == d.example_variants("utt-1", 8, seed=0)
  assert ids != d.example_variants("utt-2", 8, seed=0)


def test_vocabulary_covers_every_output():
  vocab = set(d.vocabulary())
  assert all(w == w.lower() for w in vocab) and "," in vocab and "." in vocab
  grid = itertools.product(range(1, 8), repeat=3)
  for variant, (a, v, dd) in itertools.product(range(d.NUM_VARIANTS), grid):
    if (a + v + dd + variant) % 5 == 0:  # a fifth of the 12k combinations keeps the test fast
      assert set(d.words(d.describe(a, v, dd, variant=variant))) <= vocab
  for attribute in LABEL_NAMES:
    for prompt in d.level_prompts(attribute):
      assert set(d.words(prompt)) <= vocab


def test_vocabulary_with_the_real_tokenizer_has_no_unknown_words():
  from erclap import tokenization

  tok = tokenization.build_word_tokenizer(d.vocabulary(), 40)
  texts = [d.describe(a, v, 8 - a, variant=k) for k in range(d.NUM_VARIANTS)
           for a, v in ((1, 7), (7, 1), (4, 4))]
  out = tok(texts)
  assert not np.any(out["input_ids"] == tokenization.UNK_ID)


def test_level_prompts():
  assert d.level_prompts("arousal") == ["very low arousal", "low arousal", "somewhat low arousal",
                                        "medium arousal", "somewhat high arousal", "high arousal",
                                        "very high arousal"]
  assert d.level_prompts("valence", 3) == ["very low valence", "medium valence", "very high valence"]
  with pytest.raises(ValueError, match="num_levels"):
    d.level_prompts("valence", 9)


def test_level_descriptions_are_training_descriptions():
  levels, texts = d.level_descriptions("valence", num_wordings=5, seed=3)
  np.testing.assert_array_equal(levels, np.repeat(np.arange(1.0, 8.0), 5))
  assert len(texts) == 35 and len(set(texts[:5])) == 5  # distinct wordings per level
  training = {d.describe(a, v, dom, variant=k) for a in range(1, 8) for v in range(1, 8) for dom in range(1, 8)
              for k in range(d.NUM_VARIANTS)}
  assert set(texts) <= training  # the exact sentences training draws from
  for level, text in zip(levels, texts, strict=True):
    assert _level_of("valence", text) == level
    assert _level_of("arousal", text) == 4 and _level_of("dominance", text) == 4
  assert not any("valence" in t for t in texts)  # unlike the fixed prompts ("very low valence")
  assert d.level_descriptions("valence", num_wordings=5, seed=3)[1] == texts  # deterministic


def test_paraphrased_level_prompts_are_outside_the_template_vocabulary():
  vocab = set(d.vocabulary())
  for attribute in LABEL_NAMES:
    levels, texts = d.paraphrased_level_prompts(attribute)
    assert len(texts) == len(levels) and len(set(texts)) == len(texts) >= 14
    assert set(levels) == set(np.arange(1.0, 8.0)) and np.all(np.diff(levels) >= 0)  # grouped, level 1 first
    assert len({int(np.sum(levels == k)) for k in range(1, 8)}) == 1                  # as many per level
    content = [w for t in texts for w in d.words(t) if w.isalpha()]
    outside = [w for w in content if w not in vocab]
    assert len(outside) >= 0.5 * len(content), (attribute, sorted(set(content) & vocab))
    assert len(set(outside)) >= 0.75 * len(set(content))
    for text in texts:  # every prompt carries at least one word a template never produces
      assert set(d.words(text)) - vocab, text
    assert not any(attribute in t for t in texts)  # free-form: not "high arousal"
  assert d.paraphrased_level_prompts("arousal")[1][-4:] == list(d.PARAPHRASED_LEVEL_PROMPTS["arousal"][6])
  with pytest.raises(ValueError, match="attribute"):
    d.paraphrased_level_prompts("joy")


def test_attribute_queries_vary_only_the_attribute():
  values = [1.0, 3.0, 5.0, 7.0]
  texts = d.attribute_queries("valence", values, num_wordings=3, seed=4)
  assert len(texts) == 12
  assert texts == d.attribute_queries("valence", values, num_wordings=3, seed=4)
  for w in range(3):
    group = [texts[i * 3 + w] for i in range(4)]
    assert [_level_of("valence", t) for t in group] == [1, 3, 5, 7]
    assert {_level_of("arousal", t) for t in group} == {4}
    assert {_level_of("dominance", t) for t in group} == {4}


def test_jsonl_round_trip_and_errors(tmp_path):
  table = {"utt-1": ["A calm voice.", "Quiet and slow."], "utt-2": ["Très animé !"]}
  path = str(tmp_path / "desc.jsonl")
  d.write_jsonl(path, table)
  assert d.load_jsonl(path) == table
  d.check_coverage(table, ["utt-1", "utt-2"])
  with pytest.raises(ValueError, match=r"2 example id\(s\) of corpus:train .*'utt-3', 'utt-4'"):
    d.check_coverage(table, ["utt-1", "utt-3", "utt-4"], source="corpus:train")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": "a", "descriptions": ["x"]}\n{"id": "b", "descriptions": [}\n')
  with pytest.raises(ValueError, match="bad.jsonl line 2: not valid JSON"):
    d.load_jsonl(str(bad))
  bad.write_text('{"id": "a", "descriptions": []}\n')
  with pytest.raises(ValueError, match="bad.jsonl line 1 .*non-empty list"):
    d.load_jsonl(str(bad))
  bad.write_text('{"id": "a", "descriptions": ["x"]}\n{"id": "a", "descriptions": ["y"]}\n')
  with pytest.raises(ValueError, match="line 2: duplicate id 'a'"):
    d.load_jsonl(str(bad))
  with pytest.raises(ValueError, match="not found"):
    d.load_jsonl(str(tmp_path / "none.jsonl"))


def test_make_description_requests_tool(data_dir, tmp_path, capsys):
  prompt = tool.render_prompt(tool.default_prompt(), "utt-9", 6.8, 1.2, 4.0, 5)
  assert "6.8 (extremely excited)" in prompt and "1.2 (very negative)" in prompt and "Write 5" in prompt
  assert '{"id": "utt-9", "descriptions"' in prompt
  out = tmp_path / "requests.jsonl"
  corpus = [f"--set=embedded.{k}={v}" for k, v in TINY_CORPUS.items()]
  args = [f"--data_dir={data_dir}", f"--output={out}", "--splits=validation,test", "--num_descriptions=3"]
  assert tool.main(args + corpus) == 0
  assert "[data] building" not in capsys.readouterr().out  # the built tiny corpus, found by its spec
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert len(lines) == TINY_CORPUS["num_validation"] + TINY_CORPUS["num_test"]
  assert {x["split"] for x in lines} == {"validation", "test"}
  for x in lines:
    assert x["id"].startswith(f"embedded-{x['split']}-") and 1 <= x["arousal"] <= 7
    assert f"{x['arousal']:.1f} ({d.level_word('arousal', x['arousal'])})" in x["prompt"]


@pytest.mark.parametrize("setting, needle", [
    ("embedded.no_such_key=1", "'data.embedded.no_such_key'"),
    ("embedded.num_train=many", "'data.embedded.num_train'"),
    ("embedded", "--set expects key=value"),
])
def test_make_description_requests_names_a_bad_setting(tmp_path, setting, needle):
  out = tmp_path / "requests.jsonl"
  with pytest.raises(SystemExit, match=re.escape(needle)):
    tool.main([f"--data_dir={tmp_path}", f"--output={out}", f"--set={setting}"])
  assert not out.exists() and not list(tmp_path.iterdir())  # refused before building or writing anything
