"""Inference API: load a trained ERCLAP model and embed, compare and rank audio and descriptions.

  model = ERCLAP.load("workdirs/demo")                 # a workdir (latest checkpoint) or a checkpoint dir
  sims = model.similarity(["a.wav", "b.wav"], ["a very excited, loud voice"])
  order, scores = model.rank(["a.wav", "b.wav"], "a calm, quiet voice")
  attrs = model.predict_attributes(["a.wav"])          # {"arousal": (N,), "valence": ..., "dominance": ...}

Embedding is batched (fixed batch shapes, so each function compiles once) and jitted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from erclap import checkpointing, descriptions, evaluate, input_pipeline, metrics, runtime, sharding, tokenization
from erclap.data import audio as audio_io
from erclap.emotion_encoder import EmotionRankEncoder
from erclap.schema import LABEL_NAMES


def _split_checkpoint_path(path: str) -> tuple[str, int]:
  """A workdir -> (workdir, -1); ``<workdir>/checkpoints/<step>`` -> (workdir, step)."""
  path = os.path.abspath(path.rstrip("/"))
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    return os.path.dirname(os.path.dirname(path)), int(base)
  return path, -1


def _stored_config(workdir: str, step: int) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with (saved in its metadata)."""
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"{workdir}: not an ERCLAP workdir or checkpoint (no {ckpt_dir})")
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  if not steps:
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoint")
  chosen = step if step >= 0 else steps[-1]
  meta_dir = os.path.join(ckpt_dir, str(chosen), "meta")
  meta_files = [os.path.join(r, f) for r, _, fs in os.walk(meta_dir) for f in fs if not f.startswith("_")]
  for meta_file in meta_files:
    try:
      with open(meta_file) as f:
        meta = json.load(f)
      if "config" in meta:
        return ml_collections.ConfigDict(json.loads(meta["config"]))
    except (json.JSONDecodeError, UnicodeDecodeError):
      continue
  raise FileNotFoundError(f"{meta_dir}: no training config in the checkpoint metadata")


class ERCLAP:
  """A trained CLAP-stage model with batched, jitted embedding functions."""

  def __init__(self, config, model, params, tokenizer, mesh, step: int, batch_size: int = 32):
    self.config, self.model, self.params, self.tokenizer, self.mesh = config, model, params, tokenizer, mesh
    self.step = step
    self.sample_rate = int(config.data.sample_rate)
    seconds = config.data.eval_max_seconds or config.data.max_seconds
    self.num_samples = int(round(seconds * self.sample_rate))
    divisor = sharding.batch_size_divisor(mesh)
    self.batch_size = max(divisor, -(-batch_size // divisor) * divisor)
    self._embedder = evaluate.Embedder(model, config, mesh, tokenizer)
    self._prompt_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  @classmethod
  def load(cls, workdir_or_checkpoint: str, *, batch_size: int = 32) -> ERCLAP:
    """A workdir (its latest checkpoint) or ``<workdir>/checkpoints/<step>``, on all local devices."""
    workdir, step = _split_checkpoint_path(workdir_or_checkpoint)
    config = _stored_config(workdir, step)
    if config.stage != "clap":
      raise ValueError(f"{workdir_or_checkpoint}: a '{config.stage}' stage checkpoint; ERCLAP.load needs the "
                       f"cross-modal (clap) stage")
    with config.unlocked():
      config.mesh.shape, config.mesh.axes = (-1,), ("data",)
      config.model.speech_init = config.model.text_init = ""  # the checkpoint holds the towers already
    mesh = runtime.make_mesh(config)
    tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens)
    model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
    got_step, params, _ = runtime.restore_params(config, workdir, model, mesh, step=step)
    return cls(config, model, params, tokenizer, mesh, got_step, batch_size=batch_size)

  # ------------------------------------------------------------------ inputs

  def _waveforms(self, audio) -> list[np.ndarray]:
    """Paths, 1-D arrays, or a 2-D (N, T) array -> list of float32 mono 16 kHz waveforms."""
    if isinstance(audio, str | os.PathLike):
      audio = [audio]
    if isinstance(audio, np.ndarray) and audio.ndim == 1:
      audio = [audio]
    if isinstance(audio, np.ndarray) and audio.ndim == 2:
      audio = list(audio)
    if not isinstance(audio, Sequence) or len(audio) == 0:
      raise ValueError("audio: expected a non-empty list of file paths or 1-D float waveforms")
    out = []
    for i, item in enumerate(audio):
      if isinstance(item, str | os.PathLike):
        wave = audio_io.read_audio(str(item), self.sample_rate)
      else:
        wave = np.asarray(item)
        if wave.ndim != 1 or not (np.issubdtype(wave.dtype, np.floating) or np.issubdtype(wave.dtype, np.integer)):
          raise ValueError(f"audio[{i}]: expected a 1-D numeric waveform, got shape {wave.shape} "
                           f"dtype {wave.dtype}")
        if np.issubdtype(wave.dtype, np.integer):
          wave = wave.astype(np.float32) / np.iinfo(wave.dtype).max
      wave = np.asarray(wave, np.float32)
      if wave.size == 0 or not np.all(np.isfinite(wave)):
        raise ValueError(f"audio[{i}]: empty or non-finite waveform")
      out.append(wave)
    return out

  # ------------------------------------------------------------------ embeddings

  def embed_audio(self, audio) -> np.ndarray:
    """Audio (paths or 16 kHz waveforms) -> (N, D) L2-normalised embeddings."""
    waves = self._waveforms(audio)
    out = []
    for start in range(0, len(waves), self.batch_size):
      # Centre crop (or zero-pad), exactly like evaluation.
      chunk = [input_pipeline.crop_or_pad(w, self.num_samples) for w in waves[start:start + self.batch_size]]
      n = len(chunk)
      batch = np.zeros((self.batch_size, self.num_samples), np.float32)
      mask = np.zeros((self.batch_size, self.num_samples), bool)
      mask[n:, 0] = True  # padding rows: one valid sample keeps pooling finite; they are dropped below
      for row, (w, m) in enumerate(chunk):
        batch[row], mask[row] = w, m
      out.append(self._embedder.audio(self.params, batch, mask)[:n])
    return np.concatenate(out)

  def embed_text(self, texts) -> np.ndarray:
    """Descriptions -> (N, D) L2-normalised embeddings."""
    if isinstance(texts, str):
      texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) == 0:
      raise ValueError("texts: expected a non-empty list of strings")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
      raise ValueError(f"texts: items {bad[:5]} are not strings")
    return self._embedder.text(self.params, list(texts), batch_size=self.batch_size)

  def similarity(self, audio, texts) -> np.ndarray:
    """(num_audio, num_texts) cosine similarities."""
    return self.embed_audio(audio) @ self.embed_text(texts).T

  def rank(self, audio, description: str) -> tuple[np.ndarray, np.ndarray]:
    """Audio items ordered by similarity to ``description``: (indices best first, their scores)."""
    scores = self.similarity(audio, [description])[:, 0]
    order = np.argsort(-scores, kind="stable")
    return order, scores[order]

  def predict_attributes(self, audio) -> dict[str, np.ndarray]:
    """Zero-shot arousal / valence / dominance (1–7) from similarities to the level prompts."""
    speech = self.embed_audio(audio)
    result = {}
    for attribute in LABEL_NAMES:
      if attribute not in self._prompt_cache:
        prompts = descriptions.level_prompts(attribute)
        self._prompt_cache[attribute] = (self.embed_text(prompts), np.linspace(1.0, 7.0, len(prompts)))
      prompt_emb, levels = self._prompt_cache[attribute]
      result[attribute] = np.asarray(metrics.zero_shot_attribute_prediction(prompt_emb @ speech.T, levels))
    return result


def load(workdir_or_checkpoint: str, **kw) -> ERCLAP:
  return ERCLAP.load(workdir_or_checkpoint, **kw)


__all__ = ["ERCLAP", "EmotionRankEncoder", "load"]
