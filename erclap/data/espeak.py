"""The espeak corpus: English sentences spoken by espeak-ng voices, arousal strong and valence weak in the audio.

A second synthetic corpus for held-out checks, built unlike the embedded one (``erclap.data.embedded``, a
source-filter synthesis of syllables whose valence cues are as strong as its arousal cues): real words and
sentences from a formant text-to-speech engine (Debian's ``espeak-ng``), many speakers (accents x voice
variants), speakers of the validation and test splits never heard in training, and valence carried only by weak
acoustic cues, as in real speech, where valence is harder to hear than arousal.

Each clip has latent values a, v, d drawn uniformly on 1–7, u = (value - 4) / 3 in [-1, 1], and cue strengths
``arousal_cue``, ``valence_cue``, ``dominance_cue`` (c_a, c_v, c_d; 1 = the defaults below, 0 = no cue):

Arousal (strong, three cues)
  * speaking rate: the speaker's rate * 1.4^(c_a u_a) (espeak-ng ``-s``; about 125 to 245 words per minute);
  * pitch level: the speaker's pitch + 15 c_a u_a (espeak-ng ``-p``, 0–99);
  * loudness: +7 c_a u_a dB.
Valence (weak, three cues, each smaller than what speakers or arousal do to the same feature)
  * pitch level: + 5 c_v u_v (espeak-ng ``-p``; a third of arousal's ±15, less than the speakers' 38–62);
  * pitch range: 2^(0.8 c_v u_v) (SSML ``<prosody range>``, 57 %–174 %), against a clip-to-clip range jitter
    (log-normal, sd 0.15 octave);
  * brightness: a first-order high shelf above 1 kHz of 3 c_v u_v dB (brighter when positive, "smiling"), on top
    of each speaker's own shelf (uniform in ±3 dB).
  Text is lexically neutral (no emotion words), so nothing else in the audio follows valence.
Dominance (moderate)
  * pauses: a word gap of round(2 c_d (1 - u_d) / 2) x 10 ms (espeak-ng ``-g``; fewer pauses when dominant);
  * loudness: +2.5 c_d u_d dB.

Speakers: ``num_speakers`` pairs of an English accent (``ACCENTS``) and a voice variant (``VARIANTS``: female and
male alternately), each with its own pitch (espeak-ng ``-p`` 38–62 before the arousal cue), rate (0.9–1.1 of
175 words per minute), loudness (±2 dB) and brightness. With ``held_out_speakers`` (default), the speakers are
split 70 / 10 / 20 % between train, validation and test, so the test split measures generalisation to unheard
voices. Sentences are drawn from a grammar of neutral words (``sentence``; about 120,000 sentences). Stored labels
are the latent values plus Gaussian noise (sd ``label_noise``), clipped to 1–7. Clips are resampled from
espeak-ng's 22,050 Hz to 16 kHz and stored as int16; a clip lasts as long as its sentence takes (about 1.5–4 s).

Every clip is generated from its own seed (corpus seed, split, index). The spec (sizes, speakers, cue strengths,
noise, seed, ``SYNTHESIS_VERSION``) is hashed into the TFDS builder-config name, so a changed spec builds a new
corpus; the espeak-ng version that built a corpus is recorded in its metadata (other versions may pronounce
differently).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import subprocess

import numpy as np
from scipy import signal

from erclap.data import audio as audio_io
from erclap.schema import LABEL_NAMES

SYNTHESIS_VERSION = 3
SPLITS = ("train", "validation", "test")
_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
ENGINE = "espeak-ng"
ENGINE_RATE = 22050
PACKAGE_HINT = ("the espeak corpus needs the espeak-ng program: install the Debian / Ubuntu package `espeak-ng` "
                "(apt-get install espeak-ng), or choose another corpus with --config.data.name")

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_FEMALE = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "aunty", "belinda", "linda", "steph",
           "steph2", "steph3", "anika", "grandma")
_MALE = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "adam", "benjamin", "david", "edward", "john", "max", "paul",
         "robert", "travis")
VARIANTS = tuple(v for pair in zip(_FEMALE, _MALE, strict=True) for v in pair)  # female, male, female, ...

# The sentence grammar: subject, verb, object, ending; every word lexically neutral.
_SUBJECTS = ("The old farmer", "A young teacher", "My neighbour", "The driver", "Her brother", "Our guide",
             "The pilot", "A tall student", "The clerk", "His cousin", "The new tenant", "A local baker",
             "The engineer", "My aunt", "The librarian", "A quiet visitor", "The porter", "Their uncle",
             "The painter", "A second courier")
_VERBS = ("carried", "painted", "counted", "moved", "checked", "found", "described", "opened", "measured",
          "sorted", "brought", "cleaned", "labelled", "fetched", "repaired")
_OBJECTS = ("seven wooden boxes", "the blue door", "a heavy table", "the kitchen window", "three paper maps",
            "the metal ladder", "a box of nails", "the garden gate", "two brown chairs", "the station clock",
            "a pile of letters", "the narrow shelf", "four glass jars", "the yellow bicycle", "a bag of rice",
            "the spare tyre", "the winter coats", "a roll of tape", "the copper pipes", "five green bottles")
_ENDINGS = ("before noon", "on Tuesday", "near the station", "after lunch", "in the garden", "at the corner",
            "by the river", "in the morning", "on the second floor", "behind the school", "last week",
            "at half past four", "during the break", "next to the bank", "on the way home", "", "", "", "", "")
_PUNCTUATION = (".", ".", ".", ",")  # a trailing comma ends on a continuation rise


def sentence(rng: np.random.Generator) -> str:
  """One sentence of the grammar (subject verb object [ending])."""
  parts = [_SUBJECTS[rng.integers(len(_SUBJECTS))], _VERBS[rng.integers(len(_VERBS))],
           _OBJECTS[rng.integers(len(_OBJECTS))], _ENDINGS[rng.integers(len(_ENDINGS))]]
  return " ".join(p for p in parts if p) + _PUNCTUATION[rng.integers(len(_PUNCTUATION))]


@dataclasses.dataclass(frozen=True)
class EspeakSpec:
  """Everything that determines the corpus's contents (its hash names the TFDS builder config)."""
  num_train: int = 2400
  num_validation: int = 300
  num_test: int = 600
  num_speakers: int = 30
  held_out_speakers: bool = True
  arousal_cue: float = 1.0
  valence_cue: float = 1.0
  dominance_cue: float = 1.0
  label_noise: float = 0.3
  seed: int = 4321
  sample_rate: int = 16000
  version: int = SYNTHESIS_VERSION

  def __post_init__(self):
    for name in ("num_train", "num_validation", "num_test"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"data.espeak.{name} must be >= 1, got {getattr(self, name)}")
    most = len(ACCENTS) * len(VARIANTS)
    least = 3 if self.held_out_speakers else 1
    if not least <= int(self.num_speakers) <= most:
      raise ValueError(f"data.espeak.num_speakers must be in [{least}, {most}] (accents x voice variants"
                       + ("; one speaker at least per split with held_out_speakers" if least > 1 else "")
                       + f"), got {self.num_speakers}")
    for name in ("arousal_cue", "valence_cue", "dominance_cue", "label_noise"):
      if not float(getattr(self, name)) >= 0:
        raise ValueError(f"data.espeak.{name} must be >= 0, got {getattr(self, name)}")

  @classmethod
  def from_config(cls, data_config) -> EspeakSpec:
    e = data_config.espeak
    return cls(num_train=int(e.num_train), num_validation=int(e.num_validation), num_test=int(e.num_test),
               num_speakers=int(e.num_speakers), held_out_speakers=bool(e.held_out_speakers),
               arousal_cue=float(e.arousal_cue), valence_cue=float(e.valence_cue),
               dominance_cue=float(e.dominance_cue), label_noise=float(e.label_noise), seed=int(e.seed),
               sample_rate=int(data_config.sample_rate))

  def split_size(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]

  def config_name(self) -> str:
    """A short, stable name that changes whenever anything in the spec changes."""
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
    return f"v{self.version}_{hashlib.sha256(blob).hexdigest()[:12]}"


@dataclasses.dataclass(frozen=True)
class Speaker:
  name: str
  voice: str          # espeak-ng voice: accent+variant
  pitch: float        # espeak-ng -p before the arousal cue
  rate: float         # words per minute before the arousal cue
  level_db: float     # loudness offset
  brightness_db: float  # the speaker's own high shelf (the valence cue's filter)


def speakers(spec: EspeakSpec) -> list[Speaker]:
  """The corpus's speakers: distinct (accent, variant) pairs, variants female and male alternately."""
  rng = np.random.default_rng([spec.seed, 7919])
  accents = rng.permutation(len(ACCENTS))
  out = []
  for i in range(spec.num_speakers):
    # Speaker i takes variant i mod |VARIANTS| (genders alternate) in an accent that cycles once all variants
    # are taken, so that the pairs are distinct.
    variant = VARIANTS[i % len(VARIANTS)]
    accent = ACCENTS[accents[(i // len(VARIANTS) + i) % len(ACCENTS)]]
    out.append(Speaker(name=f"{accent}+{variant}", voice=f"{accent}+{variant}", pitch=float(rng.uniform(38, 62)),
                       rate=float(175.0 * rng.uniform(0.9, 1.1)), level_db=float(rng.uniform(-2.0, 2.0)),
                       brightness_db=float(rng.uniform(-3.0, 3.0))))
  return out


def split_speakers(spec: EspeakSpec, split: str, speaker_list: list[Speaker]) -> list[Speaker]:
  """The speakers a split draws from: all of them, or with ``held_out_speakers`` disjoint 70 / 10 / 20 % shares
  (at least one each)."""
  if not spec.held_out_speakers:
    return speaker_list
  n = len(speaker_list)
  num_validation = max(1, round(0.1 * n))
  num_test = max(1, round(0.2 * n))
  num_train = n - num_validation - num_test
  bounds = {"train": (0, num_train), "validation": (num_train, num_train + num_validation),
            "test": (num_train + num_validation, n)}[split]
  return speaker_list[bounds[0]:bounds[1]]


@functools.cache
def engine_version() -> str:
  """The installed espeak-ng's version line; RuntimeError naming the package when it is not installed."""
  if shutil.which(ENGINE) is None:
    raise RuntimeError(PACKAGE_HINT)
  out = subprocess.run([ENGINE, "--version"], capture_output=True, text=True, check=True).stdout
  return out.split("Data at")[0].strip()


def _read_wav_bytes(blob: bytes, where: str) -> np.ndarray:
  """espeak-ng's --stdout WAV (its header announces an unknown length) -> float32 mono samples."""
  if blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
    raise RuntimeError(f"{where}: espeak-ng wrote no WAV data ({len(blob)} bytes)")
  data = blob.find(b"data", 12)
  channels = int.from_bytes(blob[22:24], "little")
  rate = int.from_bytes(blob[24:28], "little")
  bits = int.from_bytes(blob[34:36], "little")
  if data < 0 or channels != 1 or rate != ENGINE_RATE or bits != 16:
    raise RuntimeError(f"{where}: unexpected espeak-ng output ({channels} channels, {rate} Hz, {bits} bits)")
  raw = blob[data + 8:]
  return np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.float32) / 32768.0


def speak(text: str, voice: str, *, rate: float, pitch: float, pitch_range: float, word_gap: int) -> np.ndarray:
  """espeak-ng's rendering of ``text`` -> float32 samples at ``ENGINE_RATE``.

  Args:
    text: the sentence (plain words; no SSML characters).
    voice: an espeak-ng voice name ("en-us+f2").
    rate: words per minute (``-s``). pitch: 0–99 (``-p``). pitch_range: the SSML prosody range as a factor
      (1 = the voice's own). word_gap: pause between words in 10 ms units (``-g``).
  """
  engine_version()  # a clear error naming the package when espeak-ng is missing
  ssml = f'<speak><prosody range="{100.0 * pitch_range:.0f}%">{text}</prosody></speak>'
  cmd = [ENGINE, "-m", "-z", "-v", voice, "-s", str(int(round(rate))), "-p", str(int(np.clip(round(pitch), 0, 99))),
         "-g", str(int(word_gap)), "--stdout", ssml]
  done = subprocess.run(cmd, capture_output=True, check=False)
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
  return _read_wav_bytes(done.stdout, f"espeak-ng -v {voice}")


def _brighten(x: np.ndarray, gain_db: float, sr: int = ENGINE_RATE) -> np.ndarray:
  """A first-order high shelf: x plus (10^(gain/20) - 1) times x high-passed at 1 kHz (gain in dB above it)."""
  b, a = signal.butter(1, 1000.0, "highpass", fs=sr)
  return x + (10.0 ** (gain_db / 20.0) - 1.0) * signal.lfilter(b, a, x)


def _active_rms(x: np.ndarray, sr: int) -> float:
  """RMS over the 20 ms frames within 30 dB of the loudest (the speech, without pauses)."""
  hop = max(1, int(0.02 * sr))
  frames = x[: len(x) // hop * hop].reshape(-1, hop) if len(x) >= hop else x[None]
  power = np.mean(frames * frames, axis=1)
  loud = power >= power.max() * 1e-3
  return float(np.sqrt(np.mean(power[loud]))) + 1e-9


def render(arousal: float, valence: float, dominance: float, speaker: Speaker, text: str, spec: EspeakSpec,
           rng: np.random.Generator) -> np.ndarray:
  """One clip with the cues of the module docstring -> float32 samples at ``spec.sample_rate`` in [-1, 1]."""
  ua, uv, ud = ((float(x) - 4.0) / 3.0 for x in (arousal, valence, dominance))
  ca, cv, cd = spec.arousal_cue, spec.valence_cue, spec.dominance_cue
  wave = speak(text, speaker.voice, rate=speaker.rate * 1.4 ** (ca * ua),
               pitch=speaker.pitch + 15.0 * ca * ua + 5.0 * cv * uv,
               pitch_range=2.0 ** (0.8 * cv * uv + rng.normal(0.0, 0.15)),
               word_gap=int(round(2.0 * cd * (1.0 - ud) / 2.0)))
  wave = _brighten(wave, speaker.brightness_db + 3.0 * cv * uv)
  wave = audio_io.resample(wave, ENGINE_RATE, spec.sample_rate)
  level_db = -24.0 + 7.0 * ca * ua + 2.5 * cd * ud + speaker.level_db + rng.normal(0.0, 1.0)
  wave = wave * (10.0 ** (level_db / 20.0) / _active_rms(wave, spec.sample_rate))
  wave = wave + 10.0 ** (-60.0 / 20.0) * rng.standard_normal(len(wave))  # noise floor
  return np.clip(wave, -1.0, 1.0).astype(np.float32)


def clip_rng(spec: EspeakSpec, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([spec.seed, spec.version, _SPLIT_INDEX[split], index])


def generate_example(spec: EspeakSpec, split: str, index: int, speaker_list: list[Speaker] | None = None) -> dict:
  """The ``index``-th clip of ``split``: a record in the corpus schema (audio as int16)."""
  pool = split_speakers(spec, split, speaker_list or speakers(spec))
  rng = clip_rng(spec, split, index)
  latent = rng.uniform(1.0, 7.0, size=3)
  speaker = pool[int(rng.integers(len(pool)))]
  text = sentence(rng)
  wave = render(*latent, speaker, text, spec, rng)
  labels = np.clip(latent + rng.normal(0.0, spec.label_noise, size=3), 1.0, 7.0).astype(np.float32)
  return {
      "id": f"espeak-{split}-{index:06d}",
      "audio": audio_io.to_int16(wave),
      **dict(zip(LABEL_NAMES, labels, strict=True)),
      "class_id": np.int32(-1),  # no categorical label
      "speaker": speaker.name,
  }
