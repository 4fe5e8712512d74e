"""The optimizer: AdamW with warmup + cosine decay, per-tower learning rates, frozen towers.

Parameters are grouped by their top-level key (speech, text tower, log temperature, everything else: the
heads); each group gets its own learning-rate multiplier, or no update at all when frozen.

The speech group is the speech representation the cross-modal stage reads: the tower, its pooling and, when
the projection reads it, the SER head (``SPEECH_REPRESENTATION``). In stage 1 (``stage="ser"``) pooling and
head are what is trained on top of the tower, so there the speech group is the tower alone.
"""

from __future__ import annotations

import jax
import optax

from erclap import schema

SPEECH_TOWER, TEXT_TOWER, LOG_TEMPERATURE = "speech_tower", "text_tower", "log_temperature"
SPEECH_POOL, SER_HEAD = "speech_pool", "ser_head"
# The parts of the cross-modal model that come from a speech emotion model (stage 1 or Odyssey).
SPEECH_REPRESENTATION = schema.SPEECH_REPRESENTATION  # (SPEECH_TOWER, SPEECH_POOL, SER_HEAD)


def speech_group(stage: str) -> tuple[str, ...]:
  """Top-level parameter names of the speech group (``model.freeze_speech``, ``train.speech_lr_multiplier``).

  Args:
    stage: ``config.stage``.

  Returns:
    ``SPEECH_REPRESENTATION`` for the cross-modal stage; the tower alone for stage 1 ("ser"), whose pooling
    and head are the trained part.
  """
  return (SPEECH_TOWER,) if stage == "ser" else SPEECH_REPRESENTATION


def top_level_group(path, stage: str = "clap") -> str:
  """Which optimizer group a parameter belongs to: speech / text / temperature / head.

  Args:
    path: the parameter's key path (``jax.tree_util`` keys).
    stage: ``config.stage`` (see ``speech_group``).

  Returns:
    The group name.
  """
  top = path[0].key if hasattr(path[0], "key") else str(path[0])
  if top in speech_group(stage):
    return "speech"
  return {TEXT_TOWER: "text", LOG_TEMPERATURE: "temperature"}.get(top, "head")


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup to ``train.learning_rate``, then cosine decay to 0 at ``train.num_steps``."""
  t = config.train
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=min(t.warmup_steps, max(t.num_steps - 1, 0)),
      decay_steps=max(t.num_steps, t.warmup_steps + 1), end_value=0.0)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW + warmup/cosine + global-norm clipping, with per-tower learning rates or freezing.

  Args:
    config: the run's config (``train`` learning rates, decay, clipping; ``model.freeze_*``).

  Returns:
    The optax transformation.
  """
  t, m = config.train, config.model
  schedule = learning_rate_schedule(config)

  def adamw(multiplier, weight_decay=t.weight_decay):
    scaled = (lambda step: schedule(step) * multiplier) if multiplier != 1.0 else schedule
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on biases/norms
    return optax.adamw(scaled, b1=0.9, b2=0.98, eps=1e-6, weight_decay=weight_decay, mask=decay_mask)

  groups = {
      "speech": optax.set_to_zero() if m.freeze_speech else adamw(t.speech_lr_multiplier),
      "text": optax.set_to_zero() if m.freeze_text else adamw(t.text_lr_multiplier),
      "temperature": adamw(1.0, 0.0) if t.learn_temperature else optax.set_to_zero(),
      "head": adamw(1.0),
  }
  labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: top_level_group(p, config.stage), params)
  chain = [optax.clip_by_global_norm(t.grad_clip_norm)] if t.grad_clip_norm > 0 else []
  return optax.chain(*chain, optax.multi_transform(groups, labels))


def frozen_view(params, config):
  """Stops gradients into frozen groups (and lets XLA drop their backward pass entirely).

  Args:
    params: the model's parameter dict (top-level keys: towers, heads, log temperature).
    config: the run's config (``model.freeze_*``, ``train.learn_temperature``).

  Returns:
    ``params`` with ``jax.lax.stop_gradient`` on every frozen top-level entry.
  """
  frozen = {name: config.model.freeze_speech for name in speech_group(config.stage)}
  frozen[TEXT_TOWER] = config.model.freeze_text
  if config.stage == "clap" and not config.train.learn_temperature:
    frozen[LOG_TEMPERATURE] = True
  return {k: (jax.lax.stop_gradient(v) if frozen.get(k, False) else v) for k, v in params.items()}
