"""The train state: parameters created sharded from their logical axis names, and optimizer state that
follows its parameters' shardings.

Loading pre-trained towers is a higher layer (``erclap.tower_init``): ``create_train_state`` takes it as
an optional callable, so that the weights are in place before the optimizer state is initialised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from erclap import sharding, speech_source, stages


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; the key of step s is fold_in(rng, s), so resumed runs draw the same keys


def init_params_fn(model, config) -> Callable[[jax.Array], Any]:
  """``init(rng) -> boxed params``: the model's init on dummy inputs of the config's shapes. Always from audio
  (``speech_source.AUDIO``): the parameter tree is the same whatever the run's speech source."""
  source = speech_source.AUDIO
  inputs = source.model_inputs(stages.of(config), source.dummy_inputs(config))

  def init(rng):
    return model.init({"params": rng, "dropout": rng}, **inputs, train=False)["params"]
  return init


def abstract_params(model, config):
  """The parameters as boxed (logically partitioned) ShapeDtypeStructs: one trace of the model's init."""
  return jax.eval_shape(init_params_fn(model, config), jax.random.key(0))


def param_shardings(model, config, mesh, boxed=None):
  """NamedShardings of the (unboxed) parameters, from their logical axis names and the rule table.

  ``boxed``: ``abstract_params(model, config)`` when the caller has it already (saves a trace)."""
  boxed = abstract_params(model, config) if boxed is None else boxed
  logical = nn.get_partition_spec(boxed)
  return nn.logical_to_mesh_sharding(logical, mesh, sharding.logical_axis_rules(config.mesh.logical_axis_rules,
                                                                                 mesh.axis_names))


def init_params(model, config, mesh, rng, shardings=None):
  """Freshly initialised parameters, created sharded (``shardings``: from ``param_shardings`` if not given)."""
  shardings = param_shardings(model, config, mesh) if shardings is None else shardings
  init = init_params_fn(model, config)
  with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
    return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)


def abstract_state_and_shardings(model, config, mesh, optimizer) -> tuple[TrainState, TrainState]:
  """The TrainState as ShapeDtypeStructs, and its shardings: optimizer moments follow their parameters."""
  boxed = abstract_params(model, config)
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), nn.meta.unbox(boxed))
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(optimizer.init, params),
                        rng=jax.eval_shape(lambda: jax.random.key(0)))
  p_shardings = param_shardings(model, config, mesh, boxed)
  replicated = sharding.replicated(mesh)
  opt_shardings = _follow_params(abstract.opt_state, params, p_shardings, replicated)
  return abstract, TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings, rng=replicated)


def state_shardings(model, config, mesh, optimizer) -> TrainState:
  """Shardings of the whole TrainState: optimizer moments follow their parameters."""
  return abstract_state_and_shardings(model, config, mesh, optimizer)[1]


def abstract_sharded_state(model, config, mesh, optimizer) -> tuple[TrainState, TrainState]:
  """The TrainState as ShapeDtypeStructs that carry their shardings (what a restore fills in and what a
  compile traces, nothing allocated), and the TrainState of those shardings."""
  abstract, shardings = abstract_state_and_shardings(model, config, mesh, optimizer)
  return with_shardings(abstract, shardings), shardings


def with_shardings(tree, shardings):
  """``tree`` (arrays or ShapeDtypeStructs) as ShapeDtypeStructs with the matching ``shardings``."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _follow_params(abstract_opt, abstract_params, p_shardings, default):
  """Sharding of each optimizer-state leaf: that of the parameter it mirrors, else ``default``.

  A leaf mirrors a parameter when the parameter's key path is a suffix of the leaf's key path and the shapes
  agree (Adam's mu/nu, trace, ...). Matching by path rather than by tree structure copes with the
  ``MaskedNode`` placeholders that ``optax.multi_transform`` leaves where a group's transform is masked out.
  """
  by_path = {}
  flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  for (path, leaf), s in zip(flat_params, jax.tree.leaves(p_shardings), strict=True):
    by_path[tuple(str(k) for k in path)] = (leaf.shape, s)

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return default

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def create_train_state(model, config, mesh, optimizer, rng, load_towers=None) -> tuple[TrainState, TrainState]:
  """A fresh TrainState, created sharded, and its shardings.

  Args:
    model: the Flax model of ``config.stage``.
    config: the run's config.
    mesh: the device mesh.
    optimizer: the optax transformation (``erclap.optim.make_optimizer``).
    rng: the run's base key (split into the init key and the state's step-key base).
    load_towers: optional ``load_towers(params, param_shardings) -> params`` that puts pre-trained weights
      in place (``erclap.tower_init.load_pretrained_towers``); it runs before the optimizer state is
      initialised, so moments start from the loaded weights.

  Returns:
    ``(state, shardings)``: the state and a TrainState of NamedShardings of the same structure.
  """
  shardings = state_shardings(model, config, mesh, optimizer)
  init_rng, state_rng = jax.random.split(rng)
  params = init_params(model, config, mesh, init_rng, shardings.params)
  if load_towers is not None:
    params = load_towers(params, shardings.params)
  with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  state = TrainState(step=sharding.put_global(np.zeros((), np.int32), shardings.step), params=params,
                     opt_state=opt_state, rng=jax.jit(lambda r: r, out_shardings=shardings.rng)(state_rng))
  return state, shardings
