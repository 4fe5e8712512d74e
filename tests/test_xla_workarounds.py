"""The XLA partitioning bugs behind ``erclap.xla_workarounds``: canaries that fail once upstream fixes them,
and checks that the workarounds give the unsharded result."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from erclap import models, sharding, xla_workarounds
from erclap.models.speech import SpeechEncoder

GROUPS, KERNEL = 16, 4


def _data_tensor_mesh(devices):
  return Mesh(np.asarray(devices[:4]).reshape(2, 2), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2)


def _grouped_conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1,), [(KERNEL // 2, KERNEL // 2 - 1)],
                                      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=GROUPS)


def _conv_inputs():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 16, 32)).astype(np.float32)
  w = rng.normal(size=(KERNEL, 32 // GROUPS, 32)).astype(np.float32)
  return x, w


def _weight_grad(conv):
  return jax.grad(lambda w, x: jnp.sum(jnp.sin(conv(x, w))))


def _sharded_weight_grad(conv, mesh, x, w):
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    return np.asarray(jax.jit(_weight_grad(conv))(jax.device_put(w, NamedSharding(mesh, PartitionSpec())), xs))


def test_grouped_conv_weight_gradient_bug_is_still_there(devices):
  """Canary: when this fails, XLA partitions grouped convolutions right; drop ``xla_workarounds.batch_local``."""
  mesh = _data_tensor_mesh(devices)
  x, w = _conv_inputs()
  want = np.asarray(jax.jit(_weight_grad(_grouped_conv))(w, x))
  got = _sharded_weight_grad(_grouped_conv, mesh, x, w)
  if np.allclose(got, want, rtol=1e-4, atol=1e-5):
    pytest.fail(f"jax {jax.__version__}: the grouped convolution's weight gradient is now right under automatic "
                "partitioning: the workaround erclap.xla_workarounds.batch_local (and its use in "
                "models/speech.py PositionalConv) can be dropped")
  # The known symptom: multiplied by the tensor-axis size (anything else is a different bug).
  np.testing.assert_allclose(got, mesh.shape["tensor"] * want, rtol=1e-4, atol=1e-5)


def test_batch_local_gives_the_unsharded_result(devices):
  mesh = _data_tensor_mesh(devices)
  x, w = _conv_inputs()
  conv = lambda x, w: xla_workarounds.batch_local(_grouped_conv)(x, w)
  want = np.asarray(jax.jit(_weight_grad(_grouped_conv))(w, x))
  np.testing.assert_allclose(_sharded_weight_grad(conv, mesh, x, w), want, rtol=1e-4, atol=1e-5)
  with jax.set_mesh(mesh):
    y = jax.jit(conv)(jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))), w)
  np.testing.assert_allclose(np.asarray(y), np.asarray(_grouped_conv(x, w)), rtol=1e-5, atol=1e-5)
  assert y.sharding.is_equivalent_to(sharding.batch_sharding(mesh, 3), 3)


def test_batch_local_is_the_plain_op_without_a_mesh():
  x, w = _conv_inputs()
  jaxpr = str(jax.make_jaxpr(xla_workarounds.batch_local(_grouped_conv))(x, w))
  assert "shard_map" not in jaxpr and "conv_general_dilated" in jaxpr
  np.testing.assert_array_equal(xla_workarounds.batch_local(_grouped_conv)(x, w), _grouped_conv(x, w))


def test_batch_local_rejects_a_batch_that_does_not_split(devices):
  mesh = sharding.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  x, w = _conv_inputs()
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="a batch of 6 does not split over the mesh's 4 batch"):
    xla_workarounds.batch_local(_grouped_conv)(np.concatenate([x, x[:2]]), w)


@pytest.mark.slow
def test_activation_rules_keep_the_fsdp_tensor_miscompilation_away(devices):
  """Guard for workaround 2 (no bare-ops reproduction): a one-layer WavLM speech tower on a (2, 2, 2) mesh with
  table-sharded parameters equals one device, values and gradients (without the activation pins its output
  was wrong)."""
  arch = dataclasses.replace(models.speech_preset("tiny", "wavlm"), num_layers=1)
  tower = SpeechEncoder(arch)
  rng = np.random.default_rng(0)
  audio, mask = rng.normal(size=(8, 8000)).astype(np.float32), np.ones((8, 8000), bool)
  boxed = jax.jit(tower.init)(jax.random.key(0), audio, mask)["params"]
  params = nn.meta.unbox(boxed)
  mesh = sharding.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh,
                                                sharding.logical_axis_rules(None, mesh.axis_names))
  probe = jnp.sin(jnp.arange(8 * arch.num_frames(8000) * arch.hidden_size, dtype=jnp.float32))

  def loss(p, a, m):
    hidden = tower.apply({"params": p}, a, m)[0]
    return jnp.sum(hidden.reshape(-1) * probe), hidden

  want_grads, want = jax.jit(jax.grad(loss, has_aux=True))(params, audio, mask)
  with sharding.use_mesh(mesh):
    args = (jax.device_put(params, param_shardings),
            *(jax.device_put(v, sharding.batch_sharding(mesh, 2)) for v in (audio, mask)))
    got_grads, got = jax.jit(jax.grad(loss, has_aux=True))(*args)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5 * scale),
               got_grads, want_grads)


def _vmapped_cond_in_shard_map(devices, check_vma: bool):
  mesh = Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))

  def f(x, w):
    def local(x, w):
      return jax.lax.psum(jnp.sum(jax.lax.cond(jnp.all(x * w > 0), lambda _: x * w, lambda _: -x * w, None)), "data")
    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec("data"), PartitionSpec()),
                         out_specs=PartitionSpec(), check_vma=check_vma)(x, w)

  with jax.set_mesh(mesh):
    return np.asarray(jax.jit(jax.vmap(f, in_axes=(None, 0)))(jnp.arange(1.0, 17.0), jnp.asarray([2.0, -1.0])))


def test_vmapped_shard_map_check_bug_is_still_there(devices):
  """Canary: when this fails, JAX checks a vmapped shard_map with a cond right; drop
  ``xla_workarounds.vmapped_shard_maps``."""
  try:
    _vmapped_cond_in_shard_map(devices, check_vma=True)
  except ValueError as e:
    assert "vary" in str(e)  # the known symptom: the check of varying manual axes refuses the program
  else:
    pytest.fail(f"jax {jax.__version__}: a vmapped shard_map with a cond passes the varying-axes check now: the "
                "workaround erclap.xla_workarounds.vmapped_shard_maps (the member step's) can be dropped")
  # Without the check the program computes what the unbatched one does: sum(|2x|) and sum(|-x|) over 1..16.
  np.testing.assert_allclose(_vmapped_cond_in_shard_map(devices, check_vma=False), [272.0, 136.0])
  assert xla_workarounds.shard_map_check_vma()
  with xla_workarounds.vmapped_shard_maps():
    assert not xla_workarounds.shard_map_check_vma()
  assert xla_workarounds.shard_map_check_vma()
