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
Kendall tau, the vocabulary of every word a template can produce (the word-level tokenizer's vocabulary),
loading of LLM-written descriptions from JSONL (``{"id": ..., "descriptions": [...]}``; prompt in
``descriptions_prompt.txt``), and synthetic LLM-style descriptions written offline (``unique_descriptions``:
free-form, distinct per clip, worded from the exact values; ``synthesize_corpus``: a whole corpus, every clip's
first description its own).
"""

from __future__ import annotations

import hashlib
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


# ----------------------------------------------------------------------------- synthetic LLM-style descriptions
#
# Offline stand-ins for LLM-written descriptions: free-form sentences in a wider vocabulary than the templates,
# drawn per clip from its exact values, so that clips with the same labels still get different texts.
# A level phrase is a degree adverb and a pole adjective (levels 1-3 low pole, 5-7 high pole, the adverb's
# strength and the adjective's growing with the distance from neutral 4) or a neutral phrase (level 4); arousal
# also has "with ..." noun phrases. Level phrases never share a word-bounded phrase across attributes, and a
# phrase of one level that holds a shorter phrase of another (e.g. "moderately energetic" holds "energetic") is
# read by its longest match.

DEGREE_ADVERBS = {  # by |level - 4|; "" is the bare adjective
    3: ("very", "extremely", "intensely", "exceptionally", "remarkably", "utterly"),
    2: ("", "clearly", "really", "noticeably", "distinctly", "decidedly"),
    1: ("slightly", "somewhat", "mildly", "faintly", "fairly", "rather"),
}
POLE_ADJECTIVES = {  # (low pole, high pole), each (mild words, strong words: never with a mild adverb)
    "arousal": (
        (("calm", "sleepy", "subdued", "drowsy", "languid", "mellow", "placid", "tranquil", "relaxed"),
         ("lethargic", "listless", "sluggish")),
        (("excited", "energetic", "animated", "lively", "intense", "vigorous", "spirited", "restless"),
         ("frantic", "agitated", "keyed-up", "heated")),
    ),
    "valence": (
        (("sad", "unhappy", "gloomy", "negative", "displeased", "downcast", "irritated", "glum"),
         ("miserable", "sorrowful", "bitter", "dejected")),
        (("happy", "cheerful", "positive", "pleased", "upbeat", "content", "warm", "bright", "sunny", "glad"),
         ("delighted", "joyful", "elated", "overjoyed")),
    ),
    "dominance": (
        (("timid", "meek", "hesitant", "shy", "unsure", "tentative", "insecure", "diffident", "uncertain"),
         ("submissive", "deferential", "yielding")),
        (("dominant", "confident", "assertive", "bold", "self-assured", "decisive", "firm", "resolute"),
         ("domineering", "commanding", "authoritative", "forceful")),
    ),
}
NEUTRAL_PHRASES = {  # level 4
    "arousal": ("moderately energetic", "evenly paced", "measured", "moderately lively", "steady-paced",
                "unhurried yet alert"),
    "valence": ("neutral", "emotionally neutral", "even-toned", "matter-of-fact", "impartial",
                "emotionally even"),
    "dominance": ("balanced", "steady", "moderately assertive", "even-handed", "composed", "level-headed"),
}
ENERGY_PHRASES = (  # arousal as "with ...", level 1 .. 7
    ("almost no energy", "barely any energy", "hardly any energy at all"),
    ("little energy", "low energy", "a slow, quiet pace"),
    ("somewhat low energy", "a rather unhurried pace", "slightly less energy than usual"),
    ("moderate energy", "an ordinary pace", "a medium level of energy"),
    ("a fair amount of energy", "a somewhat brisk pace", "slightly more energy than usual"),
    ("plenty of energy", "high energy", "a quick, lively pace"),
    ("tremendous energy", "an explosive burst of energy", "an almost frantic pace"),
)
SPEAKER_NOUNS = ("speaker", "person", "talker", "narrator", "presenter", "guest", "interviewee", "caller", "host",
                 "storyteller")
VOICE_NOUNS = ("voice", "tone of voice", "delivery", "way of speaking", "manner of speech")
SPEAKING_VERBS = ("speaks", "talks", "says a few words", "delivers the line", "answers", "explains something",
                  "comments", "replies", "makes a remark", "reads a sentence")
# {a} {v} {d}: level phrases (adjectival); {e}: an arousal "with ..." phrase; {noun} {voice} {verb}: the pools above.
SYNTHETIC_TEMPLATES = (
    "The {noun} {verb} in a {a} {voice}, {v} and {d}.",
    "A {a}, {v} {voice}; the {noun} comes across as {d}.",
    "{a} and {v}, the {noun} sounds {d}.",
    "The {noun} {verb} with {e}, sounding {v} and {d}.",
    "The {voice} is {a}; the {noun} seems {v} and {d}.",
    "You hear a {d} {noun} who sounds {a} and {v}.",
    "A {v} mood comes through as the {noun} {verb}: {a} and {d}.",
    "Speaking with {e}, the {noun} sounds {v} and {d}.",
    "A {noun} {verb} in a {a} way; the mood is {v}, the stance {d}.",
    "The {noun}'s {voice} is {a}, the tone {v}, the attitude {d}.",
    "Spoken by a {a} {noun}, the words sound {v} and {d}.",
    "{v} in tone and {d} in attitude, the {noun} {verb} with {e}.",
    "The {noun} sounds {a}, with a {v} feel and a {d} presence.",
    "There is a {v} quality to this {a} {voice}, and the {noun} seems {d}.",
    "A {d} {noun} {verb} here; the {voice} is {a} and the mood {v}.",
    "Sounding {d}, the {noun} {verb} in a {a}, {v} way.",
    "The clip features a {a} {noun} with a {v} outlook who comes across as {d}.",
    "Overall the {noun} sounds {d}: the {voice} is {a} and the mood {v}.",
    "{a}, {v} and {d}: that is how this {noun} comes across.",
    "A {v} {noun} with {e} and a {d} bearing.",
    "A {a} {voice} from a {noun} who feels {v} and acts {d}.",
    "Listen closely and the {noun} sounds {a}, {v}, and {d}.",
)
# Clauses about the recording, none of them about arousal, valence or dominance: added to a colliding sentence.
DETAIL_CLAUSES = (
    "with a short pause in the middle", "over faint background noise", "with crisp articulation",
    "with a slight echo from the room", "pausing briefly before the last word", "with an audible breath at the start",
    "on what sounds like a phone line", "stressing one word near the end", "recorded close to the microphone",
    "with some room reverberation", "with a clipped final syllable", "in a single short phrase",
    "with a faint hum in the background", "with the last word trailing off",
    "recorded at some distance from the microphone", "with a noticeable regional accent",
)
_UNIFORMS_PER_SENTENCE = 16  # 3 levels, template, noun, voice, verb, 3 x (adverb, adjective), energy phrase


def synthetic_level_phrases(attribute: str) -> tuple[tuple[str, ...], ...]:
  """Every phrase the synthetic descriptions can use for ``attribute`` at level 1 .. 7 (7 tuples, sorted)."""
  _check_attribute(attribute)
  out = []
  for lvl in range(1, NUM_LEVELS + 1):
    if lvl == 4:
      phrases = set(NEUTRAL_PHRASES[attribute])
    else:
      phrases = {f"{adverb} {adjective}".strip() for adverb in DEGREE_ADVERBS[abs(lvl - 4)]
                 for adjective in _adjectives(attribute, lvl)}
    if attribute == "arousal":
      phrases.update(ENERGY_PHRASES[lvl - 1])
    out.append(tuple(sorted(phrases)))
  return tuple(out)


def stochastic_level(value: float, u: float) -> int:
  """The level of ``value`` between its two nearest levels: floor(value) + 1 when ``u`` (uniform in [0, 1)) is
  below the fractional part, else floor(value); values are clipped to 1..7, NaN is an error.

  A value x thus gets level floor(x) or ceil(x), ceil(x) with probability frac(x): for x < y the levels satisfy
  level(x) <= ceil(x) <= floor(y) + 1 <= level(y) + 1, i.e. a lower value is at most one level above."""
  x = float(value)
  if not np.isfinite(x):
    raise ValueError(f"label value must be finite, got {value!r}")
  x = float(np.clip(x, 1.0, NUM_LEVELS))
  low = int(np.floor(x))
  return min(low + int(float(u) < x - low), NUM_LEVELS)


def _pick(pool: Sequence[str], u: float) -> str:
  return pool[min(int(u * len(pool)), len(pool) - 1)]


def _adjectives(attribute: str, lvl: int) -> tuple[str, ...]:
  """The pole adjectives of a level other than 4: the strong ones only 2 or 3 levels away from neutral."""
  mild, strong = POLE_ADJECTIVES[attribute][int(lvl > 4)]
  return mild if abs(lvl - 4) == 1 else mild + strong


def _level_phrase(attribute: str, lvl: int, u_adverb: float, u_word: float) -> str:
  if lvl == 4:
    return _pick(NEUTRAL_PHRASES[attribute], u_word)
  return f"{_pick(DEGREE_ADVERBS[abs(lvl - 4)], u_adverb)} {_pick(_adjectives(attribute, lvl), u_word)}".strip()


def _synthetic_sentence(rng: np.random.Generator, labels: Sequence[float]) -> str:
  # One fixed-size draw per sentence: the levels take the first three uniforms whatever the other choices.
  u = rng.random(_UNIFORMS_PER_SENTENCE)
  levels = [stochastic_level(x, u[j]) for j, x in enumerate(labels)]
  a, v, d = (_level_phrase(name, lvl, u[6 + 2 * j], u[7 + 2 * j])
             for j, (name, lvl) in enumerate(zip(LABEL_NAMES, levels, strict=True)))
  text = _pick(SYNTHETIC_TEMPLATES, u[3]).format(
      a=a, v=v, d=d, e=_pick(ENERGY_PHRASES[levels[0] - 1], u[12]), noun=_pick(SPEAKER_NOUNS, u[4]),
      voice=_pick(VOICE_NOUNS, u[5]), verb=_pick(SPEAKING_VERBS, u[13]))
  text = _ARTICLE.sub(r"\1n ", text)  # "a extremely" -> "an extremely"
  return text[:1].upper() + text[1:]


def _clip_rng(seed: int, example_id: str) -> np.random.Generator:
  digest = hashlib.sha256(f"{int(seed)}:{example_id}".encode()).digest()
  return np.random.default_rng(np.frombuffer(digest, np.uint32))


def _with_details(text: str, details: Sequence[str]) -> str:
  return f"{text[:-1]}, {' and '.join(details)}{text[-1]}"


def _fresh_sentence(rng: np.random.Generator, labels: Sequence[float], taken, *, max_redraws: int,
                    tag: str) -> str:
  """A sentence for ``labels`` that ``taken`` (a container) does not hold: redrawn up to ``max_redraws`` times,
  then the last draw with one, two or three ``DETAIL_CLAUSES``, and as a last resort with ``tag``."""
  for _ in range(int(max_redraws) + 1):
    text = _synthetic_sentence(rng, labels)
    if text not in taken:
      return text
  for count in (1, 2, 3):
    for _ in range(16):
      picks = rng.choice(len(DETAIL_CLAUSES), size=count, replace=False)
      candidate = _with_details(text, [DETAIL_CLAUSES[int(k)] for k in picks])
      if candidate not in taken:
        return candidate
  return f"{text[:-1]} ({tag}){text[-1]}"


class _Union:
  """``in`` over several containers without copying them."""

  def __init__(self, *parts):
    self.parts = parts

  def __contains__(self, item) -> bool:
    return any(item in part for part in self.parts)


def _clip_descriptions(example_id: str, labels: Sequence[float], num: int, seed: int, *, first_taken=(),
                       rest_taken=(), max_redraws: int = 8) -> list[str]:
  if int(num) < 1:
    raise ValueError(f"num must be >= 1, got {num}")
  for x in labels:
    stochastic_level(x, 0.0)  # NaN check before any draw
  rng = _clip_rng(seed, example_id)
  texts: list[str] = []
  for i in range(int(num)):
    taken = _Union(texts, first_taken if i == 0 else rest_taken)
    texts.append(_fresh_sentence(rng, labels, taken, max_redraws=max_redraws,
                                 tag=f"clip {example_id}, description {i + 1}"))
  return texts


def unique_descriptions(example_id: str, arousal: float, valence: float, dominance: float, *, num: int = 4,
                        seed: int = 0) -> list[str]:
  """``num`` distinct free-form descriptions of one clip, in the manner of LLM-written ones.

  Each sentence draws, per attribute, the level between the two nearest to the exact value (the upper one with
  probability equal to the fractional part, ``stochastic_level``), a degree adverb and adjective of that level
  (or a neutral phrase), and a sentence pattern, speaker noun and verb, from a generator seeded by
  (``seed``, ``example_id``): reproducible, and different for clips with equal labels. A higher value never
  gets a phrase more than one level below a lower value's.

  Args:
    example_id: the clip's id (seeds its draws).
    arousal: the 1–7 arousal value (clipped to the scale).
    valence: the 1–7 valence value.
    dominance: the 1–7 dominance value.
    num: how many descriptions (>= 1).
    seed: a corpus-wide seed.

  Returns:
    ``num`` distinct sentences.

  Raises:
    ValueError: ``num`` < 1 or a value is not finite.
  """
  return _clip_descriptions(str(example_id), (arousal, valence, dominance), num, seed)


def synthesize_corpus(clips: Iterable[tuple[str, float, float, float]], *, num: int = 4, seed: int = 0,
                      taken: Iterable[str] = (), max_redraws: int = 8) -> dict[str, list[str]]:
  """``unique_descriptions`` of every clip, with each clip's first description distinct from every other
  description of the corpus: a first description that an earlier clip's descriptions (or ``taken``) already
  hold is redrawn, up to ``max_redraws`` times, then given distinguishing clauses about the recording
  (``DETAIL_CLAUSES``); later descriptions never repeat an earlier clip's first one. Deterministic for the same
  clips in the same order.

  Args:
    clips: (id, arousal, valence, dominance) per clip.
    num: descriptions per clip (>= 1).
    seed: the seed of ``unique_descriptions``.
    taken: texts no first description may equal (e.g. another corpus's).
    max_redraws: redraws of a colliding sentence before clauses are added.

  Returns:
    {id: descriptions}, in the order of ``clips`` (``write_jsonl`` writes it).

  Raises:
    ValueError: a repeated id, ``num`` < 1 or a value that is not finite.
  """
  out: dict[str, list[str]] = {}
  firsts: set[str] = set()
  every: set[str] = set(taken)
  for example_id, arousal, valence, dominance in clips:
    key = str(example_id)
    if key in out:
      raise ValueError(f"clips: duplicate id {key!r}")
    texts = _clip_descriptions(key, (arousal, valence, dominance), num, seed, first_taken=every,
                               rest_taken=firsts, max_redraws=max_redraws)
    out[key] = texts
    firsts.add(texts[0])
    every.update(texts)
  return out
