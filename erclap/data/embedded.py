"""The embedded corpus: deterministic synthetic emotional speech, generated with numpy/scipy only.

Every clip is a source–filter synthesis of a syllable sequence ("ba-di-go..." like vowels, no words). Three
latent attribute values a, v, d on the 1–7 scale (drawn uniformly, independently) control documented cues,
with u = (value - 4) / 3 in [-1, 1]:

Arousal (u_a)
  * pitch level: mean f0 = speaker base f0 * 2^(5 u_a / 12) (±5 semitones);
  * pitch range: per-syllable pitch accents of ±(0.5 + 3.5 (u_a + 1) / 2) semitones;
  * loudness: syllable RMS level 9 u_a dB around the speaker's reference;
  * speaking rate: 3.4 * 1.75^u_a syllables per second (about 1.9 to 6.0).
Valence (u_v)
  * contour shape: each syllable glides by 5 u_v semitones (rising when positive, falling when negative),
    on top of a phrase-level slope of 3 u_v semitones over the clip;
  * spectral brightness: one-pole low-pass on the glottal source with pole 0.6 - 0.3 u_v (brighter when
    positive) and formants raised by 6 u_v percent (a "smiling" vocal tract);
  * voice quality: jitter (f0 perturbation, 0.3 %–4 %) and breathy aspiration noise grow as valence falls.
Dominance (u_d)
  * loudness steadiness: syllable-to-syllable level jitter of 0.5 + 5 (1 - u_d) / 2 dB;
  * tempo steadiness: log-normal syllable-duration jitter with sigma 0.04 + 0.4 (1 - u_d) / 2;
  * a small level offset of +2.5 u_d dB (assertive speakers are a little louder).

Speakers (``num_speakers``) alternate male / female with different base f0 (about 95–140 Hz and
175–240 Hz) and vocal-tract lengths (formant scale 0.88–1.18); speaker identity is a nuisance factor
independent of the labels. The stored labels are the latent values plus Gaussian label noise (sd
``label_noise``), clipped to 1–7. Clip lengths are uniform in [min_seconds, max_seconds]; 16 kHz, stored
as int16.

Every clip is generated from its own seed (corpus seed, split, index), so a clip does not depend on the
split sizes and generation order; the corpus spec (sizes, seed, noise, speakers, lengths, rate and
``SYNTHESIS_VERSION``) is hashed into the TFDS builder-config name, so a changed spec builds a new corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
from scipy import signal

from erclap.data import audio as audio_io
from erclap.schema import LABEL_NAMES

SYNTHESIS_VERSION = 1
SPLITS = ("train", "validation", "test")
_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}

# Vowel formants (F1, F2, F3) in Hz for an adult male vocal tract; a, e, i, o, u.
_VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410],
                    [300, 870, 2240]], np.float64)
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


@dataclasses.dataclass(frozen=True)
class EmbeddedSpec:
  """Everything that determines the corpus's contents (its hash names the TFDS builder config)."""
  num_train: int = 4000
  num_validation: int = 500
  num_test: int = 1000
  num_speakers: int = 8
  min_seconds: float = 1.0
  max_seconds: float = 4.0
  label_noise: float = 0.3
  seed: int = 1234
  sample_rate: int = 16000
  version: int = SYNTHESIS_VERSION

  def __post_init__(self):
    for name in ("num_train", "num_validation", "num_test"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"data.embedded.{name} must be >= 1, got {getattr(self, name)}")
    if int(self.num_speakers) < 1:
      raise ValueError(f"data.embedded.num_speakers must be >= 1, got {self.num_speakers}")
    if not 0.1 <= float(self.min_seconds) <= float(self.max_seconds):
      raise ValueError(f"data.embedded.min_seconds/max_seconds must satisfy 0.1 <= min <= max, got "
                       f"{self.min_seconds}/{self.max_seconds}")
    if float(self.label_noise) < 0:
      raise ValueError(f"data.embedded.label_noise must be >= 0, got {self.label_noise}")
    if int(self.sample_rate) < 8000:
      raise ValueError(f"data.sample_rate must be >= 8000 for the embedded corpus, got {self.sample_rate}")

  @classmethod
  def from_config(cls, data_config) -> EmbeddedSpec:
    e = data_config.embedded
    return cls(num_train=int(e.num_train), num_validation=int(e.num_validation), num_test=int(e.num_test),
               num_speakers=int(e.num_speakers), min_seconds=float(e.min_seconds),
               max_seconds=float(e.max_seconds), label_noise=float(e.label_noise), seed=int(e.seed),
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
  f0: float              # base f0 in Hz
  formant_scale: float   # vocal-tract length factor on all formants


def speakers(spec: EmbeddedSpec) -> list[Speaker]:
  rng = np.random.default_rng([spec.seed, 7919])
  out = []
  for i in range(spec.num_speakers):
    female = i % 2 == 1
    f0 = rng.uniform(175.0, 240.0) if female else rng.uniform(95.0, 140.0)
    scale = rng.uniform(1.06, 1.18) if female else rng.uniform(0.88, 1.0)
    out.append(Speaker(f"spk{i:02d}", float(f0), float(scale)))
  return out


def _formant_filter(formants: np.ndarray, sr: int) -> np.ndarray:
  """Denominator of a cascade of 2-pole resonators at ``formants`` (Hz) -> (7,) coefficients."""
  a = np.array([1.0])
  for f, bw in zip(formants, _BANDWIDTHS, strict=True):
    f = min(float(f), 0.45 * sr)
    r = np.exp(-np.pi * bw / sr)
    a = np.convolve(a, [1.0, -2.0 * r * np.cos(2.0 * np.pi * f / sr), r * r])
  return a


def _smooth_noise(rng: np.random.Generator, n: int, sr: int, hop_seconds: float = 0.005) -> np.ndarray:
  """Unit-variance noise that changes every ``hop_seconds`` (linear interpolation), shape (n,)."""
  hop = max(1, int(sr * hop_seconds))
  knots = rng.standard_normal(n // hop + 2)
  return np.interp(np.arange(n) / hop, np.arange(knots.size), knots)


def synthesize(arousal: float, valence: float, dominance: float, speaker: Speaker, num_samples: int,
               rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
  """One clip with the cues of the module docstring -> float32 (num_samples,) in [-1, 1]."""
  sr = sample_rate
  ua, uv, ud = ((float(x) - 4.0) / 3.0 for x in (arousal, valence, dominance))
  n = int(num_samples)
  rate = 3.4 * 1.75 ** ua                                   # syllables per second
  tempo_sigma = 0.04 + 0.4 * (1.0 - ud) / 2.0
  level_sigma_db = 0.5 + 5.0 * (1.0 - ud) / 2.0
  f0_mean = speaker.f0 * 2.0 ** (5.0 * ua / 12.0)
  accent_st = 0.5 + 3.5 * (ua + 1.0) / 2.0
  glide_st = 5.0 * uv
  phrase_st = 3.0 * uv
  jitter = 0.003 + 0.037 * (1.0 - uv) / 2.0
  breath = 0.02 + 0.3 * (1.0 - uv) / 2.0
  pole = 0.6 - 0.3 * uv
  formant_shift = 1.0 + 0.06 * uv

  # Syllable schedule: (start, voiced length) in samples.
  t = int(rng.uniform(0.01, 0.08) * sr)
  schedule = []
  while t < n:
    length = int(sr / rate * np.exp(rng.normal(0.0, tempo_sigma)))
    voiced = int(length * rng.uniform(0.6, 0.78))
    voiced = min(voiced, n - t)
    if voiced < int(0.03 * sr):
      break
    schedule.append((t, voiced))
    t += max(length, voiced + 1)
  if not schedule:  # a very short clip still carries one syllable
    schedule.append((0, n))

  # f0 track (semitones around f0_mean) over the whole clip; only voiced spans are used.
  pos = np.arange(n) / max(n - 1, 1)
  st = phrase_st * (pos - 0.5)
  for start, voiced in schedule:
    tau = np.linspace(-0.5, 0.5, voiced)
    st[start:start + voiced] += rng.uniform(-1.0, 1.0) * accent_st + glide_st * tau
  f0 = f0_mean * 2.0 ** (st / 12.0) * (1.0 + jitter * _smooth_noise(rng, n, sr))
  phase = np.cumsum(f0 / sr)
  source = 2.0 * (phase - np.floor(phase)) - 1.0             # sawtooth glottal source
  source = source + breath * rng.standard_normal(n)          # aspiration noise (breathiness)
  source = signal.lfilter([1.0 - pole], [1.0, -pole], source)  # spectral tilt (brightness)

  out = np.zeros(n, np.float64)
  ref_db = -22.0 + 9.0 * ua + 2.5 * ud                       # RMS level in dBFS
  for start, voiced in schedule:
    vowel = _VOWELS[rng.integers(len(_VOWELS))] * speaker.formant_scale * formant_shift
    seg = signal.lfilter([1.0], _formant_filter(vowel, sr), source[start:start + voiced])
    seg *= np.sin(np.linspace(0.0, np.pi, voiced)) ** 0.7      # syllable envelope
    seg *= 1.0 + 0.1 * (1.0 - uv) / 2.0 * _smooth_noise(rng, voiced, sr, 0.01)  # shimmer
    rms = np.sqrt(np.mean(seg * seg)) + 1e-9
    level_db = ref_db + rng.normal(0.0, level_sigma_db)
    out[start:start + voiced] = seg * (10.0 ** (level_db / 20.0) / rms)
  out += 10.0 ** (-60.0 / 20.0) * rng.standard_normal(n)     # noise floor
  return np.clip(out, -1.0, 1.0).astype(np.float32)


def clip_rng(spec: EmbeddedSpec, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([spec.seed, spec.version, _SPLIT_INDEX[split], index])


def generate_example(spec: EmbeddedSpec, split: str, index: int, speaker_list: list[Speaker] | None = None
                     ) -> dict:
  """The ``index``-th clip of ``split``: a record in the corpus schema (audio as int16)."""
  speaker_list = speaker_list or speakers(spec)
  rng = clip_rng(spec, split, index)
  latent = rng.uniform(1.0, 7.0, size=3)
  speaker = speaker_list[int(rng.integers(len(speaker_list)))]
  seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
  wave = synthesize(*latent, speaker, int(round(seconds * spec.sample_rate)), rng, spec.sample_rate)
  labels = np.clip(latent + rng.normal(0.0, spec.label_noise, size=3), 1.0, 7.0).astype(np.float32)
  return {
      "id": f"embedded-{split}-{index:06d}",
      "audio": audio_io.to_int16(wave),
      **dict(zip(LABEL_NAMES, labels, strict=True)),
      "class_id": np.int32(-1),  # the synthetic corpus has no categorical label
      "speaker": speaker.name,
  }
