"""Mesh and sharding rules: the one place that knows how arrays map onto devices.

Mesh axes (any subset, in this order by convention):
  * ``data``   – pure data parallelism: batch split, parameters replicated.
  * ``fsdp``   – batch split *and* parameters/optimizer state split (ZeRO-3 style).
  * ``tensor`` – model (tensor) parallelism inside attention / MLP blocks.

Model code never names mesh axes. Parameters carry *logical* axis names (``embed``, ``mlp``,
``heads``, ``kv``, ``vocab``, ``conv_out``, ...); ``LOGICAL_AXIS_RULES`` maps them to mesh axes, and a
config may override the table (``config.mesh.logical_axis_rules``) to pick FSDP or tensor parallelism
without touching model code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Mesh axes over which the global batch is split (in this order).
BATCH_AXIS_NAMES: tuple[str, ...] = ("data", "fsdp")

# Logical parameter / activation axis -> mesh axis (or None = replicated). Order matters for flax:
# the first rule whose mesh axis is still free is used.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
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
)


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
  if mesh_axes is None:
    return rules

  def keep(target):
    if target is None or isinstance(target, str):
      return target if target in mesh_axes else None
    kept = tuple(t for t in target if t in mesh_axes)
    return kept if len(kept) > 1 else (kept[0] if kept else None)

  return tuple((name, keep(target)) for name, target in rules)


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
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)
