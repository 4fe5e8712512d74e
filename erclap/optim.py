"""The optimizer: AdamW with warmup + cosine decay, per-group learning rates, and nothing for what does not train.

Parameters are grouped by their top-level key (``erclap.trainable``: ``Trainable.group``): the speech group, the
text tower, the log temperature, and everything else (the heads). Each group gets its own learning-rate
multiplier, or no update and no optimizer moments at all when it is frozen (``Trainable.trained_groups``).
"""

from __future__ import annotations

import jax
import optax

from erclap import trainable


def learning_rate_schedule(config, peak=None) -> optax.Schedule:
  """Linear warmup to ``train.learning_rate``, then cosine decay to 0 at ``train.num_steps``.

  ``peak``: the peak as a traced value instead (a member's, ``erclap.members.hyper``). The schedule is optax's
  ``warmup_cosine_decay_schedule`` written out (its parts joined at the end of the warmup), because that one tests
  its peak in Python: a traced peak goes through the operations a float peak does (XLA folds a constant peak into
  its neighbours, so the two differ by a few float32 ulp, 3e-6 relative at most on the demo's schedule)."""
  t = config.train
  peak = t.learning_rate if peak is None else peak
  warmup = min(t.warmup_steps, max(t.num_steps - 1, 0))
  decay = max(t.num_steps, t.warmup_steps + 1)
  return optax.join_schedules(
      [optax.linear_schedule(init_value=0.0, end_value=peak, transition_steps=warmup),
       optax.cosine_decay_schedule(init_value=peak, decay_steps=decay - warmup, alpha=0.0)], [warmup])


def _top_key(path) -> str:
  return path[0].key if hasattr(path[0], "key") else str(path[0])


def make_optimizer(config, peak=None) -> optax.GradientTransformation:
  """AdamW + warmup/cosine + global-norm clipping, with per-group learning rates; frozen groups get no update.

  Args:
    config: the run's config (``train`` learning rates, decay, clipping; what trains: ``trainable.of``).
    peak: the schedule's peak as a traced value (a member's learning rate; ``learning_rate_schedule``); None:
      ``train.learning_rate``. The optimizer's state does not depend on it.

  Returns:
    The optax transformation. Its state holds Adam moments for the trained groups only (a frozen group's
    transform is ``optax.set_to_zero``, and ``multi_transform`` masks the other groups' parameters out).
  """
  t = config.train
  schedule = learning_rate_schedule(config, peak)

  def adamw(multiplier, weight_decay=t.weight_decay):
    scaled = (lambda step: schedule(step) * multiplier) if multiplier != 1.0 else schedule
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on biases/norms
    return optax.adamw(scaled, b1=0.9, b2=0.98, eps=1e-6, weight_decay=weight_decay, mask=decay_mask)

  updates = dict(speech=adamw(t.speech_lr_multiplier), text=adamw(t.text_lr_multiplier),
                 temperature=adamw(1.0, 0.0), head=adamw(1.0))
  what = trainable.of(config)
  transforms = {g: updates[g] if g in what.trained_groups else optax.set_to_zero() for g in trainable.GROUPS}
  labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: what.group(_top_key(p)), params)
  chain = [optax.clip_by_global_norm(t.grad_clip_norm)] if t.grad_clip_norm > 0 else []
  return optax.chain(*chain, optax.multi_transform(transforms, labels))
