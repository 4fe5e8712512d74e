"""Speaking-style descriptions from dimensional emotion labels (the paper writes them with an LLM).

Deterministic templates with graded wording: each attribute's 1–7 value is quantised to one of 7 levels
(level = round(value), clipped to 1..7) and rendered with a level phrase from one of several synonym sets;
``variant`` picks the sentence pattern and the synonym sets, so the same labels have ``NUM_VARIANTS``
distinct wordings (several are drawn per utterance and epoch as augmentation). Within every synonym set the
phrases are ordered, so a higher value never gets a phrase of a lower level.

Also: level descriptions (``level_descriptions``: one attribute at each level 1..7, the others neutral, in
the training templates' words) for zero-shot attribute prediction and the prompt-based metrics; the fixed,
out-of-template level prompts ("very low arousal" ... "very high arousal", ``level_prompts``) for the
``*_fixed_*`` metrics; free-form paraphrased level prompts ("a drowsy voice, barely awake",
``paraphrased_level_prompts``) for the ``*_paraphrase_*`` metrics; single-attribute queries for the retrieval
Kendall tau, the vocabulary of every word a template can produce (the word-level tokenizer's vocabulary), and
loading of LLM-written descriptions from JSONL (``{"id": ..., "descriptions": [...]}``; prompt in
``descriptions_prompt.txt``).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from erclap import fileio
from erclap.schema import LABEL_NAMES

NUM_LEVELS = 7

# Level phrases, level 1 .. 7, per attribute and synonym set (each set ordered low -> high).
LEVEL_PHRASES = {
    "arousal": (
        ("very calm", "calm", "fairly calm", "moderately energetic", "energetic", "excited",
         "extremely excited"),
        ("very subdued", "subdued", "somewhat subdued", "moderately lively", "lively", "highly aroused",
         "extremely agitated"),
        ("very sleepy", "relaxed", "rather relaxed", "moderately alert", "animated", "intense",
         "extremely intense"),
    ),
    "valence": (
        ("very negative", "negative", "slightly negative", "neutral", "slightly positive", "positive",
         "very positive"),
        ("very unhappy", "unhappy", "somewhat displeased", "emotionally neutral", "fairly pleasant", "happy",
         "very happy"),
        ("deeply upset", "upset", "slightly gloomy", "even", "slightly cheerful", "cheerful", "delighted"),
    ),
    "dominance": (
        ("very submissive", "submissive", "somewhat submissive", "balanced", "somewhat dominant", "dominant",
         "very dominant"),
        ("very timid", "timid", "slightly hesitant", "moderately assertive", "fairly confident", "confident",
         "very commanding"),
        ("very meek", "meek", "somewhat unsure", "steady", "self-assured", "assertive", "forceful"),
    ),
}
NUM_SYNONYM_SETS = 3

# Sentence patterns; {a}, {v}, {d} are level phrases (adjectival), {A} is {a} with a capital first letter.
TEMPLATES = (
    "A {a} voice with a {v} tone, sounding {d}.",
    "The speaker sounds {a}, {v} and {d}.",
    "{A} speech; the mood is {v} and the manner {d}.",
    "Someone speaking in a {a} way, {v} in tone and {d} in attitude.",
    "This voice is {a}. It sounds {v}, and the speaker seems {d}.",
    "A {d} speaker talking in a {a}, {v} manner.",
    "Heard here: a {v}, {a} voice that comes across as {d}.",
    "{A} and {v}, the speaker sounds {d}.",
    "A speaker whose voice is {a}, whose mood is {v}, and who sounds {d}.",
    "In a {a} voice, someone speaks with a {v} feeling, {d} overall.",
    "The utterance is delivered in a {a}, {v} and {d} style.",
    "A person with a {v} attitude speaks in a {a} and {d} voice.",
)
NUM_VARIANTS = len(TEMPLATES) * NUM_SYNONYM_SETS

LEVEL_PROMPT_DEGREES = ("very low", "low", "somewhat low", "medium", "somewhat high", "high", "very high")

# Free-form level prompts, level 1 .. 7 per attribute, written mostly in words the templates never produce (a
# test keeps them out of ``vocabulary()``): what a user might type. A text tower that only knows the template
# words cannot place them; one pre-trained on general English (MiniLM) can.
PARAPHRASED_LEVEL_PROMPTS = {
    "arousal": (
        ("a drowsy voice, barely awake", "someone mumbling, half asleep", "a slow, tired murmur",
         "a sluggish, lethargic drone"),
        ("a soft, unhurried voice", "someone talking slowly and quietly", "a mellow, laid-back tone",
         "a quiet, low-key remark"),
        ("a gentle voice at an easy pace", "someone chatting casually", "a soft-spoken, easygoing delivery",
         "a quiet but attentive remark"),
        ("an ordinary voice at a normal pace", "someone talking at a regular volume", "a matter-of-fact reading",
         "a plain, unremarkable delivery"),
        ("a brisk, upbeat voice", "someone talking quickly with some enthusiasm", "a spirited, eager delivery",
         "a vigorous, wide-awake tone"),
        ("a loud, fast, thrilled voice", "someone raising their voice with enthusiasm",
         "an emphatic, fiery delivery", "a loud, heated exclamation"),
        ("someone shouting with excitement", "a frantic, screaming voice", "a frenzied yell at full volume",
         "a wild, explosive outburst"),
    ),
    "valence": (
        ("a miserable, heartbroken tone", "someone sobbing in despair", "a bitter, hopeless voice",
         "a grief-stricken lament"),
        ("a sad, disappointed voice", "someone complaining sourly", "an irritated, annoyed tone",
         "a resentful grumble"),
        ("a somewhat glum voice", "someone sounding a bit down", "a mildly dissatisfied remark",
         "a faintly sad tone"),
        ("a matter-of-fact, indifferent voice", "someone stating plain facts", "an impartial, businesslike tone",
         "a flat, unemotional remark"),
        ("a friendly, agreeable voice", "someone sounding mildly content", "a warm, kindly remark",
         "a good-natured tone"),
        ("a joyful, smiling voice", "someone glad about good news", "a bright, satisfied tone",
         "a warm, amused laugh"),
        ("an ecstatic, overjoyed voice", "someone laughing with pure joy", "a blissful, elated tone",
         "a thrilled, grateful exclamation"),
    ),
    "dominance": (
        ("a frightened, cowering whisper", "someone pleading and apologising", "a shy, obedient mumble",
         "a powerless, begging voice"),
        ("a shy, uncertain voice", "someone asking permission nervously", "a deferential, apologetic tone",
         "a nervous, yielding reply"),
        ("a slightly tentative voice", "someone sounding a little doubtful", "a modest, cautious remark",
         "a mildly reluctant reply"),
        ("a composed, ordinary voice", "someone stating an opinion plainly", "a neither bossy nor shy tone",
         "a matter-of-fact reply"),
        ("a poised, sure voice", "someone talking with some authority", "a firm, capable tone",
         "a sure-footed reply"),
        ("a bold, decisive voice", "someone giving clear instructions", "a firm, in-charge tone",
         "a strong, determined reply"),
        ("an authoritative voice barking orders", "someone in charge giving strict orders",
         "a domineering, imperious tone", "a bossy voice demanding obedience"),
    ),
}


def _check_attribute(attribute: str) -> str:
  if attribute not in LABEL_NAMES:
    raise ValueError(f"attribute={attribute!r} is not one of {LABEL_NAMES}")
  return attribute


def level(value: float) -> int:
  """A 1–7 value -> its level 1..7 (nearest integer, clipped); NaN is an error."""
  x = float(value)
  if not np.isfinite(x):
    raise ValueError(f"label value must be finite, got {value!r}")
  return int(np.clip(np.floor(x + 0.5), 1, NUM_LEVELS))


def level_word(attribute: str, value: float, *, synonym_set: int = 0) -> str:
  """The level phrase for ``value`` of ``attribute`` (synonym set 0 by default): e.g. arousal 7 -> "extremely
  excited"."""
  sets = LEVEL_PHRASES[_check_attribute(attribute)]
  return sets[int(synonym_set) % len(sets)][level(value) - 1]


def _variant_parts(variant: int) -> tuple[str, tuple[int, int, int]]:
  if isinstance(variant, bool) or not isinstance(variant, int | np.integer):
    raise TypeError(f"variant must be an int, got {type(variant).__name__}")
  v = int(variant) % NUM_VARIANTS
  template = TEMPLATES[v % len(TEMPLATES)]
  base = v // len(TEMPLATES)
  # Rotate the synonym sets across attributes so different variants mix wordings.
  return template, (base, (base + 1) % NUM_SYNONYM_SETS, (base + 2) % NUM_SYNONYM_SETS)


def describe(arousal: float, valence: float, dominance: float, *, variant: int) -> str:
  """A natural-language speaking-style description of the labels; ``variant`` (any int, used modulo
  NUM_VARIANTS) selects the sentence pattern and wording. Deterministic."""
  template, (sa, sv, sd) = _variant_parts(variant)
  a = level_word("arousal", arousal, synonym_set=sa)
  v = level_word("valence", valence, synonym_set=sv)
  d = level_word("dominance", dominance, synonym_set=sd)
  text = template.format(a=a, v=v, d=d, A=a[:1].upper() + a[1:])
  return _ARTICLE.sub(r"\1n ", text)  # "a extremely" -> "an extremely"


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")


def words(text: str) -> list[str]:
  """Lowercase words and punctuation marks, split like the word-level tokenizer ("self-assured" -> 3)."""
  return re.findall(r"\w+|[^\w\s]", text.lower())


def level_prompts(attribute: str, num_levels: int = NUM_LEVELS) -> list[str]:
  """Fixed prompts from the lowest to the highest level: "very low arousal" ... "very high arousal"
  (num_levels from 2 to 7, evenly spread over the 7 degrees).

  These words never occur in the training descriptions (out of distribution for the text tower); zero-shot
  prediction uses ``level_descriptions``, and these prompts feed only the ``*_fixed_*`` metrics."""
  _check_attribute(attribute)
  if not 2 <= int(num_levels) <= NUM_LEVELS:
    raise ValueError(f"num_levels must be in 2..{NUM_LEVELS}, got {num_levels}")
  picks = np.round(np.linspace(0, NUM_LEVELS - 1, int(num_levels))).astype(int)
  return [f"{LEVEL_PROMPT_DEGREES[i]} {attribute}" for i in picks]


def attribute_queries(attribute: str, values: Sequence[float], *, num_wordings: int, seed: int) -> list[str]:
  """Descriptions at each of ``values`` of ``attribute`` with the other attributes neutral (4).

  Returns len(values) * num_wordings strings, grouped by value (value 0's wordings first); the same
  ``num_wordings`` variants (drawn with ``seed``) are used at every value, so only the attribute's level
  phrase differs between values."""
  _check_attribute(attribute)
  if int(num_wordings) < 1:
    raise ValueError(f"num_wordings must be >= 1, got {num_wordings}")
  rng = np.random.default_rng(seed)
  variants = rng.choice(NUM_VARIANTS, size=int(num_wordings), replace=int(num_wordings) > NUM_VARIANTS)
  out = []
  for value in values:
    labels = {"arousal": 4.0, "valence": 4.0, "dominance": 4.0, attribute: float(value)}
    out.extend(describe(labels["arousal"], labels["valence"], labels["dominance"], variant=int(v))
               for v in variants)
  return out


def level_descriptions(attribute: str, *, num_wordings: int = 8, seed: int = 0) -> tuple[np.ndarray, list[str]]:
  """Descriptions of ``attribute`` at each level 1..7 with the other attributes neutral (4), written by the
  same templates as the training descriptions (``attribute_queries``), ``num_wordings`` per level.

  The level prompts of zero-shot attribute prediction and the prompt-based metrics: their embeddings are
  averaged per level (``metrics.normalized_mean``). For a model trained on LLM-written descriptions
  (``data.descriptions`` = a JSONL file) they are still these template descriptions.

  Returns:
    levels: (7 * num_wordings,) float32 level of each text (1.0 .. 7.0, grouped, level 1 first).
    texts: the 7 * num_wordings descriptions in the same order.
  """
  values = np.arange(1, NUM_LEVELS + 1, dtype=np.float32)
  texts = attribute_queries(attribute, values, num_wordings=num_wordings, seed=seed)
  return np.repeat(values, int(num_wordings)), texts


def paraphrased_level_prompts(attribute: str) -> tuple[np.ndarray, list[str]]:
  """Free-form prompts of ``attribute`` at each level 1..7 (``PARAPHRASED_LEVEL_PROMPTS``: "a drowsy voice,
  barely awake" ... "someone shouting with excitement"), in words mostly outside the template vocabulary.

  The third prompt set, beside the template ``level_descriptions`` and the fixed ``level_prompts``: their
  embeddings are averaged per level (``metrics.mean_by_level``) into the ``*_paraphrase_*`` metrics.

  Returns:
    levels: (7 * P,) float32 level of each text (1.0 .. 7.0, grouped, level 1 first).
    texts: the 7 * P prompts in the same order.
  """
  per_level = PARAPHRASED_LEVEL_PROMPTS[_check_attribute(attribute)]
  levels = np.concatenate([np.full(len(p), k + 1, np.float32) for k, p in enumerate(per_level)])
  return levels, [text for prompts in per_level for text in prompts]


def vocabulary() -> list[str]:
  """Every word and punctuation mark any template or level prompt can produce (lowercase, sorted)."""
  vocab = set()
  for template in TEMPLATES:
    vocab.update(words(re.sub(r"\{[aAvd]\}", " ", template)))
  for sets in LEVEL_PHRASES.values():
    for phrases in sets:
      for phrase in phrases:
        vocab.update(words(phrase))
  vocab.add("an")  # the article before vowel-initial phrases
  for attribute in LABEL_NAMES:
    for prompt in level_prompts(attribute):
      vocab.update(words(prompt))
  return sorted(vocab)


def example_variants(example_id: str, per_example: int, seed: int = 0) -> list[int]:
  """The ``per_example`` template variants an utterance draws its descriptions from (fixed per id)."""
  if int(per_example) < 1:
    raise ValueError(f"data.descriptions_per_example must be >= 1, got {per_example}")
  start = zlib.crc32(f"{seed}:{example_id}".encode()) % NUM_VARIANTS
  # A stride coprime with NUM_VARIANTS walks through distinct variants (patterns and synonym sets).
  stride = 7 if np.gcd(7, NUM_VARIANTS) == 1 else 1
  return [(start + j * stride) % NUM_VARIANTS for j in range(int(per_example))]


# ----------------------------------------------------------------------------- LLM-written descriptions


def load_jsonl(path: str) -> dict[str, list[str]]:
  """A JSONL file of ``{"id": str, "descriptions": [str, ...]}`` lines -> {id: descriptions}.

  Errors name the file and line (bad JSON, missing keys, empty or non-string descriptions, duplicates)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"descriptions file {path} not found (data.descriptions)")
  out: dict[str, list[str]] = {}
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {line_no}: not valid JSON ({e.msg})") from None
      if not isinstance(obj, dict) or "id" not in obj or "descriptions" not in obj:
        raise ValueError(f"{path} line {line_no}: expected an object with 'id' and 'descriptions'")
      key, texts = str(obj["id"]), obj["descriptions"]
      if isinstance(texts, str):
        texts = [texts]
      if (not isinstance(texts, list) or not texts
          or not all(isinstance(t, str) and t.strip() for t in texts)):
        raise ValueError(f"{path} line {line_no} (id {key!r}): 'descriptions' must be a non-empty list of "
                         f"non-empty strings")
      if key in out:
        raise ValueError(f"{path} line {line_no}: duplicate id {key!r}")
      out[key] = [t.strip() for t in texts]
  if not out:
    raise ValueError(f"descriptions file {path} holds no descriptions")
  return out


def write_jsonl(path: str, descriptions: dict[str, Sequence[str]]) -> None:
  """{id: descriptions} -> JSONL, written atomically (``erclap.fileio.atomic_open``)."""
  with fileio.atomic_open(os.fspath(path), "w", encoding="utf-8") as f:
    for key, texts in descriptions.items():
      line = json.dumps({"id": str(key), "descriptions": [str(t) for t in texts]}, ensure_ascii=False)
      f.write(line + "\n")


def check_coverage(descriptions: dict[str, list[str]], ids: Iterable[str], *, source: str = "") -> None:
  """Raises ValueError listing (the first few of) the ids that have no descriptions."""
  missing = [i for i in ids if i not in descriptions]
  if missing:
    shown = ", ".join(repr(m) for m in missing[:10])
    raise ValueError(f"{len(missing)} example id(s){' of ' + source if source else ''} have no LLM-written "
                     f"description: {shown}{' ...' if len(missing) > 10 else ''}")
