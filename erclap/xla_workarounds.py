"""Workarounds for XLA partitioning bugs (and one of JAX's checks): what they avoid, where they are seen, and how to
tell they are fixed.

All were found with jax / jaxlib 0.10.2 on CPU (simulated devices, ``--xla_force_host_platform_device_count``),
with the Shardy partitioner (the default) and with GSPMD (``jax_use_shardy_partitioner=False``) alike.

1. Grouped convolution weight gradient x tensor-axis size  ->  ``batch_local``.

   Symptom: on a mesh whose batch axis and ``tensor`` axis are both > 1, the weight gradient of a grouped
   convolution (``feature_group_count > 1``: wav2vec2's positional convolution), partitioned automatically
   under ``jax.jit``, comes out multiplied by the tensor-axis size. The forward result is right; an ungrouped
   convolution is right; a mesh with only one of the two axes > 1 is right.

   Minimal reproduction (``tests/test_xla_workarounds.py`` keeps it as a canary that fails once it is fixed)::

       mesh = Mesh(devices(2, 2), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2)
       conv = lambda x, w: lax.conv_general_dilated(x, w, (1,), [(2, 1)], dimension_numbers=("NWC", "WIO",
                                                    "NWC"), feature_group_count=16)
       grad = jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2))   # x (4, 16, 32), w (4, 2, 32)
       with jax.set_mesh(mesh):
         jax.jit(grad)(w, device_put(x, P("data")))              # == 2 * jax.jit(grad)(w, x) unsharded

   Workaround: ``batch_local`` runs the op per batch shard inside ``shard_map`` (weights replicated), so no
   automatic partitioning touches it; JAX itself sums the weight cotangent over the batch shards.

2. Batch-row swap / wrong gradient through WavLM's per-head gate on fsdp > 1 and tensor > 1 meshes  ->  the
   activation rules (``erclap.sharding.LOGICAL_AXIS_RULES``, ``activation_*`` rows, applied by
   ``erclap.sharding.constrain`` at the layer boundaries of ``erclap.models``).

   Symptom: on a (data, fsdp, tensor) mesh with fsdp > 1 and tensor > 1 and parameters sharded by the table
   (``embed`` -> fsdp, ``mlp`` / ``heads`` -> tensor), letting XLA propagate the weight shardings into the
   activations gave wrong speech-tower outputs: batch rows in the wrong order after the feature projection,
   and wrong gradients through WavLM's gated relative position bias (a reshape of the hidden dimension into
   heads). The smallest case found is the model itself: the tiny WavLM speech tower with ONE transformer layer
   on a (2, 2, 2) mesh, jitted under ``jax.set_mesh`` with table-sharded parameters, returns half of its
   output elements wrong (max error ~0.9) without the activation pins; the conv stack + feature projection
   alone, or one transformer layer alone, are right. No reproduction on bare ops has been isolated, so there
   is no canary: ``tests/test_xla_workarounds.py`` keeps the one-layer tower (with the pins) equal to one
   device, and ``tests/test_train.py`` compares a (2, 2, 2) train step with pure data parallelism.

   Workaround: every activation is pinned to batch-only sharding (``activation_batch`` -> (data, fsdp), the
   other activation axes replicated). These rows are what keeps the bug away: an override that splits
   activations over ``tensor`` or ``fsdp`` on such a mesh may bring it back; check it against
   ``tests/test_train.py::test_train_step_same_on_fsdp_tensor_mesh_as_data_parallel``.

3. ``jax.vmap`` of a ``shard_map`` whose ``lax.cond`` reads a value that varies over the manual axes and one that
   does not  ->  ``vmapped_shard_maps``.

   Symptom: JAX's check of varying manual axes (``shard_map(..., check_vma=True)``) refuses the batched program
   ("pvary is a invariant->variant collective", or "Primitive gt requires varying manual axes to match"): under
   ``vmap`` the cond's predicate is batched and the cond becomes a select of both branches, whose operands the
   check then finds inconsistently typed. The unbatched program passes the check. The losses shard their rows
   with ``shard_map`` and the RNC loss's backward pass has such a cond (its fast path or its exact one), and a
   program with members (``erclap.members``) vmaps the whole step.

   Minimal reproduction (``tests/test_xla_workarounds.py`` keeps it as a canary that fails once it is fixed)::

       def f(x, w):   # x (16,) sharded over "data", w a scalar
         local = lambda x, w: lax.psum(jnp.sum(lax.cond(jnp.all(x * w > 0), lambda _: x * w,
                                                        lambda _: -x * w, None)), "data")
         return jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P()), out_specs=P(), check_vma=True)(x, w)
       jax.jit(jax.vmap(f, in_axes=(None, 0)))(x, jnp.array([2.0, -1.0]))   # ValueError; check_vma=False: right

   Workaround: the member step traces inside ``vmapped_shard_maps()``, under which ``shard_map_check_vma()`` is
   False for the ``shard_map`` calls of ``erclap.losses`` and ``batch_local`` (the check is a static type check:
   the results are those the unbatched program computes). Outside it (every ordinary run) the check stays on and
   the programs are unchanged: on the RNC joint form with a same-modality weight the check changes the backward
   pass's reduction order in the last bits.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
from jax.sharding import PartitionSpec

from erclap import sharding

_VMAPPED: contextvars.ContextVar[bool] = contextvars.ContextVar("erclap_vmapped_shard_maps", default=False)


@contextlib.contextmanager
def vmapped_shard_maps() -> Iterator[None]:
  """While a program that ``jax.vmap``s ERCLAP's ``shard_map`` calls is traced (workaround 3 above): their check of
  varying manual axes is off."""
  token = _VMAPPED.set(True)
  try:
    yield
  finally:
    _VMAPPED.reset(token)


def shard_map_check_vma() -> bool:
  """The ``check_vma`` of ERCLAP's ``shard_map`` calls now: False inside ``vmapped_shard_maps``, else True."""
  return not _VMAPPED.get()


def batch_local(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``fn(x, *weights)`` run per batch shard (``shard_map``, weights replicated) on the mesh in context.

  For ops whose automatic partitioning is wrong (workaround 1 above: grouped convolutions). ``x`` and the
  result are (B, ...) and batch-sharded over the mesh's batch axes (``sharding.batch_axes``).

  Args:
    fn: ``fn(x, *weights) -> y`` with ``x`` and ``y`` batch-major.

  Returns:
    The wrapped function. Without a mesh in context it is ``fn`` itself; with one, a batch that does not
    split over the mesh's batch shards raises a ValueError (give the model a batch that is a multiple of
    ``sharding.batch_size_divisor(mesh)``).
  """
  def wrapped(x, *weights):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return fn(x, *weights)
    divisor = sharding.batch_size_divisor(mesh)
    if x.shape[0] % divisor:
      raise ValueError(f"batch_local({getattr(fn, '__name__', fn)}): a batch of {x.shape[0]} does not split "
                       f"over the mesh's {divisor} batch shards ({' x '.join(sharding.batch_axes(mesh))}); "
                       f"use a batch size that is a multiple of {divisor}")
    spec = sharding.batch_spec(mesh, x.ndim)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) + (PartitionSpec(),) * len(weights), out_specs=spec,
                         check_vma=shard_map_check_vma())(x, *weights)

  return wrapped
