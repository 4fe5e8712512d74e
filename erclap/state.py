"""The train state: parameters created sharded from their logical axis names, and optimizer state that
follows its parameters' shardings.

A program with members (``erclap.members``) holds K members in one state: the top-level parameters that differ
between members (``member_names``: what trains, and the log temperature when member temperatures differ) carry a
leading member axis (the logical axis ``member``, ``erclap.sharding``), and so do the optimizer state (over those
parameters only) and the step-key bases; what is frozen is held once and shared by every member. Member k starts
from exactly the parameters the standalone run of ``members.member_config(config, k)`` starts from.

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
from jax.sharding import PartitionSpec

from erclap import members, sharding, speech_source, stages, trainable
from erclap.models import LOG_TEMPERATURE


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; the key of step s is fold_in(rng, s), so resumed runs draw the same keys
  # With members: params holds the member_names entries stacked (K, ...), opt_state is over those entries alone
  # (stacked), rng is (K,) keys; step is shared.


def member_names(config, names) -> tuple[str, ...]:
  """The top-level parameters among ``names`` that carry the member axis in a program with members: those that
  train (``trainable.of``), and the log temperature when member temperatures differ or some members learn it and
  others not. () for an ordinary run."""
  if not members.count(config):
    return ()
  what = trainable.of(config)
  per_member = {key.name for key in members.varied(config)} & {"temperatures", "learn_temperature"}
  return tuple(n for n in names if what.trains(n) or (per_member and n == LOG_TEMPERATURE))


def member_params(config, params, k: int) -> dict:
  """Member ``k``'s parameters (a standalone run's tree) from the parameters of a program with members: its slice
  of the stacked entries, the shared ones as they are. ``params`` itself for an ordinary run."""
  stacked = member_names(config, params)
  if not stacked:
    return params
  return {n: (jax.tree.map(lambda x: x[k], v) if n in stacked else v) for n, v in params.items()}


def _stacked_specs(config, logical: dict) -> dict:
  """Logical PartitionSpecs with the member axis in front of the member entries' (``member_names``)."""
  stacked = member_names(config, logical)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  return {n: (jax.tree.map(lambda p: PartitionSpec(sharding.MEMBER_AXIS, *p), v, is_leaf=is_spec)
              if n in stacked else v) for n, v in logical.items()}


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


def param_shardings(model, config, mesh, boxed=None, *, stacked: bool = True):
  """NamedShardings of the (unboxed) parameters, from their logical axis names and the rule table.

  ``boxed``: ``abstract_params(model, config)`` when the caller has it already (saves a trace). ``stacked``: in a
  program with members, the member entries with their member axis (False: one member's tree)."""
  boxed = abstract_params(model, config) if boxed is None else boxed
  logical = nn.get_partition_spec(boxed)
  if stacked:
    logical = _stacked_specs(config, logical)
  return nn.logical_to_mesh_sharding(logical, mesh, sharding.logical_axis_rules(config.mesh.logical_axis_rules,
                                                                                 mesh.axis_names))


def init_params(model, config, mesh, rng, shardings=None):
  """Freshly initialised parameters, created sharded (``shardings``: from ``param_shardings`` if not given)."""
  shardings = param_shardings(model, config, mesh) if shardings is None else shardings
  init = init_params_fn(model, config)
  with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
    return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)


def abstract_state_and_shardings(model, config, mesh, optimizer) -> tuple[TrainState, TrainState]:
  """The TrainState as ShapeDtypeStructs, and its shardings: optimizer moments follow their parameters. With
  members: the member entries stacked, the optimizer state over them alone (see the module docstring)."""
  boxed = abstract_params(model, config)
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), nn.meta.unbox(boxed))
  p_shardings = param_shardings(model, config, mesh, boxed)
  replicated = sharding.replicated(mesh)
  k = members.count(config)
  if not k:
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                          opt_state=jax.eval_shape(optimizer.init, params),
                          rng=jax.eval_shape(lambda: jax.random.key(0)))
    opt_shardings = _follow_params(abstract.opt_state, params, p_shardings, replicated)
    return abstract, TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings, rng=replicated)
  stacked = member_names(config, params)
  params = {n: (jax.tree.map(lambda s: jax.ShapeDtypeStruct((k, *s.shape), s.dtype), v) if n in stacked else v)
            for n, v in params.items()}
  trained = {n: params[n] for n in stacked}
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(jax.vmap(optimizer.init), trained),
                        rng=jax.eval_shape(lambda: jax.random.split(jax.random.key(0), k)))
  opt_shardings = _follow_params(abstract.opt_state, trained, {n: p_shardings[n] for n in stacked}, replicated)
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


def create_train_state(model, config, mesh, optimizer, rng, load_towers=None,
                       loaded: tuple[str, ...] = ()) -> tuple[TrainState, TrainState]:
  """A fresh TrainState, created sharded, and its shardings.

  Args:
    model: the Flax model of ``config.stage``.
    config: the run's config.
    mesh: the device mesh.
    optimizer: the optax transformation (``erclap.optim.make_optimizer``).
    rng: the run's base key (split into the init key and the state's step-key base). With members, the shared
      (frozen) parameters are initialised from it; each member's own from its seed (``members.values``).
    load_towers: optional ``load_towers(params, param_shardings) -> params`` that puts pre-trained weights
      in place (``erclap.tower_init.load_pretrained_towers``); it runs before the optimizer state is
      initialised, so moments start from the loaded weights.
    loaded: with members, the top-level parameters ``load_towers`` may put in place (``tower_init.loaded_parts``):
      a member entry among them starts from the loaded weights in every member.

  Returns:
    ``(state, shardings)``: the state and a TrainState of NamedShardings of the same structure.
  """
  shardings = state_shardings(model, config, mesh, optimizer)
  init_rng, state_rng = jax.random.split(rng)
  one = param_shardings(model, config, mesh, stacked=False)
  params = init_params(model, config, mesh, init_rng, one)
  if load_towers is not None:
    params = load_towers(params, one)
  step = sharding.put_global(np.zeros((), np.int32), shardings.step)
  if not members.count(config):
    with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
      opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    state = TrainState(step=step, params=params, opt_state=opt_state,
                       rng=jax.jit(lambda r: r, out_shardings=shardings.rng)(state_rng))
    return state, shardings
  return _member_state(model, config, mesh, optimizer, params, shardings, loaded, step), shardings


def _member_state(model, config, mesh, optimizer, params, shardings, loaded, step) -> TrainState:
  """The state of a program with members (see ``create_train_state``): ``params`` one member's tree (shared
  entries initialised and loaded), each member entry initialised from the member's seed under ``jax.vmap`` (the
  same values ``init_params`` gives a standalone run), loaded entries repeated, the log temperature each member's."""
  k = members.count(config)
  stacked = member_names(config, params)
  keys = [jax.random.split(jax.random.key(seed)) for seed in members.values(config, "seeds")]
  init_keys = jax.random.wrap_key_data(jnp.stack([jax.random.key_data(pair[0]) for pair in keys]))
  rngs = jax.random.wrap_key_data(jnp.stack([jax.random.key_data(pair[1]) for pair in keys]))
  fresh = tuple(n for n in stacked if n not in loaded)
  init = init_params_fn(model, config)
  own = {}
  with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
    if fresh:
      pick = lambda key: {n: v for n, v in nn.meta.unbox(init(key)).items() if n in fresh}
      own = jax.jit(jax.vmap(pick), out_shardings={n: shardings.params[n] for n in fresh})(init_keys)
    for n in stacked:
      if n in loaded:
        own[n] = jax.jit(lambda x: jax.tree.map(lambda a: jnp.broadcast_to(a, (k, *a.shape)), x),
                         out_shardings=shardings.params[n])(params[n])
    if LOG_TEMPERATURE in stacked:  # as the model's init computes it from each member's temperature_init
      own[LOG_TEMPERATURE] = jax.jit(
          lambda: jnp.stack([jnp.asarray(jnp.log(t), jnp.float32) for t in members.values(config, "temperatures")]),
          out_shardings=shardings.params[LOG_TEMPERATURE])()
    opt_state = jax.jit(jax.vmap(optimizer.init), out_shardings=shardings.opt_state)(own)
    rng = jax.jit(lambda r: r, out_shardings=shardings.rng)(rngs)
  return TrainState(step=step, params={n: own.get(n, v) for n, v in params.items()}, opt_state=opt_state, rng=rng)
