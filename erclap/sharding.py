"""Mesh and sharding rules: the one place that knows how arrays map onto devices.

Mesh axes (any subset, in this order by convention):
  * ``data``   – pure data parallelism: batch split, parameters replicated.
  * ``fsdp``   – batch split *and* parameters/optimizer state split (ZeRO-3 style).
  * ``tensor`` – model (tensor) parallelism inside attention / MLP blocks.

Model code never names mesh axes. Parameters carry *logical* axis names (``embed``, ``mlp``,
``heads``, ``kv``, ``vocab``, ``conv_out``, ...) and activations are constrained with logical names too
(``constrain(x, ("activation_batch", "activation_length", "activation_embed"))``). ONE table,
``LOGICAL_AXIS_RULES``, maps both onto mesh axes, and a config may override it
(``config.mesh.logical_axis_rules``) to pick FSDP or tensor parallelism without touching model code.

Callers run a model inside ``use_mesh(mesh, config.mesh.logical_axis_rules)``: it sets the mesh
(``jax.set_mesh``) and the rules that ``constrain`` reads while tracing.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# The mesh axes the rule table below maps onto (``config.mesh.axes`` names some of them).
MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
# Mesh axes over which the global batch is split (in this order).
BATCH_AXIS_NAMES: tuple[str, ...] = ("data", "fsdp")

# Logical parameter / activation axis -> mesh axis (or None = replicated). Order matters for flax:
# the first rule whose mesh axis is still free is used.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Activations: split over the batch only. Besides being the intended layout, the batch-only pins keep
    # weight shardings from propagating into activations, which on fsdp > 1 and tensor > 1 meshes hit an
    # XLA miscompilation (see erclap.xla_workarounds, "batch-row swap").
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    # Parameters.
    ("embed", "fsdp"),        # hidden dimension of weight matrices: sharded by FSDP
    ("mlp", "tensor"),        # feed-forward inner dimension: tensor parallel
    ("heads", "tensor"),      # attention heads: tensor parallel
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("joint", None),          # joint embedding dimension (small): replicated
    ("length", None),
    ("norm", None),
    # The member axis of a program with members (erclap.members): the leading axis of each member's parameters,
    # optimizer state and activations. Replicated by default (every device holds every member); a rule override
    # maps it onto a mesh axis the batch is not split over (("member", "tensor") with mesh.shape (1, 1, N): each
    # device trains K / N members on the whole batch).
    ("member", None),
)
MEMBER_AXIS = "member"


def make_mesh(shape: Sequence[int], axes: Sequence[str], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a device mesh. One entry of ``shape`` may be -1 (= fill with the remaining devices).

  Axes are ``AxisType.Auto`` so that jit propagates shardings automatically (jax >= 0.7 defaults
  ``jax.make_mesh`` to Explicit axes).
  """
  shape, axes = tuple(int(s) for s in shape), tuple(axes)
  if len(shape) != len(axes):
    raise ValueError(f"mesh.shape {shape} and mesh.axes {axes} must have the same length")
  unknown = [a for a in axes if a not in ("data", "fsdp", "tensor")]
  if unknown:
    raise ValueError(f"mesh.axes: unknown axis names {unknown}; use data / fsdp / tensor")
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape {shape}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n % known:
      raise ValueError(f"mesh.shape {shape}: {n} devices are not divisible by {known}")
    shape = tuple(n // known if s == -1 else s for s in shape)
  if math.prod(shape) != n:
    raise ValueError(f"mesh.shape {shape} needs {math.prod(shape)} devices, but {n} are available")
  device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, axes, axis_types=(AxisType.Auto,) * len(axes))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the batch dimension is split over (those of BATCH_AXIS_NAMES the mesh has)."""
  return tuple(a for a in BATCH_AXIS_NAMES if a in mesh.axis_names)


def batch_size_divisor(mesh: Mesh) -> int:
  """Number of batch shards: a global batch must be a multiple of this."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_spec(mesh: Mesh, ndim: int = 1) -> PartitionSpec:
  """PartitionSpec for an array whose leading dimension is the batch."""
  axes = batch_axes(mesh)
  lead = axes if len(axes) > 1 else (axes[0] if axes else None)
  return PartitionSpec(lead, *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(mesh, ndim))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def logical_axis_rules(overrides: Sequence[Sequence] | None = None, mesh_axes: Sequence[str] | None = None):
  """The rule table, with ``overrides`` (pairs of logical name, mesh axis) taking precedence.

  With ``mesh_axes``, mesh axes the mesh does not have are dropped from the rules (a mesh of only
  ``("data",)`` replicates what would be split over fsdp / tensor).
  """
  rules = LOGICAL_AXIS_RULES
  if overrides:
    names = {o[0] for o in overrides}
    rules = tuple((str(a), b) for a, b in overrides) + tuple(r for r in LOGICAL_AXIS_RULES if r[0] not in names)
  return rules if mesh_axes is None else _restrict_to_mesh(rules, mesh_axes)


def _restrict_to_mesh(rules, mesh_axes: Sequence[str]):
  def keep(target):
    if target is None or isinstance(target, str):
      return target if target in mesh_axes else None
    kept = tuple(t for t in target if t in mesh_axes)
    return kept if len(kept) > 1 else (kept[0] if kept else None)

  return tuple((name, keep(target)) for name, target in rules)


def member_mesh_axis(overrides: Sequence[Sequence] | None, mesh_axes: Sequence[str]) -> str | None:
  """The mesh axis the member axis maps onto under the (overridden) rule table, restricted to ``mesh_axes``; None
  when members are replicated."""
  target = dict(logical_axis_rules(overrides, mesh_axes)).get(MEMBER_AXIS)
  if target is None or isinstance(target, str):
    return target
  return tuple(target) if target else None


# The rules ``use_mesh`` sets. Not flax's ``nn.logical_axis_rules`` context: flax applies that to every
# parameter it unboxes, and ``nn.DenseGeneral`` unboxes its kernel at init while still flattened to 2-D
# (the 3 logical names then fail on a rank-2 value). Parameter shardings come from the same table through
# ``nn.logical_to_mesh_sharding(..., logical_axis_rules(overrides, mesh.axis_names))``.
_ACTIVE_RULES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("erclap_axis_rules", default=None)


def rules_in_context(mesh_axes: Sequence[str]):
  """The rules that govern activation sharding now, restricted to ``mesh_axes``: those ``use_mesh`` set,
  else flax's ``nn.logical_axis_rules`` context if one is set, else the default table."""
  rules = _ACTIVE_RULES.get() or nn.get_logical_axis_rules() or LOGICAL_AXIS_RULES
  return _restrict_to_mesh(rules, tuple(mesh_axes))


def logical_spec(logical_axes: Sequence[str | None], mesh_axes: Sequence[str]) -> PartitionSpec:
  """PartitionSpec of an array whose dimensions carry ``logical_axes``, under ``rules_in_context``."""
  return nn.logical_to_mesh_axes(tuple(logical_axes), rules_in_context(mesh_axes))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Pins activation ``x`` to the sharding its logical axis names map to on the mesh in context.

  E.g. ``constrain(x, ("activation_batch", "activation_length", "activation_embed"))`` for (B, T, E)
  hidden states; with the default table that is batch-only sharding over (data, fsdp). Model code calls
  this at layer boundaries; without a mesh in context (``jax.set_mesh`` / ``use_mesh``) it is a no-op.
  The rules are read while tracing (``rules_in_context``).

  Args:
    x: an activation array.
    logical_axes: one logical name (or None = replicated) per dimension of ``x``.

  Returns:
    ``x`` with a sharding constraint (or ``x`` itself without a mesh).
  """
  logical_axes = tuple(logical_axes)
  if len(logical_axes) != x.ndim:
    raise ValueError(f"logical_axes {logical_axes} name {len(logical_axes)} dimensions; the array has shape "
                     f"{x.shape}")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_spec(logical_axes, mesh.axis_names))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, overrides: Sequence[Sequence] | None = None) -> Iterator[Mesh]:
  """Context for tracing, compiling and running a model on ``mesh`` under the (overridden) rule table.

  Sets the mesh (``jax.set_mesh``) and the activation rules (``rules_in_context``) to
  ``logical_axis_rules(overrides, mesh.axis_names)``, the table parameter shardings are built from
  (``nn.logical_to_mesh_sharding``), so one override in ``config.mesh.logical_axis_rules`` reaches both
  parameters and activations (``constrain``). Use it, in place of a bare ``jax.set_mesh``, wherever a model
  is initialised, applied or differentiated under a mesh (train step, evaluation, export, inference)::

      with sharding.use_mesh(mesh, config.mesh.logical_axis_rules):
        state, metrics = train_step(state, batch)

  The rules take effect when a function is traced. ``jax.jit`` (and ``jax.make_jaxpr``) key their trace cache
  on the function and the mesh in context, not on these rules: one function object called under two rule
  sets keeps its first trace, so build the jitted function per configuration (as the trainer does: one
  config, one set of rules).

  Args:
    mesh: the device mesh (``make_mesh``).
    overrides: pairs (logical name, mesh axis or axes or None) that take precedence over
      ``LOGICAL_AXIS_RULES``; typically ``config.mesh.logical_axis_rules``.

  Yields:
    ``mesh``.
  """
  token = _ACTIVE_RULES.set(logical_axis_rules(overrides, mesh.axis_names))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _ACTIVE_RULES.reset(token)


def put_global(value, target: jax.sharding.Sharding) -> jax.Array:
  """A host value that every process holds in full -> a global array with sharding ``target``.

  Unlike ``jax.device_put`` this also works when ``target`` spans other processes' devices (multi-host):
  each process fills only its addressable shards.
  """
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, target, lambda index: value[index])


def to_host(tree):
  """Global arrays -> numpy on every process (an all-gather across processes when multi-host)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
