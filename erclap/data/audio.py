"""Audio I/O: WAV reading (scipy, no system libraries) and polyphase resampling to the model's rate."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from scipy import signal
from scipy.io import wavfile


class AudioReadError(ValueError):
  """A WAV file that cannot be read or decoded; the message names the file."""


def to_float32(samples: np.ndarray, *, path: str = "<array>") -> np.ndarray:
  """PCM (uint8 / int16 / int24-in-int32 / int32) or float samples -> float32 in [-1, 1].

  samples: (T,) or (T, C); channels are averaged (mono)."""
  x = np.asarray(samples)
  if x.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
    y = (x.astype(np.float32) - 128.0) / 128.0
  elif x.dtype == np.int16:
    y = x.astype(np.float32) / 32768.0
  elif x.dtype == np.int32:  # scipy returns 24-bit PCM left-justified in int32, so one scale fits both
    y = (x.astype(np.float64) / 2147483648.0).astype(np.float32)
  elif np.issubdtype(x.dtype, np.floating):
    y = x.astype(np.float32)
  else:
    raise AudioReadError(f"{path}: unsupported sample type {x.dtype}")
  if y.ndim == 2:
    y = y.mean(axis=1)
  if y.ndim != 1:
    raise AudioReadError(f"{path}: expected mono or (samples, channels) audio, got shape {x.shape}")
  return y


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
  """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed FIR); wave (T,) -> (T')."""
  orig_rate, target_rate = int(orig_rate), int(target_rate)
  if orig_rate <= 0 or target_rate <= 0:
    raise ValueError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
  if orig_rate == target_rate:
    return np.asarray(wave, np.float32)
  g = math.gcd(orig_rate, target_rate)
  out = signal.resample_poly(np.asarray(wave, np.float32), target_rate // g, orig_rate // g)
  return out.astype(np.float32)


def read_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
  """Reads a WAV file (8/16/24/32-bit PCM or float, any channel count) -> float32 mono at ``sample_rate``.

  Raises AudioReadError (a ValueError) naming the file when it is missing, not a WAV, or empty."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioReadError(f"{path}: audio file not found")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks (LIST, ...) are harmless
      rate, samples = wavfile.read(path)
  except Exception as e:  # scipy raises ValueError / EOFError / struct errors for damaged files
    raise AudioReadError(f"{path}: cannot read as WAV ({type(e).__name__}: {e})") from e
  wave = to_float32(samples, path=path)
  if wave.size == 0:
    raise AudioReadError(f"{path}: contains no samples")
  if not np.all(np.isfinite(wave)):
    raise AudioReadError(f"{path}: contains NaN or infinite samples")
  return resample(wave, rate, sample_rate)


def to_int16(wave: np.ndarray) -> np.ndarray:
  """float waveform in [-1, 1] -> int16 PCM (clipped), the storage format of the built corpora."""
  return np.clip(np.round(np.asarray(wave, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path: str, wave: np.ndarray, sample_rate: int = 16000) -> None:
  """Writes a float waveform as 16-bit PCM WAV (tools and tests)."""
  wavfile.write(os.fspath(path), int(sample_rate), to_int16(wave))
