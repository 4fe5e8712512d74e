"""Activation sharding through the logical-axis table: ``sharding.constrain`` and ``sharding.use_mesh``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from erclap import sharding
from erclap.models import layers

HIDDEN = ("activation_batch", "activation_length", "activation_embed")
BATCH_ONLY = PartitionSpec(("data", "fsdp"), None, None)


def _mesh():
  return sharding.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def _constraint_specs(fn, *args):
  """The PartitionSpecs of every sharding constraint in ``fn``'s jaxpr (nested jaxprs included)."""
  specs = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "sharding_constraint":
        specs.append(eqn.params["sharding"].spec)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            walk(inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return specs


def test_constrain_is_a_no_op_without_a_mesh():
  x = jnp.arange(24.0).reshape(4, 3, 2)
  assert sharding.constrain(x, HIDDEN) is x
  assert _constraint_specs(lambda x: sharding.constrain(x, HIDDEN), x) == []


def test_constrain_gives_batch_only_sharding_under_a_mesh(devices):
  mesh = _mesh()
  f = jax.jit(lambda x: sharding.constrain(x * 2, HIDDEN))
  x = np.arange(64.0, dtype=np.float32).reshape(8, 4, 2)
  for context in (sharding.use_mesh(mesh), jax.set_mesh(mesh)):  # with or without a rules context
    with context:
      assert _constraint_specs(f, x) == [BATCH_ONLY]
      y = f(x)
    np.testing.assert_array_equal(np.asarray(y), 2 * x)
    assert y.sharding.is_equivalent_to(sharding.batch_sharding(mesh, 3), 3)
    # 4 batch shards (data x fsdp) of 2 rows, replicated over tensor.
    assert {s.data.shape for s in y.addressable_shards} == {(2, 4, 2)}


def test_rules_naming_axes_the_mesh_lacks_are_dropped(devices):
  mesh = sharding.make_mesh((4, 2), ("data", "tensor"))
  with sharding.use_mesh(mesh, (("activation_embed", ("fsdp", "tensor")),)):
    specs = _constraint_specs(lambda x: sharding.constrain(x, HIDDEN), np.zeros((8, 4, 2), np.float32))
  assert specs == [PartitionSpec("data", None, "tensor")]


def test_an_override_of_the_activation_rules_reaches_the_model(devices):
  layer = layers.TransformerLayer(32, 4, 64, 1e-5)
  x, mask = np.ones((8, 6, 32), np.float32), np.ones((8, 6), bool)
  params = nn.meta.unbox(jax.jit(layer.init)(jax.random.key(0), x, mask))
  mesh = _mesh()
  # A fresh function per rule set: tracing caches key on the function and the mesh, not on the rules.
  with sharding.use_mesh(mesh):
    default = _constraint_specs(lambda p, x, m: layer.apply(p, x, m)[0], params, x, mask)
  with sharding.use_mesh(mesh, (("activation_batch", None), ("activation_embed", "tensor"))):
    overridden = _constraint_specs(lambda p, x, m: layer.apply(p, x, m)[0], params, x, mask)
  assert len(default) >= 3 and set(default) == {BATCH_ONLY}
  assert len(overridden) == len(default) and set(overridden) == {PartitionSpec(None, None, "tensor")}


def test_use_mesh_sets_and_restores_the_mesh_and_rules(devices):
  mesh = _mesh()
  override = (("activation_batch", "data"),)
  with sharding.use_mesh(mesh, override) as got:
    assert got is mesh and not jax.sharding.get_abstract_mesh().empty
    rules = dict(sharding.rules_in_context(mesh.axis_names))
    assert rules["activation_batch"] == "data" and rules["embed"] == "fsdp"
  assert jax.sharding.get_abstract_mesh().empty
  assert dict(sharding.rules_in_context(mesh.axis_names))["activation_batch"] == ("data", "fsdp")


def test_flax_rules_context_is_honoured_without_use_mesh(devices):
  mesh = _mesh()
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_axis_rules((("activation_batch", "fsdp"),))):
    specs = _constraint_specs(lambda x: sharding.constrain(x, HIDDEN), np.zeros((8, 4, 2), np.float32))
  assert specs == [PartitionSpec("fsdp", None, None)]


def test_constrain_rejects_names_that_do_not_match_the_rank():
  with pytest.raises(ValueError, match=r"name 3 dimensions; the array has shape \(4, 2\)"):
    sharding.constrain(jnp.zeros((4, 2)), HIDDEN)
