"""Template descriptions, level prompts, vocabulary, JSONL loading, the prompt-request tool, and synthetic
LLM-style descriptions and their tool."""

import functools
import itertools
import json
import math
import re

import numpy as np
import pytest
from train_helpers import TINY_CORPUS, tiny_config

from erclap import data
from erclap import descriptions as d
from erclap.schema import LABEL_NAMES
from erclap.tools import make_description_requests as tool
from erclap.tools import synthesize_descriptions as synth_tool


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


# ----------------------------------------------------------------------------- synthetic descriptions


@functools.cache
def _phrase_patterns(attribute):
  return [(level, phrase, re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])"))
          for level, phrases in enumerate(d.synthetic_level_phrases(attribute), start=1) for phrase in phrases]


def _synthetic_level(attribute, text):
  """The level of the one phrase of ``attribute`` in ``text``: every occurrence of a phrase of any level, less
  those inside a longer occurrence ("energetic" in "moderately energetic"); exactly one must remain."""
  lower = text.lower()
  spans = [(m.start(), m.end(), level) for level, phrase, pattern in _phrase_patterns(attribute) if phrase in lower
           for m in pattern.finditer(lower)]
  outer = [s for s in spans
           if not any(o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0] for o in spans)]
  assert len(outer) == 1, (attribute, text, outer)
  return outer[0][2]


def _nearest_levels(value):
  x = min(max(float(value), 1.0), 7.0)
  return {math.floor(x), math.ceil(x)}


def test_synthetic_level_phrases_by_hand():
  arousal = d.synthetic_level_phrases("arousal")
  valence, dominance = d.synthetic_level_phrases("valence"), d.synthetic_level_phrases("dominance")
  hand = [(arousal, "very calm", 1), (arousal, "almost no energy", 1), (arousal, "calm", 2),
          (arousal, "slightly calm", 3), (arousal, "moderately energetic", 4), (arousal, "slightly excited", 5),
          (arousal, "excited", 6), (arousal, "extremely excited", 7), (arousal, "tremendous energy", 7),
          (valence, "very sad", 1), (valence, "neutral", 4), (valence, "somewhat cheerful", 5),
          (valence, "very happy", 7), (dominance, "somewhat timid", 3), (dominance, "utterly domineering", 7)]
  for phrases, phrase, level in hand:
    assert [k + 1 for k, p in enumerate(phrases) if phrase in p] == [level], phrase
  assert not any("slightly frantic" in p or "mildly miserable" in p for p in arousal + valence)  # strong words
  for attribute, other in itertools.permutations(LABEL_NAMES, 2):  # no attribute's phrase inside another's
    mine = {p for level in d.synthetic_level_phrases(attribute) for p in level}
    for phrase in (p for level in d.synthetic_level_phrases(other) for p in level):
      assert not any(m in phrase and re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", phrase) for m in mine), \
          (attribute, phrase)


def test_synthetic_descriptions_are_deterministic_and_seeded():
  texts = d.unique_descriptions("utt-7", 5.3, 2.2, 6.8, num=6)
  assert len(texts) == 6 and len(set(texts)) == 6
  assert texts == d.unique_descriptions("utt-7", 5.3, 2.2, 6.8, num=6)
  assert d.unique_descriptions("utt-7", 5.3, 2.2, 6.8, num=2) == texts[:2]
  assert set(texts).isdisjoint(d.unique_descriptions("utt-7", 5.3, 2.2, 6.8, num=6, seed=1))
  assert set(texts).isdisjoint(d.unique_descriptions("utt-8", 5.3, 2.2, 6.8, num=6))
  for text in texts:
    assert text[0].isupper() and text.endswith(".") and "  " not in text
    assert not re.search(r"\b[Aa] [aeiou]", text), text  # "an extremely", not "a extremely"
  # Values off the scale are clipped; integers give their own level.
  for text in d.unique_descriptions("edge", 0.2, 9.0, 3.0, num=8):
    assert [_synthetic_level(a, text) for a in LABEL_NAMES] == [1, 7, 3]
  with pytest.raises(ValueError, match="finite"):
    d.unique_descriptions("utt-7", float("nan"), 4.0, 4.0)
  with pytest.raises(ValueError, match="num must be >= 1"):
    d.unique_descriptions("utt-7", 4.0, 4.0, 4.0, num=0)


def test_synthetic_wording_is_monotone_per_attribute():
  """Holding the others fixed, each text of value x has level floor(x) or ceil(x), so a higher value is never
  worded more than one level below a lower one; the upper level is drawn with probability frac(x)."""
  values = np.linspace(0.5, 7.5, 29)
  for attribute in LABEL_NAMES:
    for others in (4.0, 2.6):
      levels = []
      for x in values:
        labels = {name: others for name in LABEL_NAMES} | {attribute: float(x)}
        got = [_synthetic_level(attribute, text) for j in range(6)
               for text in d.unique_descriptions(f"{attribute}-{j}", *labels.values(), num=3)]
        assert set(got) <= _nearest_levels(x), (attribute, x, got)
        levels.append(got)
      for i, j in itertools.combinations(range(len(values)), 2):  # values[i] < values[j]
        assert max(levels[i]) <= min(levels[j]) + 1, (attribute, values[i], values[j])
      assert min(levels[0]) == 1 and max(levels[-1]) == 7
  ups = [_synthetic_level("valence", d.unique_descriptions(f"f{i}", 4.0, 3.25, 4.0, num=1)[0]) for i in range(400)]
  assert set(ups) == {3, 4} and abs(np.mean(np.array(ups) == 4) - 0.25) < 0.07


def test_synthetic_vocabulary_goes_beyond_the_templates():
  rng = np.random.default_rng(3)
  table = d.synthesize_corpus([(f"v{i}", *rng.uniform(1, 7, 3)) for i in range(200)], num=2)
  words = {w for texts in table.values() for t in texts for w in d.words(t) if w.isalpha()}
  outside = words - set(d.vocabulary())
  assert len(outside) >= 100 and {"energy", "presence", "narrator", "miserable"} <= outside
  structures = {re.sub(r"\w+", "w", t)[:12] for texts in table.values() for t in texts}
  assert len(structures) >= 10


def test_synthesize_corpus_first_descriptions_are_unique():
  rng = np.random.default_rng(5)
  grid = np.array([1.0, 2.5, 4.0, 5.5, 7.0])  # few label triples: many clips share theirs
  clips = [(f"c{i:03d}", *rng.choice(grid, 3)) for i in range(300)] + [(f"n{i}", 4.0, 4.0, 4.0) for i in range(100)]
  table = d.synthesize_corpus(clips, num=3, seed=0)
  assert list(table) == [c[0] for c in clips]
  owners = {}
  for key, texts in table.items():
    assert len(texts) == 3 and len(set(texts)) == 3
    for text in texts:
      owners.setdefault(text, set()).add(key)
  assert all(owners[texts[0]] == {key} for key, texts in table.items())  # no other clip uses a first one
  assert len({texts[0] for texts in table.values()}) == len(clips)
  assert table["c000"] == d.unique_descriptions("c000", *clips[0][1:], num=3)
  for key, a, v, dom in clips[::7]:
    for text in table[key]:
      for name, x in zip(LABEL_NAMES, (a, v, dom), strict=True):
        assert _synthetic_level(name, text) in _nearest_levels(x), (key, text)
  assert d.synthesize_corpus(clips, num=3, seed=0) == table
  with pytest.raises(ValueError, match="duplicate id 'c000'"):
    d.synthesize_corpus(clips[:2] + clips[:1], num=1)


def test_colliding_first_description_is_redrawn_then_given_a_clause():
  own = d.unique_descriptions("x", 3.0, 5.0, 2.0, num=2)
  redrawn = d.synthesize_corpus([("x", 3.0, 5.0, 2.0)], num=2, taken={own[0]})["x"]
  assert redrawn[0] != own[0] and not any(c in redrawn[0] for c in d.DETAIL_CLAUSES)
  clause = d.synthesize_corpus([("x", 3.0, 5.0, 2.0)], num=2, taken={own[0]}, max_redraws=0)["x"][0]
  assert clause.startswith(own[0][:-1] + ", ") and clause.endswith(".")
  assert sum(c in clause for c in d.DETAIL_CLAUSES) == 1
  assert [_synthetic_level(a, clause) for a in LABEL_NAMES] == [3, 5, 2]


def test_synthetic_jsonl_round_trip(tmp_path):
  clips = [(f"r{i}", 1.0 + i % 7, 7.0 - i % 7, 4.5) for i in range(30)]
  table = d.synthesize_corpus(clips, num=4, seed=2)
  path = str(tmp_path / "synthetic.jsonl")
  d.write_jsonl(path, table)
  assert d.load_jsonl(path) == table
  d.check_coverage(d.load_jsonl(path), [c[0] for c in clips])


def test_synthesize_descriptions_tool(data_dir, tmp_path, capsys):
  out = tmp_path / "descriptions.jsonl"
  corpus = [f"--set=embedded.{k}={v}" for k, v in TINY_CORPUS.items()]
  args = [f"--data_dir={data_dir}", f"--output={out}", "--splits=train,validation,test", "--num=3", *corpus]
  assert synth_tool.main(args) == 0
  printed = capsys.readouterr().out
  assert "[data] building" not in printed  # the built tiny corpus, found by its spec
  total = sum(TINY_CORPUS[f"num_{s}"] for s in ("train", "validation", "test"))
  assert f"{total} clips, {3 * total} descriptions" in printed and f"{total} distinct first descriptions" in printed
  assert f"train: {TINY_CORPUS['num_train']} clips" in printed
  table = d.load_jsonl(str(out))
  data_config = tiny_config(data_dir).data
  for split in ("train", "validation", "test"):
    source = data.get_data_source(data_config, split)
    records = [source[i] for i in range(len(source))]
    d.check_coverage(table, [r["id"] for r in records], source=split)
    for r in records:
      texts = table[r["id"]]
      assert len(texts) == 3 and len(set(texts)) == 3
      for name in LABEL_NAMES:
        assert _synthetic_level(name, texts[0]) in _nearest_levels(r[name]), (r["id"], name, texts[0])
  assert len(table) == total and len({texts[0] for texts in table.values()}) == total
  first = out.read_bytes()
  assert synth_tool.main(args) == 0 and out.read_bytes() == first  # reproducible
  assert synth_tool.main([*args, "--seed=1"]) == 0 and out.read_bytes() != first
  with pytest.raises(SystemExit):
    synth_tool.main([*args, "--num=0"])
