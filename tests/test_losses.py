"""Losses against independent references: naive float64 loops, naive dense jnp versions, hand computations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from erclap import losses, metrics, sharding
from erclap.configs import default as default_config
from erclap.losses import rnc

# --------------------------------------------------------------------------- references


def _np_logits(a, c, tau, sim):
  a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
  if sim == "cosine":
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    return a @ c.T / tau
  return -np.linalg.norm(a[:, None] - c[None], axis=-1) / tau


def _np_dist(ya, yc, dist):
  ya = np.asarray(ya, np.float64).reshape(len(ya), -1)
  yc = np.asarray(yc, np.float64).reshape(len(yc), -1)
  diff = ya[:, None] - yc[None]
  return np.abs(diff).sum(-1) if dist == "l1" else np.sqrt((diff ** 2).sum(-1))


def naive_rnc(a, c, ya, yc, tau, sim="cosine", dist="l1", excl=False):
  """The definition, with explicit loops over i, j and k, in float64."""
  z, d = _np_logits(a, c, tau, sim), _np_dist(ya, yc, dist)
  total, count = 0.0, 0
  for i in range(z.shape[0]):
    for j in range(z.shape[1]):
      if excl and i == j:
        continue
      terms = [np.exp(z[i, k]) for k in range(z.shape[1]) if d[i, k] >= d[i, j] and not (excl and k == i)]
      total += -z[i, j] + np.log(np.sum(terms))
      count += 1
  return total / count


def dense_rnc_jnp(a, c, ya, yc, tau, sim="cosine", dist="l1", excl=False):
  """O(N^3) jnp version (dense masks) for jax.grad references."""
  if sim == "cosine":
    a = a / jnp.linalg.norm(a, axis=1, keepdims=True)
    c = c / jnp.linalg.norm(c, axis=1, keepdims=True)
    z = a @ c.T / tau
  else:
    z = -jnp.sqrt(jnp.sum((a[:, None] - c[None]) ** 2, -1)) / tau
  ya, yc = ya.reshape(len(ya), -1), yc.reshape(len(yc), -1)
  d = jnp.abs(ya[:, None] - yc[None]).sum(-1) if dist == "l1" else jnp.sqrt(((ya[:, None] - yc[None]) ** 2).sum(-1))
  n, m = z.shape
  eye = jnp.eye(n, m, dtype=bool) if excl else jnp.zeros((n, m), bool)
  mask = (d[:, None, :] >= d[:, :, None]) & ~eye[:, None, :]          # [i, j, k]
  lse = jax.nn.logsumexp(jnp.where(mask, z[:, None, :], -jnp.inf), axis=-1)
  pair = jnp.where(eye, 0.0, lse - z)
  return jnp.sum(pair) / (n * m - (n if excl else 0))


def _data(seed, n, dim=8, levels=4, label_dim=2, m=None):
  rng = np.random.default_rng(seed)
  m = n if m is None else m
  a = rng.normal(size=(n, dim)).astype(np.float32)
  c = rng.normal(size=(m, dim)).astype(np.float32)
  # labels on a coarse grid: many ties
  ya = (1.0 + rng.integers(0, levels, size=(n, label_dim)) * 1.5).astype(np.float32)
  yc = (1.0 + rng.integers(0, levels, size=(m, label_dim)) * 1.5).astype(np.float32)
  return a, c, ya, yc


# --------------------------------------------------------------------------- RNC values


@pytest.mark.slow
# Every pair of settings of (label_dim, exclude_self, similarity) in 4 cases (each call compiles; both label
# distances run in each).
@pytest.mark.parametrize(("label_dim", "excl", "sim"), [(1, False, "cosine"), (1, True, "neg_l2"),
                                                       (2, False, "neg_l2"), (2, True, "cosine")])
def test_rnc_matches_naive_loops(sim, excl, label_dim):
  n = 24 if label_dim == 1 else 29
  a, c, ya, yc = _data(label_dim + 2 * excl, n, label_dim=label_dim, m=n if excl else n + 3)
  if excl:
    yc = ya
  for dist in ("l1", "l2"):
    y1, y2 = (ya[:, 0], yc[:, 0]) if label_dim == 1 else (ya, yc)
    got = losses.rnc_loss(a, c, y1, y2, temperature=0.3, similarity=sim, label_distance=dist, exclude_self=excl)
    ref = naive_rnc(a, c, y1, y2, 0.3, sim, dist, excl)
    np.testing.assert_allclose(float(got), ref, rtol=2e-5)


def test_rnc_n64_and_continuous_labels():
  a, c, ya, yc = _data(7, 64, levels=3)
  np.testing.assert_allclose(float(losses.rnc_loss(a, c, ya, yc, temperature=0.1)),
                             naive_rnc(a, c, ya, yc, 0.1), rtol=2e-5)
  rng = np.random.default_rng(8)
  y = rng.uniform(1, 7, size=(64, 2)).astype(np.float32)
  np.testing.assert_allclose(float(losses.rnc_loss(a, c, y, y, temperature=0.1)),
                             naive_rnc(a, c, y, y, 0.1), rtol=2e-5)


def test_rnc_hand_computed_three_items():
  # Orthogonal unit vectors: z_ij = [i == j] / tau with tau = 1. Labels 1, 2, 4 (1-D, L1).
  e = np.eye(3, dtype=np.float32)
  y = np.array([1.0, 2.0, 4.0], np.float32)
  # d = [[0,1,3],[1,0,2],[3,2,0]]. Row 0: j=0 -> all three: log(e+2); j=1 -> {1,2}: log 2; j=2 -> {2}: 0.
  # Row 1: j=1 -> log(e+2); j=0 (d=1) -> {0,2}: log 2; j=2 (d=2) -> {2}: 0. Row 2: j=2 -> log(e+2);
  # j=1 (d=2) -> {0,1}: log 2; j=0 (d=3) -> {0}: 0. The -z terms sum to -3.
  expected = (3 * np.log(np.e + 2) + 3 * np.log(2) - 3) / 9
  got = losses.rnc_loss(e, e, y, y, temperature=1.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  # ties are in the denominator: with labels 1, 2, 0 row 0 has d = [0, 1, 1].
  y = np.array([1.0, 2.0, 0.0], np.float32)
  z = np.eye(3)
  d = np.abs(y[:, None] - y[None])
  ref = np.mean([-z[i, j] + np.log(np.exp(z[i][d[i] >= d[i, j]]).sum()) for i in range(3) for j in range(3)])
  np.testing.assert_allclose(float(losses.rnc_loss(e, e, y, y, temperature=1.0)), ref, rtol=1e-6)


def test_rnc_permutation_invariant_and_row_blocks():
  a, c, ya, yc = _data(3, 40)
  full = losses.rnc_loss(a, c, ya, yc, temperature=0.2)
  p = np.random.default_rng(0).permutation(40)
  q = np.random.default_rng(1).permutation(40)
  np.testing.assert_allclose(float(losses.rnc_loss(a[p], c[q], ya[p], yc[q], temperature=0.2)), float(full),
                             rtol=1e-5)
  for block in (7, 8, 40):
    np.testing.assert_allclose(float(losses.rnc_loss(a, c, ya, yc, temperature=0.2, row_block=block)),
                               float(full), rtol=1e-5)


@pytest.mark.slow
def test_rnc_gradients_match_dense_jnp():
  a, c, ya, yc = _data(4, 26, m=31)
  for sim in ("cosine", "neg_l2"):
    for block in (None, 6):
      def f(a, c, t, sim=sim, block=block):
        return losses.rnc_loss(a, c, ya, yc, temperature=t, similarity=sim, row_block=block)
      # Under jit: one compile each instead of an eager dispatch per primitive (half the time on a CPU).
      g = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(a, c, 0.25)
      r = jax.jit(jax.grad(lambda a, c, t, sim=sim: dense_rnc_jnp(a, c, ya, yc, t, sim), argnums=(0, 1, 2)))(
          a, c, 0.25)
      for x, y in zip(g, r, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-5)
  a2, _, y2, _ = _data(5, 20)
  c2 = a2 + 0.1 * np.random.default_rng(0).normal(size=a2.shape).astype(np.float32)
  g = jax.grad(lambda c: losses.rnc_loss(a2, c, y2, y2, temperature=0.2, exclude_self=True))(c2)
  r = jax.grad(lambda c: dense_rnc_jnp(a2, c, y2, y2, 0.2, excl=True))(c2)
  np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-4, atol=1e-5)


@pytest.mark.slow
def test_small_temperature_exact_and_finite():
  # tau = 0.01 with cosine: logit range 200 > the cumsum path's bound, so the log-space scan runs.
  a, c, ya, yc = _data(6, 30)
  for t in (0.01, 0.005):
    got = losses.rnc_loss(a, c, ya, yc, temperature=t)
    np.testing.assert_allclose(float(got), naive_rnc(a, c, ya, yc, t), rtol=2e-5)
    g = jax.jit(jax.grad(lambda a, c, t=t: losses.rnc_loss(a, c, ya, yc, temperature=t), argnums=(0, 1)))(a, c)
    r = jax.jit(jax.grad(lambda a, c, t=t: dense_rnc_jnp(a, c, ya, yc, t), argnums=(0, 1)))(a, c)
    for x, y in zip(g, r, strict=True):
      assert np.all(np.isfinite(np.asarray(x)))
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_bf16_inputs_accumulate_in_float32():
  a, c, ya, _ = _data(9, 32, dim=16)
  a16, c16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(c, jnp.bfloat16)
  got = losses.cross_modal_rnc_loss(a16, c16, ya, temperature=0.05)
  assert got.dtype == jnp.float32
  ref = naive_rnc(np.asarray(a16, np.float32), np.asarray(c16, np.float32), ya, ya, 0.05)
  ref2 = naive_rnc(np.asarray(c16, np.float32), np.asarray(a16, np.float32), ya, ya, 0.05)
  np.testing.assert_allclose(float(got), 0.5 * (ref + ref2), rtol=1e-5)
  g = jax.grad(lambda s: losses.cross_modal_rnc_loss(s, c16, ya, temperature=0.05))(a16)
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


def test_ordering_is_exact_in_every_regime():
  """The packed-key sort: continuous labels (bucket repair passes) and a bucket that mixes a large tie group
  with a nearby distinct value (repair gives up, exact comparator sort)."""
  rng = np.random.default_rng(0)
  cases = [rng.uniform(1, 7, size=(300, 2)).astype(np.float32)]
  y = (1.0 + rng.integers(0, 2, size=(300, 1)) * 2.0).astype(np.float32)
  y[::7] += np.float32(2.0 ** -18)   # distinct from the ties by far less than a bucket
  cases.append(y)
  for y in cases:
    d = rnc._label_distance(jnp.asarray(y), jnp.asarray(y), "l1")
    ds, perm = jax.jit(rnc._sort_rows_by_distance)(d)
    dn = np.asarray(d)
    np.testing.assert_array_equal(np.asarray(ds), np.sort(dn, axis=1))
    np.testing.assert_array_equal(np.take_along_axis(dn, np.asarray(perm), 1), np.sort(dn, axis=1))
    assert np.all(np.sort(np.asarray(perm), axis=1) == np.arange(300))
    a = rng.normal(size=(300, 4)).astype(np.float32)
    ref = dense_rnc_jnp(jnp.asarray(a), jnp.asarray(a[::-1].copy()), jnp.asarray(y), jnp.asarray(y), 0.2)
    got = losses.rnc_loss(a, a[::-1].copy(), y, y, temperature=0.2)
    np.testing.assert_allclose(float(got), float(ref), rtol=2e-5)


# --------------------------------------------------------------------------- cross-modal, sharded


def test_cross_modal_is_mean_of_directions():
  s, t, y, _ = _data(11, 25)
  got = losses.cross_modal_rnc_loss(s, t, y, temperature=0.1, label_distance="l2")
  ref = 0.5 * (naive_rnc(s, t, y, y, 0.1, dist="l2") + naive_rnc(t, s, y, y, 0.1, dist="l2"))
  np.testing.assert_allclose(float(got), ref, rtol=2e-5)
  blocked = losses.cross_modal_rnc_loss(s, t, y, temperature=0.1, label_distance="l2", row_block=4)
  np.testing.assert_allclose(float(blocked), ref, rtol=2e-5)


def _sharded_vs_plain(fn, mesh, args, n_grads=2):
  shardings = tuple(sharding.batch_sharding(mesh, np.ndim(x)) for x in args)
  placed = tuple(jax.device_put(x, s) for x, s in zip(args, shardings, strict=True))
  f_mesh = jax.jit(jax.value_and_grad(lambda *xs: fn(*xs, mesh=mesh), argnums=tuple(range(n_grads))))
  f_plain = jax.jit(jax.value_and_grad(lambda *xs: fn(*xs, mesh=None), argnums=tuple(range(n_grads))))
  (v1, g1), (v2, g2) = f_mesh(*placed), f_plain(*args)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  for x, y in zip(g1, g2, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  return float(v1)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [((8,), ("data",)), ((2, 2, 2), ("data", "fsdp", "tensor"))])
def test_sharded_equals_unsharded(devices, mesh_shape):
  mesh = sharding.make_mesh(*mesh_shape)
  s, t, y, _ = _data(12, 32)
  cid = np.random.default_rng(0).integers(0, 3, size=32).astype(np.int32)
  for kw in ({}, {"row_block": 3}, {"exclude_self": True, "similarity": "neg_l2"}):
    fn = functools.partial(losses.cross_modal_rnc_loss, temperature=0.1, **kw)
    v = _sharded_vs_plain(fn, mesh, (s, t, y))
    if not kw:
      np.testing.assert_allclose(v, 0.5 * (naive_rnc(s, t, y, y, 0.1) + naive_rnc(t, s, y, y, 0.1)), rtol=2e-5)
  _sharded_vs_plain(lambda s, t, mesh: losses.infonce_loss(s, t, temperature=0.07, mesh=mesh), mesh, (s, t))
  _sharded_vs_plain(lambda s, t, c, mesh: losses.supcon_loss(s, t, c, temperature=0.07, mesh=mesh), mesh,
                    (s, t, cid))
  f = np.random.default_rng(1).normal(size=(32, 3)).astype(np.float32)
  _sharded_vs_plain(lambda f, y, mesh: losses.pairwise_ranking_loss(f, y, margin=0.5, scale=0.7, mesh=mesh),
                    mesh, (f, np.concatenate([y, y[:, :1]], 1)), n_grads=1)


def test_sharded_learnable_temperature_gradient(devices):
  mesh = sharding.make_mesh((8,), ("data",))
  s, t, y, _ = _data(13, 16)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
  g_mesh = jax.jit(jax.grad(lambda lt, s, t, y: losses.cross_modal_rnc_loss(s, t, y, temperature=jnp.exp(lt),
                                                                           mesh=mesh)))(
      jnp.log(0.07), put(s), put(t), put(y))
  g = jax.grad(lambda lt: dense_rnc_jnp(s, t, y, y, jnp.exp(lt)) / 2 + dense_rnc_jnp(t, s, y, y, jnp.exp(lt)) / 2)(
      jnp.log(0.07))
  np.testing.assert_allclose(float(g_mesh), float(g), rtol=1e-4)


# --------------------------------------------------------------------------- InfoNCE, SupCon


def test_infonce_against_definition():
  s, t, _, _ = _data(14, 20)
  z = _np_logits(s, t, 0.07, "cosine")
  ls = z - np.log(np.exp(z).sum(1, keepdims=True))
  lt = z.T - np.log(np.exp(z.T).sum(1, keepdims=True))
  ref = -0.5 * (np.mean(np.diag(ls)) + np.mean(np.diag(lt)))
  np.testing.assert_allclose(float(losses.infonce_loss(s, t, temperature=0.07)), ref, rtol=1e-5)


def naive_supcon(s, t, ids, tau, sim="cosine"):
  total = 0.0
  for a, c in ((s, t), (t, s)):
    z = _np_logits(a, c, tau, sim)
    for i in range(len(a)):
      logp = z[i] - np.log(np.sum(np.exp(z[i])))
      pos = [j for j in range(len(c)) if ids[j] == ids[i]]
      total += -np.mean([logp[j] for j in pos]) / len(a)
  return total / 2


def naive_infonce(s, t, tau, sim):
  total = 0.0
  for a, c in ((s, t), (t, s)):
    z = _np_logits(a, c, tau, sim)
    for i in range(len(a)):
      total += -(z[i, i] - np.log(np.sum([np.exp(z[i, k]) for k in range(len(c))]))) / len(a)
  return total / 2


def test_infonce_and_supcon_similarities():
  s, t, _, _ = _data(19, 12)
  s, t = 2.0 * s, 0.5 * t     # neg_l2 acts on the raw embeddings: their scale matters, unlike cosine
  ids = np.random.default_rng(4).integers(0, 3, size=12).astype(np.int32)
  for kw, sim in (({"similarity": "neg_l2"}, "neg_l2"), ({}, "cosine")):   # default: cosine
    both = jax.jit(lambda s, t, c, kw=kw: (losses.infonce_loss(s, t, temperature=0.5, **kw),
                                           losses.supcon_loss(s, t, c, temperature=0.5, **kw)))
    nce, sup = both(s, t, ids)
    np.testing.assert_allclose(float(nce), naive_infonce(s, t, 0.5, sim), rtol=1e-5)
    np.testing.assert_allclose(float(sup), naive_supcon(s, t, ids, 0.5, sim), rtol=1e-5)


def test_supcon_against_naive_and_classes_from_labels():
  s, t, _, _ = _data(15, 24)
  ids = np.random.default_rng(3).integers(0, 4, size=24).astype(np.int32)
  np.testing.assert_allclose(float(losses.supcon_loss(s, t, ids, temperature=0.1)), naive_supcon(s, t, ids, 0.1),
                             rtol=1e-5)
  labels = np.array([[1.0, 1.0, 4], [7.0, 7.0, 4], [3.0, 5.5, 4], [2.99, 5.01, 1], [0.0, 9.0, 1]], np.float32)
  # 3 bins over [1, 7]: [1, 3) -> 0, [3, 5) -> 1, [5, 7] -> 2; id = bin(arousal) * 3 + bin(valence)
  np.testing.assert_array_equal(np.asarray(losses.classes_from_labels(labels, 3)), [0, 8, 5, 2, 2])
  # all distinct classes: supcon equals InfoNCE
  np.testing.assert_allclose(float(losses.supcon_loss(s, t, np.arange(24, dtype=np.int32), temperature=0.1)),
                             float(losses.infonce_loss(s, t, temperature=0.1)), rtol=1e-5)


def test_get_clap_loss_dispatch():
  s, t, y, _ = _data(16, 12, label_dim=3)
  batch = {"labels": y, "class_id": np.full((12,), -1, np.int32)}
  opts = {"similarity": "cosine", "label_distance": "l1", "rank_labels": ("valence",), "row_block": 0,
          "supcon_bins": 2}
  got = losses.get_clap_loss("rnc")(s, t, batch, temperature=0.1, mesh=None, options=opts)
  ref = 0.5 * (naive_rnc(s, t, y[:, 1], y[:, 1], 0.1) + naive_rnc(t, s, y[:, 1], y[:, 1], 0.1))
  np.testing.assert_allclose(float(got), ref, rtol=2e-5)
  got = losses.get_clap_loss("supcon")(s, t, batch, temperature=0.1, mesh=None, options=opts)
  ids = np.asarray(losses.classes_from_labels(y, 2))
  np.testing.assert_allclose(float(got), naive_supcon(s, t, ids, 0.1), rtol=1e-5)
  batch["class_id"] = np.arange(12, dtype=np.int32)
  got = losses.get_clap_loss("supcon")(s, t, batch, temperature=0.1, mesh=None, options=opts)
  np.testing.assert_allclose(float(got), float(losses.infonce_loss(s, t, temperature=0.1)), rtol=1e-5)
  got = losses.get_clap_loss("infonce")(s, t, batch, temperature=0.1, mesh=None, options=opts)
  np.testing.assert_allclose(float(got), float(losses.infonce_loss(s, t, temperature=0.1)), rtol=1e-6)
  with pytest.raises(ValueError, match="loss"):
    losses.get_clap_loss("triplet")
  with pytest.raises(ValueError, match="rank_labels"):
    losses.get_clap_loss("rnc")(s, t, batch, temperature=0.1, mesh=None, options={"rank_labels": ("joy",)})


# --------------------------------------------------------------------------- joint 2N forms


def naive_joint_rnc(s, t, y, tau, sim="cosine", dist="l1"):
  """The joint definition: the 2N rows [s; t], labels [y; y], every ordered pair i != j, k != i (loops)."""
  x, y2 = np.concatenate([s, t]), np.concatenate([y, y])
  return naive_rnc(x, x, y2, y2, tau, sim, dist, excl=True)


def naive_joint_contrastive(s, t, tau, sim, ids=None):
  """NT-Xent (ids None: the positive of row i is its partner i +- N) or SupCon (positives: the other rows with
  the same id) over the 2N rows [s; t], the softmax over the other 2N - 1 rows; mean over the 2N rows."""
  x = np.concatenate([s, t])
  z = _np_logits(x, x, tau, sim)
  m = len(x)
  total = 0.0
  for i in range(m):
    lse = np.log(np.sum([np.exp(z[i, k]) for k in range(m) if k != i]))
    if ids is None:
      pos = [(i + m // 2) % m]
    else:
      ids2 = np.concatenate([ids, ids])
      pos = [j for j in range(m) if j != i and ids2[j] == ids2[i]]
    total += -np.mean([z[i, j] - lse for j in pos]) / m
  return total


def _jnp_joint_logits(s, t, tau, sim):
  x = jnp.concatenate([s, t])
  eye = jnp.eye(len(x), dtype=bool)
  if sim == "cosine":
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T / tau, eye
  sq = jnp.sum((x[:, None] - x[None]) ** 2, -1)
  return -jnp.sqrt(jnp.where(eye, 1.0, sq)) / tau, eye     # the diagonal is excluded; keep its sqrt finite


def dense_joint_rnc_jnp(s, t, y, tau, sim="cosine"):
  """O(N^3) jnp joint RNC (dense [i, j, k] masks, L1 label distance) for jax.grad references."""
  z, eye = _jnp_joint_logits(s, t, tau, sim)
  y2 = jnp.concatenate([y, y]).reshape(len(z), -1)
  d = jnp.abs(y2[:, None] - y2[None]).sum(-1)
  mask = (d[:, None, :] >= d[:, :, None]) & ~eye[:, None, :]
  lse = jax.nn.logsumexp(jnp.where(mask, z[:, None, :], -jnp.inf), axis=-1)
  return jnp.sum(jnp.where(eye, 0.0, lse - z)) / (len(z) * (len(z) - 1))


def dense_joint_contrastive_jnp(s, t, tau, sim, ids=None):
  z, eye = _jnp_joint_logits(s, t, tau, sim)
  m = len(z)
  if ids is None:
    pos = jnp.roll(jnp.eye(m, dtype=bool), m // 2, axis=1)
  else:
    ids2 = jnp.concatenate([ids, ids])
    pos = (ids2[:, None] == ids2[None]) & ~eye
  logp = z - jax.nn.logsumexp(jnp.where(eye, -jnp.inf, z), axis=1, keepdims=True)
  return jnp.mean(-jnp.sum(jnp.where(pos, logp, 0.0), axis=1) / jnp.sum(pos, axis=1))


def test_joint_rnc_values_and_gradients():
  """Values against the naive loops and gradients against the dense jnp version, labels with many ties."""
  s, t, y, _ = _data(21, 6, levels=2)
  for sim, dist, block, labels in (("cosine", "l1", None, y), ("neg_l2", "l2", 4, y[:, 0])):
    def f(s, t, tau, sim=sim, dist=dist, block=block, labels=labels):
      return losses.cross_modal_rnc_loss(s, t, labels, temperature=tau, similarity=sim, label_distance=dist,
                                         row_block=block, joint=True)
    v, g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(s, t, 0.4)
    np.testing.assert_allclose(float(v), naive_joint_rnc(s, t, labels, 0.4, sim, dist), rtol=2e-5)
    if dist == "l1":
      r = jax.jit(jax.grad(lambda s, t, tau, sim=sim: dense_joint_rnc_jnp(s, t, y, tau, sim), argnums=(0, 1, 2)))(
          s, t, 0.4)
      for x, z in zip(g, r, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(z), rtol=2e-4, atol=1e-5)
  # hand-computed: N = 2, s = t = orthogonal unit vectors e0, e1, labels 1 and 2, tau = 1. Rows 0..3 are
  # e0, e1, e0, e1 with labels 1, 2, 1, 2. Row 0: z to rows 1, 2, 3 = 0, 1, 0; d = 1, 0, 1. Pair (0, 2):
  # -1 + log(e + 2); pairs (0, 1), (0, 3): log 2 each. Every row is alike by symmetry.
  e = np.eye(2, dtype=np.float32)
  expected = (-1 + np.log(np.e + 2) + 2 * np.log(2)) / 3
  got = jax.jit(functools.partial(losses.cross_modal_rnc_loss, temperature=1.0, joint=True))(
      e, e, np.array([1.0, 2.0], np.float32))
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_joint_infonce_and_supcon_against_naive():
  s, t, _, _ = _data(22, 6)
  ids = np.array([0, 1, 0, 2, 1, 0], np.int32)
  distinct = np.arange(6, dtype=np.int32)
  for sim in ("cosine", "neg_l2"):
    def got(s, t, sim=sim):
      return jnp.stack([losses.infonce_loss(s, t, temperature=0.5, similarity=sim, joint=True),
                        losses.supcon_loss(s, t, ids, temperature=0.5, similarity=sim, joint=True),
                        losses.supcon_loss(s, t, distinct, temperature=0.5, similarity=sim, joint=True)])

    def ref(s, t, sim=sim):
      return jnp.stack([dense_joint_contrastive_jnp(s, t, 0.5, sim), dense_joint_contrastive_jnp(s, t, 0.5, sim, ids)])

    vals, jac = jax.jit(lambda s, t, f=got: (f(s, t), jax.jacrev(f, (0, 1))(s, t)))(s, t)
    np.testing.assert_allclose(np.asarray(vals[:2]), [naive_joint_contrastive(s, t, 0.5, sim),
                                                      naive_joint_contrastive(s, t, 0.5, sim, ids)], rtol=1e-5)
    # every pair its own class: the only positive is the partner, so SupCon is NT-Xent
    np.testing.assert_allclose(float(vals[2]), float(vals[0]), rtol=1e-6)
    for x, z in zip(jac, jax.jit(jax.jacrev(ref, (0, 1)))(s, t), strict=True):
      assert np.all(np.isfinite(np.asarray(x)))
      np.testing.assert_allclose(np.asarray(x)[:2], np.asarray(z), rtol=1e-4, atol=1e-6)


def test_joint_sharded_equals_unsharded(devices):
  """The three joint losses in one program per placement (one compilation each): every value, and the gradient
  of a weighted sum, sharded over 8 devices equal the unsharded ones."""
  mesh = sharding.make_mesh((-1,), ("data",))
  s, t, y, _ = _data(23, 16, levels=2)
  cid = np.random.default_rng(5).integers(0, 3, size=16).astype(np.int32)

  def all_three(s, t, y, c, mesh):
    vals = jnp.stack([
        losses.cross_modal_rnc_loss(s, t, y, temperature=0.2, mesh=mesh, row_block=1, joint=True),
        losses.infonce_loss(s, t, temperature=0.2, mesh=mesh, similarity="neg_l2", joint=True),
        losses.supcon_loss(s, t, c, temperature=0.2, mesh=mesh, joint=True)])
    return jnp.dot(vals, jnp.array([1.0, 0.7, 1.3])), vals

  placed = tuple(jax.device_put(x, sharding.batch_sharding(mesh, np.ndim(x))) for x in (s, t, y, cid))
  f = jax.value_and_grad(all_three, argnums=(0, 1), has_aux=True)
  (_, v_mesh), g_mesh = jax.jit(functools.partial(f, mesh=mesh))(*placed)
  (_, v), g = jax.jit(functools.partial(f, mesh=None))(s, t, y, cid)
  np.testing.assert_allclose(np.asarray(v_mesh), np.asarray(v), rtol=1e-5)
  for x, z in zip(g_mesh, g, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(z), rtol=1e-4, atol=1e-6)
  refs = [naive_joint_rnc(s, t, y, 0.2), naive_joint_contrastive(s, t, 0.2, "neg_l2"),
          naive_joint_contrastive(s, t, 0.2, "cosine", cid)]
  np.testing.assert_allclose(np.asarray(v_mesh), refs, rtol=2e-5)


def test_get_clap_loss_joint_and_similarity_options():
  s, t, y, _ = _data(24, 6, levels=2, label_dim=3)
  batch = {"labels": y, "class_id": np.array([0, 1, 0, 1, 2, 2], np.int32)}
  ids, ya = batch["class_id"], y[:, :2]                    # rank_labels default: arousal, valence
  # Loss ignoring `joint` would give its two-direction value, one ignoring `similarity` its cosine value.
  names = ("rnc", "infonce", "supcon")
  refs = [naive_joint_rnc(s, t, ya, 0.3, "neg_l2"), naive_joint_contrastive(s, t, 0.3, "neg_l2"),
          naive_joint_contrastive(s, t, 0.3, "neg_l2", ids)]
  opts = {"similarity": "neg_l2", "joint": True}
  fn = jax.jit(lambda s, t, b: [losses.get_clap_loss(name)(s, t, b, temperature=0.3, mesh=None, options=opts)
                                for name in names])
  np.testing.assert_allclose(np.asarray(fn(s, t, batch)), refs, rtol=2e-5)
  # the default config's options: the two-direction form with cosine similarity
  opts = default_config.get_config().loss_options
  got = losses.get_clap_loss("infonce")(s, t, batch, temperature=0.3, mesh=None, options=opts)
  np.testing.assert_allclose(float(got), naive_infonce(s, t, 0.3, "cosine"), rtol=1e-5)
  with pytest.raises(ValueError, match="loss_options.joint"):
    losses.get_clap_loss("rnc")(s, t, batch, temperature=0.3, mesh=None, options={"joint": "yes"})
  with pytest.raises(ValueError, match="similarity"):
    losses.get_clap_loss("supcon")(s, t, batch, temperature=0.3, mesh=None, options={"similarity": "dot"})


# --------------------------------------------------------------------------- label weights, per-label terms, lambda


def naive_weighted_rnc(z, d, w):
  """RNC with pair weights w (0: no pair): sum_ij w_ij (-z_ij + log sum_{k: d_ik >= d_ij} w_ik exp(z_ik)) / sum w,
  by loops in float64."""
  total = 0.0
  for i in range(z.shape[0]):
    for j in range(z.shape[1]):
      if w[i, j] > 0:
        den = sum(w[i, k] * np.exp(z[i, k]) for k in range(z.shape[1]) if w[i, k] > 0 and d[i, k] >= d[i, j])
        total += w[i, j] * (-z[i, j] + np.log(den))
  return total / np.sum(w)


def _weighted_dist(ya, yc, dist, weights):
  diff = np.asarray(ya, np.float64)[:, None] - np.asarray(yc, np.float64)[None]
  per = np.abs(diff) if dist == "l1" else diff ** 2
  return (per * np.asarray(weights, np.float64)).sum(-1)


def _joint_weights(n, lam):
  """(2N, 2N) pair weights of the joint set [s; t]: lambda within a modality, 1 across, 0 on the diagonal."""
  same = np.equal.outer(np.arange(2 * n) < n, np.arange(2 * n) < n)
  return np.where(np.eye(2 * n, dtype=bool), 0.0, np.where(same, lam, 1.0))


def naive_rnc_forms(s, t, y, tau, *, dist="l1", weights=(1.0, 1.0), per_label=False, joint=False, lam=1.0):
  """The cross-modal RNC by its definitions (loops): the two-direction mean or the lambda-weighted joint set,
  with the weighted label distance, or the weighted mean of one term per label column."""
  if per_label:
    return sum(w / sum(weights) * naive_rnc_forms(s, t, y[:, [c]], tau, dist=dist, weights=(1.0,), joint=joint,
                                                  lam=lam) for c, w in enumerate(weights) if w > 0)
  if joint:
    x, y2 = np.concatenate([s, t]), np.concatenate([y, y])
    return naive_weighted_rnc(_np_logits(x, x, tau, "cosine"), _weighted_dist(y2, y2, dist, weights),
                              _joint_weights(len(s), lam))
  d, ones = _weighted_dist(y, y, dist, weights), np.ones((len(s), len(s)))
  return 0.5 * (naive_weighted_rnc(_np_logits(s, t, tau, "cosine"), d, ones)
                + naive_weighted_rnc(_np_logits(t, s, tau, "cosine"), d, ones))


def naive_weighted_joint_contrastive(s, t, tau, lam, ids=None):
  """NT-Xent / SupCon over [s; t] with same-modality rows of weight lambda in the denominator and (SupCon) as
  positives: row i's loss sum_j w_ij p_ij (-z_ij + log sum_k w_ik exp(z_ik)) / sum_j w_ij p_ij (loops)."""
  x = np.concatenate([s, t])
  z, w, m = _np_logits(x, x, tau, "cosine"), _joint_weights(len(s), lam), 2 * len(s)
  total = 0.0
  for i in range(m):
    lse = np.log(sum(w[i, k] * np.exp(z[i, k]) for k in range(m) if w[i, k] > 0))
    if ids is None:
      pos = {(i + m // 2) % m: 1.0}
    else:
      ids2 = np.concatenate([ids, ids])
      pos = {j: w[i, j] for j in range(m) if w[i, j] > 0 and ids2[j] == ids2[i]}
    total += sum(wj * (lse - z[i, j]) for j, wj in pos.items()) / sum(pos.values()) / m
  return total


def dense_weighted_joint_rnc_jnp(s, t, y, tau, lam):
  """O(N^3) jnp joint RNC with same-modality weight lambda (dense [i, j, k] weights, L1) for jax.grad."""
  z, _ = _jnp_joint_logits(s, t, tau, "cosine")
  w = jnp.asarray(_joint_weights(len(s), lam), jnp.float32)
  y2 = jnp.concatenate([y, y])
  d = jnp.abs(y2[:, None] - y2[None]).sum(-1)
  den = jnp.where(d[:, None, :] >= d[:, :, None], w[:, None, :], 0.0) * jnp.exp(z)[:, None, :]
  pair = jnp.log(jnp.sum(den, axis=-1)) - z
  return jnp.sum(jnp.where(w > 0, w * pair, 0.0)) / jnp.sum(w)


def test_rnc_label_weights_and_per_label_terms():
  """Weighted label distances and per-label terms, two-direction and joint, against the loops (one program)."""
  s, t, y, _ = _data(31, 7, levels=3)
  cases = [dict(weights=(0.5, 2.0), dist="l2"), dict(weights=(1.0, 3.0), per_label=True),
           dict(weights=(0.0, 1.0), per_label=True), dict(weights=(1.0, 2.0), per_label=True, joint=True, lam=0.5)]

  def losses_of(s, t, y):
    return jnp.stack([losses.cross_modal_rnc_loss(
        s, t, y, temperature=0.3, label_distance=c.get("dist", "l1"), label_weights=c["weights"],
        per_label=c.get("per_label", False), joint=c.get("joint", False), same_modality_weight=c.get("lam", 1.0),
        row_block=3 if c.get("joint") else None) for c in cases])

  got = np.asarray(jax.jit(losses_of)(s, t, y))
  np.testing.assert_allclose(got, [naive_rnc_forms(s, t, y, 0.3, **c) for c in cases], rtol=2e-5)
  with pytest.raises(ValueError, match="label_weights"):
    losses.cross_modal_rnc_loss(s, t, y, temperature=0.3, label_weights=(1.0,))
  with pytest.raises(ValueError, match="label_weights"):
    losses.cross_modal_rnc_loss(s, t, y, temperature=0.3, label_weights=(0.0, 0.0), per_label=True)


def test_joint_same_modality_weight_all_losses():
  """lambda = 0, 0.3 and 1 against the loops; lambda = 0 is the two-direction form (values, and the gradients of a
  weighted sum of the three losses), lambda = 1 the joint form; the RNC gradient at lambda = 0.3 against the
  dense jnp version."""
  s, t, y, _ = _data(32, 6, levels=2)
  ids = np.array([0, 1, 0, 2, 1, 0], np.int32)
  mix = jnp.array([1.0, 0.6, 1.7])

  def three(s, t, lam, joint=True):
    kw = dict(temperature=0.4, joint=joint, same_modality_weight=lam)
    return jnp.stack([losses.cross_modal_rnc_loss(s, t, y, **kw), losses.infonce_loss(s, t, **kw),
                      losses.supcon_loss(s, t, ids, **kw)])

  def forms(s, t):
    values = jnp.stack([three(s, t, 0.0), three(s, t, 1.0, joint=False), three(s, t, 0.3), three(s, t, 1.0)])
    return jnp.stack([values[0] @ mix, values[1] @ mix, values[2, 0]]), values

  jac, values = jax.jit(jax.jacrev(forms, (0, 1), has_aux=True))(s, t)
  values = np.asarray(values)
  np.testing.assert_allclose(values[0], [naive_rnc_forms(s, t, y, 0.4, joint=True, lam=0.0),
                                         naive_weighted_joint_contrastive(s, t, 0.4, 0.0),
                                         naive_weighted_joint_contrastive(s, t, 0.4, 0.0, ids)], rtol=2e-5)
  np.testing.assert_allclose(values[2], [naive_rnc_forms(s, t, y, 0.4, joint=True, lam=0.3),
                                         naive_weighted_joint_contrastive(s, t, 0.4, 0.3),
                                         naive_weighted_joint_contrastive(s, t, 0.4, 0.3, ids)], rtol=2e-5)
  np.testing.assert_allclose(values[0], values[1], rtol=2e-6)            # lambda = 0: the two-direction form
  np.testing.assert_allclose(values[3], [naive_joint_rnc(s, t, y, 0.4), naive_joint_contrastive(s, t, 0.4, "cosine"),
                                         naive_joint_contrastive(s, t, 0.4, "cosine", ids)], rtol=2e-5)  # lambda = 1
  ref = jax.jit(jax.grad(lambda s, t: dense_weighted_joint_rnc_jnp(s, t, y, 0.4, 0.3), (0, 1)))(s, t)
  for j, r in zip(jac, ref, strict=True):
    j = np.asarray(j)
    assert np.all(np.isfinite(j))
    np.testing.assert_allclose(j[0], j[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(j[2], np.asarray(r), rtol=2e-4, atol=1e-5)
  with pytest.raises(ValueError, match="needs joint=True"):
    losses.infonce_loss(s, t, temperature=0.4, same_modality_weight=0.5)
  with pytest.raises(ValueError, match=">= 0"):
    losses.cross_modal_rnc_loss(s, t, y, temperature=0.4, joint=True, same_modality_weight=-1.0)


def test_loss_options_sharded_and_from_the_config_keys(devices):
  """The options as config.loss_options keys through get_clap_loss, in one program sharded over 8 devices (with
  row blocks for one): equal to the loops (the other tests check them unsharded)."""
  mesh = sharding.make_mesh((-1,), ("data",))
  s, t, y, _ = _data(33, 16, levels=3, label_dim=3)
  cid = np.random.default_rng(6).integers(0, 3, size=16).astype(np.int32)
  options = [("rnc", dict(rank_label_weights=(1.0, 4.0), row_block=3)),
             ("rnc", dict(joint=True, same_modality_weight=0.3, rank_terms="per_label", rank_label_weights=(3.0, 1.0))),
             ("infonce", dict(joint=True, same_modality_weight=0.3)),
             ("supcon", dict(joint=True, same_modality_weight=0.3))]

  def all_of(s, t, labels, class_id, mesh):
    b = {"labels": labels, "class_id": class_id}
    return jnp.stack([losses.get_clap_loss(name)(s, t, b, temperature=0.2, mesh=mesh, options=o)
                      for name, o in options])

  placed = tuple(jax.device_put(x, sharding.batch_sharding(mesh, np.ndim(x))) for x in (s, t, y, cid))
  v_mesh = jax.jit(functools.partial(all_of, mesh=mesh))(*placed)
  ya = y[:, :2]                      # rank_labels default: arousal, valence
  refs = [naive_rnc_forms(s, t, ya, 0.2, weights=(1.0, 4.0)),
          naive_rnc_forms(s, t, ya, 0.2, weights=(3.0, 1.0), per_label=True, joint=True, lam=0.3),
          naive_weighted_joint_contrastive(s, t, 0.2, 0.3), naive_weighted_joint_contrastive(s, t, 0.2, 0.3, cid)]
  np.testing.assert_allclose(np.asarray(v_mesh), refs, rtol=2e-5)
  batch = {"labels": y, "class_id": cid}
  with pytest.raises(ValueError, match="rank_label_weights"):
    losses.get_clap_loss("rnc")(s, t, batch, temperature=0.2, options={"rank_label_weights": (1.0, 2.0, 3.0)})
  with pytest.raises(ValueError, match="rank_terms"):
    losses.get_clap_loss("rnc")(s, t, batch, temperature=0.2, options={"rank_terms": "each"})


# --------------------------------------------------------------------------- stage-1 losses


def naive_rank_loss(f, y, margin, scale):
  f, y = np.asarray(f, np.float64).reshape(len(f), -1), np.asarray(y, np.float64).reshape(len(y), -1)
  per_attr = []
  for a in range(f.shape[1]):
    terms = []
    for i in range(len(f)):
      for j in range(len(f)):
        if y[i, a] == y[j, a] or abs(y[i, a] - y[j, a]) <= margin:
          continue
        p = 1.0 / (1.0 + np.exp(-(f[i, a] - f[j, a]) / scale))
        terms.append(-np.log(p) if y[i, a] > y[j, a] else -np.log(1.0 - p))
    per_attr.append(np.mean(terms) if terms else 0.0)
  return np.mean(per_attr)


def test_pairwise_ranking_loss():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(30, 3)).astype(np.float32)
  y = (rng.integers(0, 5, size=(30, 3)) * 0.5).astype(np.float32)    # ties
  for margin, scale in ((0.0, 1.0), (0.5, 0.3), (1.0, 2.0)):
    got = losses.pairwise_ranking_loss(f, y, margin=margin, scale=scale)
    np.testing.assert_allclose(float(got), naive_rank_loss(f, y, margin, scale), rtol=1e-5)
    g = jax.grad(functools.partial(losses.pairwise_ranking_loss, labels=y, margin=margin, scale=scale))(f)

    def dense(f, margin=margin, scale=scale):
      dy = y[:, None] - y[None]
      inc = (np.abs(dy) > margin) & (dy != 0)
      pair = jnp.where(inc, -jax.nn.log_sigmoid(np.sign(dy) * (f[:, None] - f[None]) / scale), 0.0)
      return jnp.mean(jnp.sum(pair, (0, 1)) / np.maximum(inc.sum((0, 1)), 1))
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(dense)(f)), rtol=1e-4, atol=1e-7)
  # 1-D inputs
  np.testing.assert_allclose(float(losses.pairwise_ranking_loss(f[:, 0], y[:, 0])),
                             naive_rank_loss(f[:, :1], y[:, :1], 0, 1), rtol=1e-5)


def test_ccc_loss_is_one_minus_the_metric_ccc():
  """Stage 1's CCC loss and the CCC metric are one definition (erclap.metrics.ccc): the loss, traced in float32,
  is the mean over attributes of 1 - the metric's float64 CCC, constant columns included."""
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 0.5
  for a in range(3):
    mx, my = x[:, a].mean(), y[:, a].mean()
    ref = 2 * np.mean((x[:, a] - mx) * (y[:, a] - my)) / (x[:, a].var() + y[:, a].var() + (mx - my) ** 2)
    np.testing.assert_allclose(float(metrics.ccc(jnp.asarray(x[:, a]), jnp.asarray(y[:, a]))), ref, rtol=1e-5)
  assert float(losses.ccc_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
  assert float(losses.ccc_loss(x, y)) > 0.1
  assert float(losses.ccc_loss(x, 2 * x)) > 0.0      # perfectly correlated but not concordant
  ref = np.mean([1 - metrics.ccc(x[:, a], y[:, a]) for a in range(3)])
  np.testing.assert_allclose(float(jax.jit(losses.ccc_loss)(x, y)), ref, rtol=1e-6)
  # A column of equal constants agrees perfectly (CCC 1, loss term 0); a constant against a varying column is 0.
  const = np.stack([np.full(50, 4.0), np.full(50, 4.0), x[:, 2]], 1)
  other = np.stack([np.full(50, 4.0), y[:, 1], y[:, 2]], 1)
  assert float(losses.ccc_loss(const, other)) == pytest.approx(np.mean([0.0, 1.0, 1 - metrics.ccc(x[:, 2], y[:, 2])]),
                                                                rel=1e-5)
  grad = jax.grad(lambda p: losses.ccc_loss(p, other))(jnp.asarray(const, jnp.float32))
  assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------- bad input


def test_bad_input_errors():
  s, t, y, _ = _data(17, 8)
  with pytest.raises(ValueError, match="text"):
    losses.cross_modal_rnc_loss(s, t[:7], y, temperature=0.1)
  with pytest.raises(ValueError, match="labels"):
    losses.cross_modal_rnc_loss(s, t, y[:7], temperature=0.1)
  with pytest.raises(ValueError, match="at least 2"):
    losses.cross_modal_rnc_loss(s[:1], t[:1], y[:1], temperature=0.1)
  for bad_t in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="temperature"):
      losses.cross_modal_rnc_loss(s, t, y, temperature=bad_t)
  y_nan = y.copy()
  y_nan[2, 1] = np.nan
  with pytest.raises(ValueError, match="labels contains NaN"):
    losses.cross_modal_rnc_loss(s, t, y_nan, temperature=0.1)
  with pytest.raises(ValueError, match="candidate_labels"):
    losses.rnc_loss(s, t, y, y[:, :1].repeat(3, 1)[:7], temperature=0.1)
  with pytest.raises(ValueError, match="exclude_self"):
    losses.rnc_loss(s, t[:6], y, y[:6], temperature=0.1, exclude_self=True)
  with pytest.raises(ValueError, match="similarity"):
    losses.rnc_loss(s, t, y, y, temperature=0.1, similarity="dot")
  with pytest.raises(ValueError, match="exclude_self"):
    losses.cross_modal_rnc_loss(s, t, y, temperature=0.1, exclude_self=True, joint=True)
  with pytest.raises(ValueError, match="similarity"):
    losses.infonce_loss(s, t, temperature=0.1, similarity="dot")
  with pytest.raises(ValueError, match="class_ids"):
    losses.supcon_loss(s, t, np.full((8,), -1, np.int32), temperature=0.1)
  with pytest.raises(ValueError, match="labels"):
    losses.pairwise_ranking_loss(s[:, :2], y_nan)
  with pytest.raises(ValueError, match="not divisible"):
    losses.infonce_loss(s[:6], t[:6], temperature=0.1, mesh=sharding.make_mesh((8,), ("data",)))
  # under jit the shapes are still checked at trace time
  with pytest.raises(ValueError, match="text"):
    jax.jit(lambda s, t: losses.infonce_loss(s, t, temperature=0.1))(s, t[:, :4])


def test_psum_output_is_replicated(devices):
  """Inside jit with batch-sharded inputs, the loss comes back as a replicated scalar."""
  mesh = sharding.make_mesh((-1, 1, 1), ("data", "fsdp", "tensor"))
  s, t, y, _ = _data(18, 16)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
  out = jax.jit(lambda s, t, y: losses.cross_modal_rnc_loss(s, t, y, temperature=0.1, mesh=mesh))(put(s), put(t),
                                                                                                   put(y))
  assert out.shape == () and out.sharding.is_fully_replicated
