"""Inference API: load a trained ERCLAP model and embed, compare and rank audio and descriptions.

  model = ERCLAP.load("workdirs/demo")                 # a workdir (latest checkpoint) or a checkpoint dir
  sims = model.similarity(["a.wav", "b.flac"], ["a very excited, loud voice"])
  order, scores = model.rank(["a.wav", "b.wav"], "a calm, quiet voice")
  attrs = model.predict_attributes(["a.wav"])          # {"arousal": (N,), "valence": ..., "dominance": ...}
  emb = model.embed_audio(wave_48k, sample_rate=48000) # arrays at any rate (resampled to the model's)

Inputs (``erclap.data.audio.as_waveforms``): file paths at any sample rate and channel count (resampled, mixed
down to mono), 1-D arrays, 2-D (clips, samples) arrays, or lists of paths and 1-D arrays; integer arrays are
scaled by their PCM bit depth; ``sample_rate=`` gives the rate of arrays (default: the model's, 16 kHz).
Anything ambiguous ((samples, channels) arrays, int64 samples) or unusable (empty, NaN) is an error naming it.

Long audio is never cut. A clip is embedded in windows of ``window_seconds`` (default: the model's crop,
``data.eval_max_seconds or data.max_seconds``) every ``hop_seconds`` (default: the window, no overlap): a clip
up to one window long is one window (zero-padded, the padding masked out, as in evaluation); a longer one gets
windows until one reaches its end (the last one partial, padded and masked), and its embedding is the mean of
the L2-normalised window embeddings, re-normalised (``metrics.normalized_mean``). ``return_windows=True``
gives the per-window embeddings too.

Embedding is batched (fixed batch shapes, so each window length compiles once), jitted, and sharded over all
local devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from erclap import (
    data,
    evaluate,
    metrics,
    model_export,
    model_files,
    prompts,
    resolve,
    runtime,
    sharding,
    stages,
    tokenization,
    tower_init,
)
from erclap.data import audio as audio_io
from erclap.emotion_encoder import EmotionRankEncoder
from erclap.schema import LABEL_NAMES


def _check_stage(config, path: str) -> None:
  """ValueError when ``path`` holds a model of a stage ``ERCLAP`` does not load (``Stage.api``)."""
  problem = stages.of(config).load_problem(path, "ERCLAP")
  if problem:
    raise ValueError(problem)


class ERCLAP:
  """A trained CLAP-stage model with batched, jitted embedding functions."""

  def __init__(self, config, model, params, tokenizer, mesh, step: int, batch_size: int = 32):
    self.config, self.model, self.params, self.tokenizer, self.mesh = config, model, params, tokenizer, mesh
    self.step = step
    self.sample_rate = int(config.data.sample_rate)
    self.window_seconds = data.eval_crop_seconds(config.data)  # the model's crop
    self.num_samples = int(round(self.window_seconds * self.sample_rate))
    divisor = sharding.batch_size_divisor(mesh)
    self.batch_size = max(divisor, -(-batch_size // divisor) * divisor)
    self._embedder = evaluate.Embedder(model, config, mesh, tokenizer)
    self._prompts: dict | None = None

  @classmethod
  def load(cls, workdir_or_checkpoint: str, *, batch_size: int = 32, dtype: str | None = None) -> ERCLAP:
    """A workdir (its latest checkpoint), ``<workdir>/checkpoints/<step>`` or a model directory
    (``--mode=export_model``), on all local devices. ``dtype``: compute dtype ("bfloat16"; parameters stay
    float32); None: the training's."""
    if model_files.is_model_dir(workdir_or_checkpoint):
      m = model_export.load_model_dir(workdir_or_checkpoint, dtype=dtype)
      _check_stage(m.config, workdir_or_checkpoint)
      return cls(m.config, m.model, m.params, m.tokenizer, m.mesh, m.step, batch_size=batch_size)
    workdir, step = tower_init.split_checkpoint_path(workdir_or_checkpoint)
    # The checkpoint holds the towers' weights; a tower directory still on this machine is kept because the
    # architecture is read from it (HF or Odyssey). A model to move between machines: --mode=export_model.
    config = resolve.for_inference(tower_init.read_workdir_config(workdir, step), dtype=dtype)
    _check_stage(config, workdir_or_checkpoint)
    mesh = runtime.make_mesh(config)
    tokenizer = tokenization.build_tokenizer(config.model, config.data.max_text_tokens,
                                             descriptions=config.data.descriptions)
    model = runtime.build_model(config, vocab_size=tokenizer.vocab_size)
    got_step, params, _ = runtime.restore_params(config, workdir, model, mesh, step=step)
    return cls(config, model, params, tokenizer, mesh, got_step, batch_size=batch_size)

  # ------------------------------------------------------------------ inputs

  def waveforms(self, audio, sample_rate: int | None = None) -> list[np.ndarray]:
    """Checked inputs -> float32 mono waveforms at the model's rate (``erclap.data.audio.as_waveforms``)."""
    return audio_io.as_waveforms(audio, sample_rate=sample_rate, target_rate=self.sample_rate)

  def window_samples(self, window_seconds: float | None = None, hop_seconds: float | None = None) -> tuple[int, int]:
    """(window, hop) in samples; None = the model's crop, and hop = window."""
    window_s = self.window_seconds if window_seconds is None else float(window_seconds)
    hop_s = window_s if hop_seconds is None else float(hop_seconds)
    window, hop = int(round(window_s * self.sample_rate)), int(round(hop_s * self.sample_rate))
    if not np.isfinite(window_s) or window < 1:
      raise ValueError(f"window_seconds={window_seconds}: must be a positive duration")
    if not np.isfinite(hop_s) or not 1 <= hop <= window:
      raise ValueError(f"hop_seconds={hop_seconds}: must be positive and at most window_seconds={window_s}")
    return window, hop

  # ------------------------------------------------------------------ embeddings

  def _embed_windows(self, windows: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(W, L) windows and masks -> (W, D) unit-norm embeddings, in fixed-shape batches."""
    out = []
    for start in range(0, len(windows), self.batch_size):
      n = min(self.batch_size, len(windows) - start)
      batch = np.zeros((self.batch_size, windows.shape[1]), np.float32)
      mask = np.zeros((self.batch_size, windows.shape[1]), bool)
      mask[n:, 0] = True  # padding rows: one valid sample keeps pooling finite; they are dropped below
      batch[:n], mask[:n] = windows[start:start + n], masks[start:start + n]
      out.append(self._embedder.speech(self.params, dict(audio=batch, audio_mask=mask))[:n])
    return np.concatenate(out)

  def embed_waveforms(self, waves: Sequence[np.ndarray], *, window_seconds: float | None = None,
                      hop_seconds: float | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Checked model-rate waveforms (``waveforms``) -> ((N, D) clip embeddings, per clip (W_i, D) windows).

    The windows of all clips share batches; a clip's embedding is ``metrics.normalized_mean`` of its windows."""
    window, hop = self.window_samples(window_seconds, hop_seconds)
    pieces = [audio_io.split_windows(w, window, hop) for w in waves]
    flat = self._embed_windows(np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))
    bounds = np.cumsum([0] + [len(p[0]) for p in pieces])
    per_clip = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    clips = np.stack([metrics.normalized_mean(w) for w in per_clip])
    return clips.astype(np.float32), per_clip

  def embed_audio(self, audio, *, sample_rate: int | None = None, window_seconds: float | None = None,
                  hop_seconds: float | None = None, return_windows: bool = False):
    """Audio -> L2-normalised speech embeddings.

    Args:
      audio: paths, arrays or a list of both (see the module docstring and ``as_waveforms``).
      sample_rate: the rate of array inputs (None = the model's, 16 kHz); files use their own.
      window_seconds, hop_seconds: the analysis windows of long clips (None = the model's crop, hop = window).
        A clip longer than the window is embedded window by window and averaged, never cut.
      return_windows: also return each clip's window embeddings.
    Returns:
      (N, D) float32 embeddings, or with ``return_windows`` ((N, D), [(W_i, D) per clip]).
    """
    clips, windows = self.embed_waveforms(self.waveforms(audio, sample_rate), window_seconds=window_seconds,
                                          hop_seconds=hop_seconds)
    return (clips, windows) if return_windows else clips

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

  def similarity(self, audio, texts, *, sample_rate: int | None = None, window_seconds: float | None = None,
                 hop_seconds: float | None = None) -> np.ndarray:
    """(num_audio, num_texts) cosine similarities (arguments as in ``embed_audio``)."""
    speech = self.embed_audio(audio, sample_rate=sample_rate, window_seconds=window_seconds,
                              hop_seconds=hop_seconds)
    return speech @ self.embed_text(texts).T

  def rank(self, audio, description: str, *, sample_rate: int | None = None, window_seconds: float | None = None,
           hop_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Audio items ordered by similarity to ``description``: (indices best first, their scores)."""
    scores = self.similarity(audio, [description], sample_rate=sample_rate, window_seconds=window_seconds,
                             hop_seconds=hop_seconds)[:, 0]
    order = np.argsort(-scores, kind="stable")
    return order, scores[order]

  # ------------------------------------------------------------------ zero-shot attributes

  def level_prompts(self) -> dict:
    """The level prompts zero-shot prediction uses: ``prompts.level_prompts`` (computed once), i.e. per
    attribute one embedding per level 1..7 averaged over ``eval.prompt_wordings`` template descriptions."""
    if self._prompts is None:
      self._prompts = prompts.level_prompts(lambda texts: self._embedder.text(self.params, texts), self.config)
    return self._prompts

  def attributes_from_embeddings(self, speech) -> dict[str, np.ndarray]:
    """(N, D) speech embeddings -> zero-shot {attribute: (N,)} on the 1–7 scale (``predict_attributes``)."""
    levels = self.level_prompts()
    speech = metrics.l2_normalize(np.asarray(speech, np.float32))
    return {attribute: np.asarray(metrics.zero_shot_attribute_prediction(
        levels["prompts"][attribute] @ speech.T, levels["prompt_levels"][attribute]), np.float32)
            for attribute in LABEL_NAMES}

  def predict_attributes(self, audio, *, sample_rate: int | None = None, window_seconds: float | None = None,
                         hop_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Zero-shot arousal / valence / dominance (1–7) of each clip.

    The softmax-weighted level (``metrics.zero_shot_attribute_prediction``) of the clip's similarities to
    level prompts written by the training descriptions' templates (``descriptions.level_descriptions``, one
    attribute at each level, the others neutral; wordings averaged per level). Arguments as in
    ``embed_audio``. Returns {attribute: (N,) float32}."""
    return self.attributes_from_embeddings(self.embed_audio(audio, sample_rate=sample_rate,
                                                            window_seconds=window_seconds,
                                                            hop_seconds=hop_seconds))


def load(workdir_or_checkpoint: str, **kw) -> ERCLAP:
  """``ERCLAP.load``: a workdir or ``<workdir>/checkpoints/<step>``."""
  return ERCLAP.load(workdir_or_checkpoint, **kw)


__all__ = ["ERCLAP", "EmotionRankEncoder", "load"]
