"""Audio I/O and input checks: reading files, PCM scaling, mono mix-down, resampling, windowing.

Files: WAV is read with scipy (no system libraries); FLAC / OGG / MP3 (and WAV variants scipy cannot parse)
with ``soundfile`` (it bundles libsndfile; a dependency of the package, imported only when such a file is read
so that a WAV-only environment needs nothing else). Multi-channel audio is mixed down to mono (channel mean)
and resampled to the model's rate with a polyphase filter.

Arrays (``as_waveforms``, the single entry point of the inference API and ``python -m erclap.embed``) follow
the PCM conventions below and are never reinterpreted silently: a 2-D array is a batch (N, T) of clips,
never a (T, C) multi-channel clip, and integer samples are scaled by their bit depth, not their dtype's max.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import signal
from scipy.io import wavfile

# File types that `python -m erclap.embed` collects from a directory (WAV always; the rest need soundfile).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# A 2-D array whose second axis is at most this long is refused: it is almost surely (samples, channels).
MAX_CHANNELS = 8


class AudioReadError(ValueError):
  """An audio file or array that cannot be read or used; the message names it."""


def pcm_to_float32(samples, *, where: str = "<array>") -> np.ndarray:
  """Samples of any shape -> float32 in [-1, 1] by the PCM convention of their dtype.

  uint8: 8-bit unsigned PCM, (x - 128) / 128. int8: x / 128. int16: x / 32768. int32: x / 2**31 (also 24-bit
  PCM, which WAV readers return left-justified in int32). Floats are taken as they are. int64 and the other
  unsigned types carry no bit depth (numpy promotes Python ints to int64) and are refused: convert them to
  the PCM type they hold (``x.astype(np.int16)``) or to float in [-1, 1]."""
  x = np.asarray(samples)
  scales = {np.dtype(np.int8): 128.0, np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}
  if x.dtype == np.uint8:
    return ((x.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
  if x.dtype in scales:
    return (x.astype(np.float64) / scales[x.dtype]).astype(np.float32)
  if np.issubdtype(x.dtype, np.floating):
    return x.astype(np.float32)
  raise AudioReadError(f"{where}: unsupported sample type {x.dtype}; use int16 / int32 PCM, uint8 (8-bit PCM) or "
                       f"float samples in [-1, 1] (an int64 array: convert it to the PCM type its values are, "
                       f"e.g. x.astype(np.int16))")


def to_float32(samples: np.ndarray, *, path: str = "<array>") -> np.ndarray:
  """Decoded file samples (T,) or (T, C) -> float32 mono (channel mean) in [-1, 1] (``pcm_to_float32``)."""
  x = np.asarray(samples)
  if x.ndim not in (1, 2):
    raise AudioReadError(f"{path}: expected mono or (samples, channels) audio, got shape {x.shape}")
  y = pcm_to_float32(x, where=path)
  return y.mean(axis=1, dtype=np.float32) if y.ndim == 2 else y


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


@dataclasses.dataclass
class DecodedAudio:
  """A file read for the model: the mono waveform at the model's rate, and what the file held."""
  wave: np.ndarray      # (T,) float32 mono at the requested rate
  sample_rate: int      # the file's own rate
  channels: int         # the file's channel count (mixed down to mono in ``wave``)
  duration_s: float     # the file's duration


def _decode_soundfile(path: str) -> tuple[int, np.ndarray]:
  try:
    import soundfile  # optional here: only non-WAV files (and WAVs scipy cannot parse) need libsndfile
  except ImportError as e:
    raise AudioReadError(f"{path}: reading this format needs the 'soundfile' package (pip install soundfile); "
                         f"WAV files are read without it") from e
  try:
    samples, rate = soundfile.read(path, dtype="float32", always_2d=False)
  except Exception as e:  # libsndfile reports every decoding problem as a RuntimeError / LibsndfileError
    raise AudioReadError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
  return int(rate), samples


def _decode(path: str) -> tuple[int, np.ndarray]:
  """(rate, samples (T,) or (T, C) in the file's sample type)."""
  if not path.lower().endswith(".wav"):
    return _decode_soundfile(path)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks (LIST, ...) are harmless
      return wavfile.read(path)
  except Exception as e:  # scipy raises ValueError / EOFError / struct errors for damaged files
    scipy_error = AudioReadError(f"{path}: cannot read as WAV ({type(e).__name__}: {e})")
  try:  # WAV variants scipy does not parse (e.g. some WAVE_FORMAT_EXTENSIBLE files) may still decode
    return _decode_soundfile(path)
  except AudioReadError:
    raise scipy_error from None


def load_audio(path: str, sample_rate: int = 16000) -> DecodedAudio:
  """Reads an audio file (WAV: 8/16/24/32-bit PCM or float; FLAC / OGG / MP3 through soundfile) at any rate and
  channel count -> ``DecodedAudio`` with the mono waveform resampled to ``sample_rate``.

  Raises AudioReadError (a ValueError) naming the file when it is missing, undecodable, empty, non-finite or
  its header gives no positive sample rate."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioReadError(f"{path}: audio file not found")
  rate, samples = _decode(path)
  if int(rate) <= 0:  # a damaged or hand-made header: nothing can be resampled from it
    raise AudioReadError(f"{path}: its header gives a sample rate of {rate} Hz")
  wave = to_float32(samples, path=path)
  if wave.size == 0:
    raise AudioReadError(f"{path}: contains no samples")
  if not np.all(np.isfinite(wave)):
    raise AudioReadError(f"{path}: contains NaN or infinite samples")
  channels = 1 if np.ndim(samples) == 1 else int(np.shape(samples)[1])
  return DecodedAudio(resample(wave, rate, sample_rate), int(rate), channels, wave.size / float(rate))


def read_audio(path: str, sample_rate: int = 16000) -> np.ndarray:
  """``load_audio(path, sample_rate).wave``: the file as float32 mono at ``sample_rate``."""
  return load_audio(path, sample_rate).wave


def _array_item(item, where: str, sample_rate: int | None, target_rate: int) -> np.ndarray:
  x = np.asarray(item)
  if x.ndim == 2:
    raise AudioReadError(f"{where}: a 2-D array {x.shape} inside a list; each item must be one mono clip (T,): "
                         f"mix multi-channel audio down first (x.mean(axis=1) for (T, C))")
  if x.ndim != 1:
    raise AudioReadError(f"{where}: expected a 1-D waveform, got shape {x.shape}")
  wave = pcm_to_float32(x, where=where)
  if wave.size == 0:
    raise AudioReadError(f"{where}: empty waveform")
  if not np.all(np.isfinite(wave)):
    raise AudioReadError(f"{where}: contains NaN or infinite samples")
  return resample(wave, sample_rate or target_rate, target_rate)


def as_waveforms(audio, sample_rate: int | None = None, target_rate: int = 16000) -> list[np.ndarray]:
  """Inference inputs -> a list of float32 mono waveforms at ``target_rate``.

  Args:
    audio: a file path; a 1-D array (one clip); a 2-D array (N, T): N clips of T samples (a 2-D array with
      at most ``MAX_CHANNELS`` columns is refused as a likely (samples, channels) clip: pass a list of 1-D
      clips or mix down); or a list mixing paths and 1-D arrays. Files are read at their own rate and mixed
      down (``load_audio``); integer arrays are scaled by ``pcm_to_float32``.
    sample_rate: the rate of the arrays (None = ``target_rate``); they are resampled to ``target_rate``.
      Files always use the rate in their header.
    target_rate: the model's rate.
  Returns:
    list of (T_i,) float32 arrays. Errors (AudioReadError, a ValueError) name the item: ``audio[i]`` or the
    file.
  """
  if sample_rate is not None and (isinstance(sample_rate, bool) or int(sample_rate) != sample_rate
                                  or sample_rate <= 0):
    raise ValueError(f"sample_rate: expected a positive integer rate in Hz, got {sample_rate!r}")
  if isinstance(audio, str | os.PathLike):
    audio = [audio]
  elif isinstance(audio, np.ndarray):
    if audio.ndim == 2 and audio.shape[1] <= MAX_CHANNELS:
      raise AudioReadError(
          f"audio: a 2-D array of shape {audio.shape} is read as (clips, samples), and {audio.shape[1]} samples "
          f"per clip looks like (samples, channels) audio: mix it down (audio.mean(axis=1)) or pass a list of "
          f"1-D clips")
    if audio.ndim not in (1, 2):
      raise AudioReadError(f"audio: expected a 1-D clip or a 2-D (clips, samples) array, got shape {audio.shape}")
    audio = [audio] if audio.ndim == 1 else list(audio)
  if not isinstance(audio, Sequence) or isinstance(audio, str | bytes) or len(audio) == 0:
    raise AudioReadError("audio: expected a file path, an array, or a non-empty list of paths / 1-D arrays")
  out = []
  for i, item in enumerate(audio):
    if isinstance(item, str | os.PathLike):
      out.append(read_audio(os.fspath(item), target_rate))
    else:
      out.append(_array_item(item, f"audio[{i}]", sample_rate, target_rate))
  return out


def window_starts(num_samples: int, window: int, hop: int) -> np.ndarray:
  """Start samples of the analysis windows of a clip: one window if it fits, else windows every ``hop``
  samples until one reaches the end (the last one may be partial)."""
  if window < 1 or hop < 1:
    raise ValueError(f"window and hop must be >= 1 sample, got window={window}, hop={hop}")
  if num_samples <= window:
    return np.zeros(1, np.int64)
  return np.arange(1 + math.ceil((num_samples - window) / hop), dtype=np.int64) * hop


def split_windows(wave: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
  """(T,) waveform -> ((W, window) float32 windows, (W, window) bool valid-sample masks).

  Windows start at ``window_starts``; a clip shorter than the window and the last partial window are
  zero-padded, the padding masked out."""
  wave = np.asarray(wave, np.float32)
  starts = window_starts(len(wave), window, hop)
  out = np.zeros((len(starts), window), np.float32)
  mask = np.zeros((len(starts), window), bool)
  for row, start in enumerate(starts):
    piece = wave[start:start + window]
    out[row, :len(piece)], mask[row, :len(piece)] = piece, True
  return out, mask


def to_int16(wave: np.ndarray) -> np.ndarray:
  """float waveform in [-1, 1] -> int16 PCM (clipped), the storage format of the built corpora."""
  return np.clip(np.round(np.asarray(wave, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path: str, wave: np.ndarray, sample_rate: int = 16000) -> None:
  """Writes a float waveform as 16-bit PCM WAV (tools and tests)."""
  wavfile.write(os.fspath(path), int(sample_rate), to_int16(wave))
