"""The optimizer: AdamW with warmup + cosine decay, per-group learning rates, and what is trained at all.

Parameters are grouped by their top-level key (``param_group``): the speech group (the stage's
``speech_group``), the text tower, the log temperature, and everything else (the heads). Each group gets its
own learning-rate multiplier, or no update at all when frozen. ``trainable_mask`` is the one answer to "which
parameters are trained": the optimizer, the step (which stops gradients into the rest, so XLA drops their
backward pass) and the plan (which counts gradient bytes for the rest only) all read it.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import optax

from erclap import stages
from erclap.stages import LOG_TEMPERATURE, SPEECH_POOL, SPEECH_TOWER, TEXT_TOWER

__all__ = ["LOG_TEMPERATURE", "SPEECH_POOL", "SPEECH_TOWER", "TEXT_TOWER", "frozen_view", "learning_rate_schedule",
           "make_optimizer", "param_group", "trainable_groups", "trainable_mask"]

GROUPS = ("speech", "text", "temperature", "head")


def param_group(name: str, stage: stages.Stage) -> str:
  """The optimizer group of the top-level parameter ``name``: speech / text / temperature / head."""
  if name in stage.speech_group:
    return "speech"
  return {TEXT_TOWER: "text", LOG_TEMPERATURE: "temperature"}.get(name, "head")


def trainable_groups(config) -> dict[str, bool]:
  """Which optimizer groups are trained: ``model.freeze_speech`` / ``model.freeze_text`` freeze the speech and
  text groups, ``train.learn_temperature=False`` fixes the temperature; the heads always train."""
  return dict(speech=not config.model.freeze_speech, text=not config.model.freeze_text,
              temperature=bool(config.train.learn_temperature), head=True)


def trainable_mask(config, names: Iterable[str]) -> dict[str, bool]:
  """{top-level parameter name: whether it is trained} for ``config``'s stage and freezing settings."""
  stage, groups = stages.of(config), trainable_groups(config)
  return {name: groups[param_group(name, stage)] for name in names}


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup to ``train.learning_rate``, then cosine decay to 0 at ``train.num_steps``."""
  t = config.train
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=min(t.warmup_steps, max(t.num_steps - 1, 0)),
      decay_steps=max(t.num_steps, t.warmup_steps + 1), end_value=0.0)


def _top_key(path) -> str:
  return path[0].key if hasattr(path[0], "key") else str(path[0])


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW + warmup/cosine + global-norm clipping, with per-group learning rates; frozen groups get no update.

  Args:
    config: the run's config (``train`` learning rates, decay, clipping; ``trainable_groups``).

  Returns:
    The optax transformation.
  """
  t = config.train
  schedule = learning_rate_schedule(config)

  def adamw(multiplier, weight_decay=t.weight_decay):
    scaled = (lambda step: schedule(step) * multiplier) if multiplier != 1.0 else schedule
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on biases/norms
    return optax.adamw(scaled, b1=0.9, b2=0.98, eps=1e-6, weight_decay=weight_decay, mask=decay_mask)

  updates = dict(speech=adamw(t.speech_lr_multiplier), text=adamw(t.text_lr_multiplier),
                 temperature=adamw(1.0, 0.0), head=adamw(1.0))
  trained = trainable_groups(config)
  transforms = {g: updates[g] if trained[g] else optax.set_to_zero() for g in GROUPS}
  stage = stages.of(config)
  labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: param_group(_top_key(p), stage), params)
  chain = [optax.clip_by_global_norm(t.grad_clip_norm)] if t.grad_clip_norm > 0 else []
  return optax.chain(*chain, optax.multi_transform(transforms, labels))


def frozen_view(params, config):
  """``params`` with ``jax.lax.stop_gradient`` on every top-level entry ``trainable_mask`` leaves untrained (and
  XLA drops their backward pass entirely)."""
  trained = trainable_mask(config, params)
  return {k: (v if trained[k] else jax.lax.stop_gradient(v)) for k, v in params.items()}
