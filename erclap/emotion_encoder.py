"""The emotion rank encoder as an API: a speech emotion model's utterance embedding and head outputs.

  enc = EmotionRankEncoder.load("workdirs/ser")         # an ERCLAP stage-1 workdir or <workdir>/checkpoints/<step>
  enc = EmotionRankEncoder.load("/ckpt/SER-Odyssey-Baseline-WavLM-Multi-Attributes")   # an Odyssey directory
  enc = EmotionRankEncoder.load("workdirs/ser/model")   # a stage-1 model directory (--mode=export_model)
  emb = enc.embed(["a.wav", "b.wav"])       # (N, 2H) attentive statistics [mean || std]; (N, H) mean pooling
  scores = enc.head(["a.wav"])              # (N, num_classes) the head's raw outputs
  attrs = enc.predict_attributes(["a.wav"]) # {name: (N,)} in the head's order (id2label; stage 1: A, V, D)

Audio is a path (WAV at any rate, resampled to the model's), a 1-D waveform at the model's rate, or a list of
them. Utterances are encoded whole: a batch is padded to its longest utterance, rounded up to a ladder of
half-octave lengths (``bucket_lengths``) so ``jax.jit`` compiles a handful of shapes, and masked, so each
utterance gets what it gets alone (the speech tower and pooling see only its valid frames; a GroupNorm
feature extractor, as in wavlm-base-plus, is the exception: its statistics include the padding, as in
Hugging Face). Utterances longer than ``max_seconds`` (default 30 s; the Odyssey baseline trains on at most
12 s) are refused with an error rather than windowed: pooling window embeddings is not the model's pooling of
the whole utterance. The input standardisation (Odyssey mean / std, per-utterance normalisation) is the
model's own; callers pass raw audio.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import numpy as np

from erclap import model_export, model_files, odyssey_import, resolve, runtime, sharding, stages, tower_init
from erclap.data import audio as audio_io
from erclap.schema import LABEL_NAMES

DEFAULT_MAX_SECONDS = 30.0
MIN_BUCKET_SECONDS = 1.0


def bucket_lengths(max_samples: int, min_samples: int) -> tuple[int, ...]:
  """Padded lengths: ``min_samples`` growing by sqrt(2) (at most ~41% padding), capped by ``max_samples``."""
  out, n = [], max(1, min(min_samples, max_samples))
  while n < max_samples:
    out.append(n)
    n = math.ceil(n * math.sqrt(2))
  return (*out, max_samples)


def plan_batches(lengths: Sequence[int], batch_size: int, buckets: Sequence[int],
                 divisor: int = 1) -> list[tuple[list[int], int, int]]:
  """Longest first, ``batch_size`` utterances a batch: ``[(indices, rows, padded length)]``.

  ``rows``: the batch's row count, the next power of two of its size (so a short last batch is not padded to
  ``batch_size``), a multiple of ``divisor`` (the mesh's batch shards); the length is the smallest bucket that
  holds the batch's longest utterance.
  """
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  plan = []
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    longest = lengths[idx[0]]
    length = next((b for b in buckets if b >= longest), None)
    if length is None:
      raise ValueError(f"an utterance of {longest} samples is longer than the largest bucket {buckets[-1]}")
    rows = 1 << (len(idx) - 1).bit_length()
    rows = -(-rows // divisor) * divisor
    plan.append((idx, rows, length))
  return plan


def _check_ser(config, path: str) -> None:
  """ValueError unless the model at ``path`` (of ``config``) is one this class loads (``Stage.load_problem``)."""
  problem = stages.of(config).load_problem(path, "EmotionRankEncoder")
  if problem:
    raise ValueError(problem)


@dataclasses.dataclass
class EmotionRankEncoder:
  """A speech emotion model (speech tower + pooling + head) with batched, jitted whole-utterance encoding."""
  model: object                      # erclap.models.SERModel
  params: dict
  mesh: jax.sharding.Mesh
  label_names: tuple[str, ...]       # the head's outputs, in order
  sample_rate: int
  source: str
  max_seconds: float = DEFAULT_MAX_SECONDS
  batch_size: int = 16
  logical_axis_rules: tuple = ()

  def __post_init__(self):
    if not self.max_seconds > 0:
      raise ValueError(f"max_seconds={self.max_seconds}: must be > 0")
    divisor = sharding.batch_size_divisor(self.mesh)
    self.batch_size = max(divisor, -(-int(self.batch_size) // divisor) * divisor)
    self.max_samples = int(round(self.max_seconds * self.sample_rate))
    self.buckets = bucket_lengths(self.max_samples, int(MIN_BUCKET_SECONDS * self.sample_rate))
    model = self.model
    self._apply = jax.jit(lambda p, a, m: model.apply({"params": p}, a, m, train=False))

  # ------------------------------------------------------------------ loading

  @classmethod
  def load(cls, path: str, *, batch_size: int = 16, max_seconds: float = DEFAULT_MAX_SECONDS) -> EmotionRankEncoder:
    """An Odyssey-format SER directory, an ERCLAP stage-1 workdir (latest checkpoint),
    ``<workdir>/checkpoints/<step>`` or a stage-1 model directory (``--mode=export_model``; its files are verified
    against its manifest), on all local devices (data parallel).

    Args:
      path: the model to load.
      batch_size: utterances per batch (rounded up to a multiple of the local device count).
      max_seconds: the longest utterance accepted.

    Returns:
      The encoder.
    """
    path = os.fspath(path)
    if odyssey_import.is_odyssey_dir(path):
      return cls._from_odyssey(path, batch_size=batch_size, max_seconds=max_seconds)
    if model_files.is_model_dir(path):
      return cls._from_model_dir(path, batch_size=batch_size, max_seconds=max_seconds)
    workdir, step = tower_init.split_checkpoint_path(path)
    if tower_init.is_erclap_workdir(workdir):
      return cls._from_workdir(path, workdir, step, batch_size=batch_size, max_seconds=max_seconds)
    raise FileNotFoundError(f"{path!r}: neither an ERCLAP workdir / checkpoint (no checkpoints/ directory), an ERCLAP "
                            f"model directory, nor an Odyssey-format SER model directory (no config.json naming an "
                            f"ssl_type)")

  @classmethod
  def _from_odyssey(cls, path: str, **kw) -> EmotionRankEncoder:
    ckpt = odyssey_import.import_odyssey(path)
    mesh = sharding.make_mesh((-1,), ("data",))
    params = jax.tree.map(lambda x: sharding.put_global(x, sharding.replicated(mesh)), ckpt.params)
    return cls(model=ckpt.ser_model(), params=params, mesh=mesh, label_names=ckpt.label_names,
               sample_rate=ckpt.sampling_rate, source=path, **kw)

  @classmethod
  def _from_model_dir(cls, path: str, **kw) -> EmotionRankEncoder:
    config, _ = model_export.read_model_config(path, verify=False)  # the stage, before anything heavy is read
    _check_ser(config, path)
    loaded = model_export.load_model_dir(path)
    return cls._from_model(loaded.config, loaded.model, loaded.params, loaded.mesh, path, **kw)

  @classmethod
  def _from_workdir(cls, path: str, workdir: str, step: int, **kw) -> EmotionRankEncoder:
    config = resolve.for_inference(tower_init.read_workdir_config(workdir, step))
    _check_ser(config, path)
    mesh = runtime.make_mesh(config)
    model = runtime.build_model(config)
    _, params, _ = runtime.restore_params(config, workdir, model, mesh, step=step)
    return cls._from_model(config, model, params, mesh, path, **kw)

  @classmethod
  def _from_model(cls, config, model, params, mesh, path: str, **kw) -> EmotionRankEncoder:
    n = model.num_attributes
    names = LABEL_NAMES if n == len(LABEL_NAMES) else tuple(f"class_{i}" for i in range(n))
    return cls(model=model, params=params, mesh=mesh, label_names=names, sample_rate=int(config.data.sample_rate),
               source=path, logical_axis_rules=tuple(map(tuple, config.mesh.logical_axis_rules)), **kw)

  # ------------------------------------------------------------------ encoding

  def _checked_waveforms(self, audio) -> list[np.ndarray]:
    waves = audio_io.as_waveforms(audio, target_rate=self.sample_rate)
    arch = self.model.speech_arch
    shortest = 1  # the conv stack's receptive field: the fewest samples that give one frame
    for k, s in reversed(list(zip(arch.conv_kernel, arch.conv_stride, strict=True))):
      shortest = (shortest - 1) * s + k
    for i, w in enumerate(waves):
      if w.size > self.max_samples:
        raise ValueError(f"audio[{i}]: {w.size / self.sample_rate:.2f} s is longer than max_seconds="
                         f"{self.max_seconds:g}: cut it, or load the encoder with a larger max_seconds")
      if w.size < shortest:
        raise ValueError(f"audio[{i}]: {w.size} samples is shorter than the speech model's receptive field "
                         f"({shortest} samples)")
    return waves

  def _run(self, audio: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    with sharding.use_mesh(self.mesh, self.logical_axis_rules):
      batch = sharding.batch_sharding(self.mesh, 2)
      out = self._apply(self.params, sharding.put_global(audio, batch), sharding.put_global(mask, batch))
    return jax.device_get(out)

  def encode(self, audio) -> dict[str, np.ndarray]:
    """Audio -> ``{"embedding": (N, P) pooled features, "head": (N, num_classes) raw outputs}``, float32.

    Args:
      audio: as ``erclap.data.audio.as_waveforms`` takes it (paths at any rate; arrays at 16 kHz).

    Returns:
      Both outputs of one pass, rows in the input's order.
    """
    waves = self._checked_waveforms(audio)
    divisor = sharding.batch_size_divisor(self.mesh)
    embedding, head = [None] * len(waves), [None] * len(waves)
    for idx, rows, length in plan_batches([w.size for w in waves], self.batch_size, self.buckets, divisor):
      batch = np.zeros((rows, length), np.float32)
      mask = np.zeros((rows, length), bool)
      mask[len(idx):, 0] = True  # padding rows: one valid sample keeps every statistic finite; dropped below
      for row, i in enumerate(idx):
        batch[row, :waves[i].size], mask[row, :waves[i].size] = waves[i], True
      out = self._run(batch, mask)
      for row, i in enumerate(idx):
        embedding[i], head[i] = out["embedding"][row], out["attributes"][row]
    return dict(embedding=np.stack(embedding).astype(np.float32), head=np.stack(head).astype(np.float32))

  def embed(self, audio) -> np.ndarray:
    """(N, P) pooled speech features: [mean || std] (2H) for attentive statistics pooling, H for mean pooling."""
    return self.encode(audio)["embedding"]

  def head(self, audio) -> np.ndarray:
    """(N, num_classes) the head's raw outputs (regression scores or class logits), in ``label_names`` order."""
    return self.encode(audio)["head"]

  def predict_attributes(self, audio) -> dict[str, np.ndarray]:
    """``{name: (N,)}`` the head's outputs by name, in the head's order (``label_names``)."""
    scores = self.head(audio)
    return {name: scores[:, i] for i, name in enumerate(self.label_names)}


__all__ = ["DEFAULT_MAX_SECONDS", "EmotionRankEncoder", "bucket_lengths", "plan_batches"]
