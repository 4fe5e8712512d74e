"""erclap.metrics against independent references: scipy, naive loops, brute force and hand-computed cases."""

import itertools
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from erclap import metrics


def scipy_tau(x, y):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scipy warns on constant input (tau undefined -> NaN)
    return stats.kendalltau(x, y).statistic


# ---------------------------------------------------------------------------------------------- Kendall tau-b


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int16])
@pytest.mark.parametrize("n", [2, 3, 7, 8, 9, 100, 257])
def test_kendall_tau_b_rows_matches_scipy_with_ties(dtype, n):
  rng = np.random.default_rng(n)
  x = rng.integers(0, 5, (6, n)).astype(dtype)                           # heavy ties
  y = np.round(rng.normal(size=(6, n)) * 2, rng.integers(0, 3)).astype(dtype)
  y[0] = rng.permutation(n).astype(dtype)                                 # one row without ties
  x[1] = np.arange(n)
  got = metrics.kendall_tau_b_rows(x, y)
  want = np.array([scipy_tau(x[i], y[i]) for i in range(6)])
  np.testing.assert_allclose(got, want, atol=1e-12)


def test_kendall_tau_b_rows_hand_cases():
  a = np.arange(10.0)
  assert metrics.kendall_tau_b_rows(a, a)[0] == pytest.approx(1.0)
  assert metrics.kendall_tau_b_rows(a, -a)[0] == pytest.approx(-1.0)
  # x = 1 2 3 4, y = 1 1 2 3: 5 concordant pairs, the (1, 2) pair tied in y: 5 / sqrt(6 * 5).
  assert metrics.kendall_tau_b_rows([1, 2, 3, 4], [1, 1, 2, 3])[0] == pytest.approx(5 / math.sqrt(30))
  # Negative values, -0.0 vs 0.0 as a tie, through the float32 bit-pattern path.
  x = np.array([-2.0, -0.0, 0.0, 1.5], np.float32)
  y = np.array([3.0, 1.0, 2.0, 0.0], np.float32)
  assert metrics.kendall_tau_b_rows(x, y)[0] == pytest.approx(scipy_tau(x, y))
  # Broadcasting one y against many rows; constant rows and n < 2 are undefined (NaN, as scipy).
  out = metrics.kendall_tau_b_rows(np.stack([a, -a, np.ones(10)]), a)
  np.testing.assert_allclose(out, [1.0, -1.0, np.nan])
  assert np.isnan(metrics.kendall_tau_b_rows([1.0], [2.0])[0])
  with pytest.raises(ValueError, match="x"):
    metrics.kendall_tau_b_rows([1.0, np.nan], [1.0, 2.0])
  with pytest.raises(ValueError, match="broadcast"):
    metrics.kendall_tau_b_rows(np.zeros((2, 3)), np.zeros((2, 4)))


# ------------------------------------------------------------------------------------------------ ordinality


def test_anchor_kendall_tau_matches_scipy_loop():
  rng = np.random.default_rng(0)
  a_lab = rng.integers(4, 29, 9) / 4.0            # quarter steps: many exactly equal distances
  c_lab = rng.integers(4, 29, 37) / 4.0
  sim = rng.normal(size=(9, 37)).astype(np.float32) - 0.3 * np.abs(a_lab[:, None] - c_lab[None, :])
  mean, per_anchor = metrics.anchor_kendall_tau(sim, a_lab, c_lab, return_per_anchor=True)
  want = [scipy_tau(sim[i], -np.round(np.abs(a_lab[i] - c_lab), 6)) for i in range(9)]
  np.testing.assert_allclose(per_anchor, want, atol=1e-12)
  assert mean == pytest.approx(np.mean(want))


def test_anchor_kendall_tau_hand_cases_and_errors():
  y = np.array([1.0, 2.5, 4.0, 5.5, 7.0, 3.1])
  d = np.abs(y[:, None] - y[None, :])
  assert metrics.anchor_kendall_tau(-d, y, y) == pytest.approx(1.0)   # similarity falls with distance
  assert metrics.anchor_kendall_tau(d, y, y) == pytest.approx(-1.0)
  # Equal distances must tie even when float rounding splits them: |1.1 - 1.0| vs |1.2 - 1.1|.
  y2 = np.array([1.1, 1.0, 1.2])
  assert abs(1.1 - 1.0) != abs(1.2 - 1.1)
  sim = np.array([[0.0, 1.0, 0.5]])        # tau-b with the two candidates at distance 0.1 tied
  got = metrics.anchor_kendall_tau(sim, y2[:1], y2)
  assert got == pytest.approx(scipy_tau(sim[0], [0.0, -0.1, -0.1]))
  assert got != pytest.approx(scipy_tau(sim[0], -np.abs(y2[0] - y2)))
  with pytest.raises(ValueError, match="sim"):
    metrics.anchor_kendall_tau(np.zeros((2, 3)), [1.0, 2.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="anchor_labels"):
    metrics.anchor_kendall_tau(np.zeros((2, 3)), np.zeros((2, 1)), [1.0, 2.0, 3.0])


def test_prompt_ordinal_consistency_constructed():
  rng = np.random.default_rng(1)
  values = rng.uniform(1, 7, 60)
  levels = np.linspace(1, 7, 5)
  good = -np.abs(values[None, :] - levels[:, None])              # each prompt prefers clips near its level
  r = metrics.prompt_ordinal_consistency(good, levels, values)
  np.testing.assert_allclose(r["tau_per_prompt"], [scipy_tau(good[k], values) for k in range(5)], atol=1e-12)
  np.testing.assert_array_equal(r["expected_sign"], [-1, -1, 0, 1, 1])
  want_signed = np.mean([-r["tau_per_prompt"][0], -r["tau_per_prompt"][1], r["tau_per_prompt"][3],
                         r["tau_per_prompt"][4]])
  assert r["signed_tau"] == pytest.approx(want_signed)
  assert r["tau_per_prompt"][0] == pytest.approx(-1.0) and r["tau_per_prompt"][4] == pytest.approx(1.0)
  assert r["distance_tau"] == pytest.approx(1.0)
  assert r["monotone"] and r["order_tau"] == pytest.approx(1.0)
  top = np.argsort(good[0])[::-1][:6]          # top 10% of 60 clips
  assert r["top_clip_values"][0] == pytest.approx(values[top].mean())
  flipped = metrics.prompt_ordinal_consistency(good[::-1], levels, values)    # prompts in reverse order
  assert not flipped["monotone"] and flipped["order_tau"] == pytest.approx(-1.0)
  assert flipped["signed_tau"] == pytest.approx(-r["signed_tau"])
  with pytest.raises(ValueError, match="prompt_sim"):
    metrics.prompt_ordinal_consistency(good[:4], levels, values)


# ------------------------------------------------------------------------------------------- retrieval tau


def _pool(values_per_query, clip_values, reverse=False):
  """Query q retrieves (top-1) the clip whose value is closest to its value (or the mirrored one)."""
  target = 8.0 - values_per_query if reverse else values_per_query
  return -np.abs(target[:, None] - clip_values[None, :])


def test_retrieval_kendall_tau_perfect_and_reversed():
  clips = np.repeat(np.arange(1.0, 8.0), 3) + np.tile([0.0, 0.01, -0.01], 7)
  query_values = np.repeat(np.arange(1.0, 8.0), 4)                 # 7 levels x 4 wordings
  r = metrics.retrieval_kendall_tau(_pool(query_values, clips), query_values, clips)
  assert r["tau"] == pytest.approx(1.0) and r["tau_std"] == pytest.approx(0.0)
  assert (r["num_levels"], r["num_draws"], r["top_k"], r["num_undefined"]) == (5, 200, 1, 0)
  rev = metrics.retrieval_kendall_tau(_pool(query_values, clips, True), query_values, clips, num_levels=3,
                                      num_draws=50, top_k=3)
  assert rev["tau"] == pytest.approx(-1.0)
  assert (rev["num_levels"], rev["num_draws"], rev["top_k"]) == (3, 50, 3)


def test_retrieval_kendall_tau_small_cases_by_hand():
  clips = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  # Three levels, one wording each, K = 3: every draw is the same set -> tau = scipy's on that set.
  # level 1 -> clip 2.0, level 4 -> clip 1.0, level 7 -> clip 5.0 (top-1).
  sim = np.full((3, 5), -1.0)
  sim[0, 1], sim[1, 0], sim[2, 4] = 1.0, 1.0, 1.0
  r = metrics.retrieval_kendall_tau(sim, [1.0, 4.0, 7.0], clips, num_levels=3, num_draws=20)
  assert r["tau"] == pytest.approx(scipy_tau([1, 4, 7], [2, 1, 5]))          # = 1/3
  assert r["tau"] == pytest.approx(1 / 3)
  # top_k = 2: level 1 -> mean(2, 3) = 2.5, level 4 -> mean(1, 4) = 2.5 (tie), level 7 -> mean(5, 3) = 4.
  sim[0, 2], sim[1, 3], sim[2, 2] = 0.5, 0.5, 0.5
  r2 = metrics.retrieval_kendall_tau(sim, [1.0, 4.0, 7.0], clips, num_levels=3, num_draws=5, top_k=2)
  assert r2["tau"] == pytest.approx(scipy_tau([1, 4, 7], [2.5, 2.5, 4.0]))
  # Two wordings per level, one right and one reversed: the mean over draws approaches the average over the
  # 2**3 equally likely wording choices (exhaustive reference).
  values = np.array([1.0, 1.0, 4.0, 4.0, 7.0, 7.0])
  retrieved = {0: 1.0, 1: 5.0, 2: 3.0, 3: 3.0, 4: 5.0, 5: 1.0}          # query id -> retrieved clip value
  sim6 = np.full((6, 5), -1.0)
  for q, v in retrieved.items():
    sim6[q, int(v) - 1] = 1.0
  exhaustive = np.mean([scipy_tau([1, 4, 7], [retrieved[a], retrieved[b], retrieved[c]])
                        for a, b, c in itertools.product((0, 1), (2, 3), (4, 5))])
  r3 = metrics.retrieval_kendall_tau(sim6, values, clips, num_levels=3, num_draws=4000, seed=3)
  assert r3["tau"] == pytest.approx(exhaustive, abs=0.04)


def test_retrieval_kendall_tau_undefined_and_errors():
  clips = np.array([1.0, 2.0, 3.0])
  sim = np.zeros((4, 3))
  sim[:, 0] = 1.0                                              # every description retrieves the same clip
  r = metrics.retrieval_kendall_tau(sim, [1.0, 2.0, 3.0, 4.0], clips, num_levels=3, num_draws=10)
  assert r["tau"] == 0.0 and r["num_undefined"] == 10
  with pytest.raises(ValueError, match="num_levels"):
    metrics.retrieval_kendall_tau(sim, [1.0, 2.0, 3.0, 4.0], clips, num_levels=5)
  with pytest.raises(ValueError, match="top_k"):
    metrics.retrieval_kendall_tau(sim, [1.0, 2.0, 3.0, 4.0], clips, num_levels=3, top_k=4)
  with pytest.raises(ValueError, match="query_sim"):
    metrics.retrieval_kendall_tau(sim, [1.0, 2.0, 3.0], clips, num_levels=3)


def naive_bootstrap_interval(sim, query_values, clip_values, *, num_levels, num_draws, top_k, seed, num_bootstrap):
  """The documented bootstrap by loops: the draws (as ``retrieval_kendall_tau`` makes them), then per replicate
  the resampled clips (copies kept), each query's top_k, scipy's tau per resampled draw."""
  levels, level_of_query = np.unique(query_values, return_inverse=True)
  rng = np.random.default_rng(seed)
  chosen = np.argsort(rng.random((num_draws, len(levels))), axis=1)[:, :num_levels]
  offsets = rng.random(chosen.shape)
  draws = []
  for m in range(num_draws):
    wordings = [np.flatnonzero(level_of_query == c) for c in chosen[m]]
    draws.append([w[int(np.floor(o * len(w)))] for w, o in zip(wordings, offsets[m], strict=True)])
  boot = np.random.default_rng([seed, 1])
  clip_ids = boot.integers(len(clip_values), size=(num_bootstrap, len(clip_values)))
  draw_ids = boot.integers(num_draws, size=(num_bootstrap, num_draws))
  replicates = []
  for b in range(num_bootstrap):
    sub_sim, sub_values = sim[:, clip_ids[b]], clip_values[clip_ids[b]]
    retrieved = [np.mean(sub_values[np.argsort(-row, kind="stable")[:top_k]]) for row in sub_sim]
    taus = []
    for m in draw_ids[b]:
      tau = scipy_tau(levels[chosen[m]], [retrieved[q] for q in draws[m]])
      taus.append(0.0 if np.isnan(tau) else tau)
    replicates.append(np.mean(taus))
  return np.quantile(replicates, [0.025, 0.975])


def test_retrieval_bootstrap_interval_matches_naive_loops():
  rng = np.random.default_rng(4)
  clips = rng.uniform(1, 7, 40)
  query_values = np.repeat(np.arange(1.0, 8.0), 3)
  sim = -np.abs(query_values[:, None] - clips[None, :] + rng.normal(0, 1.5, (21, 40)))
  # top_k = 36 reaches beyond the short prefix of each query's order that the vectorised version tries first.
  for top_k in (1, 3, 36):
    kw = dict(num_levels=4, num_draws=12, top_k=top_k, seed=7)
    r = metrics.retrieval_kendall_tau(sim, query_values, clips, num_bootstrap=60, **kw)
    plain = metrics.retrieval_kendall_tau(sim, query_values, clips, **kw)
    assert r["tau"] == plain["tau"] and "ci_low" not in plain                 # the estimate itself is unchanged
    np.testing.assert_allclose([r["ci_low"], r["ci_high"]],
                               naive_bootstrap_interval(sim, query_values, clips, num_bootstrap=60, **kw), atol=1e-12)
    assert r["num_bootstrap"] == 60 and r["ci_low"] < r["ci_high"] and r["tau_se"] > 0
  again = metrics.retrieval_kendall_tau(sim, query_values, clips, num_bootstrap=60, **kw)
  assert (again["ci_low"], again["ci_high"]) == (r["ci_low"], r["ci_high"])   # a fixed seed: deterministic
  with pytest.raises(ValueError, match="num_bootstrap"):
    metrics.retrieval_kendall_tau(sim, query_values, clips, num_bootstrap=-1)


def test_retrieval_bootstrap_interval_covers_the_expected_value():
  """Test sets drawn from a known population: the 95 % interval holds the estimator's expected value (its mean
  over 300 test sets of the same size) in at least 85 % of 50 test sets, and is no wider than needed."""
  rng = np.random.default_rng(0)
  query_values = np.repeat(np.arange(1.0, 8.0), 4) + np.tile([-0.3, -0.1, 0.1, 0.3], 7)

  def test_set():
    clips = rng.uniform(1, 7, 150)
    return -np.abs(query_values[:, None] - clips[None, :] - rng.normal(0, 1.0, 150)), clips

  kw = dict(num_levels=5, num_draws=50)
  estimates = [metrics.retrieval_kendall_tau(sim, query_values, clips, seed=i, **kw)["tau"]
               for i, (sim, clips) in enumerate(test_set() for _ in range(300))]
  expected = np.mean(estimates)
  results = [metrics.retrieval_kendall_tau(sim, query_values, clips, seed=1000 + i, num_bootstrap=200, **kw)
             for i, (sim, clips) in enumerate(test_set() for _ in range(50))]
  covered = np.mean([r["ci_low"] <= expected <= r["ci_high"] for r in results])
  width = np.mean([r["ci_high"] - r["ci_low"] for r in results])
  assert 0.85 <= covered
  assert width < 6 * np.std(estimates)  # a 95 % interval of a normal estimator is 3.9 sd wide


# ---------------------------------------------------------------------------------------------- modality gap


def loop_mmd(x, y):
  """Unbiased squared MMD by explicit loops, bandwidth = median pairwise distance of the pooled set."""
  z = np.concatenate([x, y])
  dists = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
  sigma = np.median(dists)

  def k(a, b):
    return math.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))

  m, n = len(x), len(y)
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return kxx + kyy - 2 * kxy


def test_mmd_matches_loop():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.7
  assert metrics.mmd(x, y) == pytest.approx(loop_mmd(x, y), rel=1e-10)
  same = rng.normal(size=(200, 4))
  shifted = metrics.mmd(same[:100], same[100:] + 1.0)
  assert abs(metrics.mmd(same[:100], same[100:])) < 0.05 * shifted
  with pytest.raises(ValueError, match="feature"):
    metrics.mmd(x, y[:, :2])
  with pytest.raises(ValueError, match="bandwidth"):
    metrics.mmd(np.ones((3, 2)), np.ones((3, 2)))


def test_wasserstein_exact_matches_brute_force_and_assignment():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)) + 0.5
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  yn = y / np.linalg.norm(y, axis=1, keepdims=True)
  brute = min(np.mean([np.linalg.norm(xn[i] - yn[p[i]]) for i in range(5)])
              for p in itertools.permutations(range(5)))
  r = metrics.wasserstein(x, y)
  assert r.method == "exact" and r.num_points == 5 and r.value == pytest.approx(brute, rel=1e-12)
  x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
  xn, yn = metrics.l2_normalize(x), metrics.l2_normalize(y)
  cost = np.linalg.norm(xn[:, None] - yn[None], axis=-1)
  rows, cols = optimize.linear_sum_assignment(cost)
  assert metrics.wasserstein(x, y).value == pytest.approx(cost[rows, cols].mean(), rel=1e-10)
  with pytest.raises(ValueError, match="equal-size"):
    metrics.wasserstein(x, y[:20])


def test_wasserstein_sliced_estimate():
  rng = np.random.default_rng(4)
  # D = 1 without normalisation: every projection is +-1, so the sliced value is the exact 1-D W1.
  x, y = rng.normal(size=(50, 1)), rng.normal(size=(50, 1)) * 2 + 1
  sliced = metrics.wasserstein(x, y, exact_max_n=0, num_projections=8, normalize=False)
  assert sliced.method == "sliced" and sliced.num_projections == 8
  assert sliced.value == pytest.approx(np.abs(np.sort(x[:, 0]) - np.sort(y[:, 0])).mean(), rel=1e-10)
  # D = 16: a lower bound on the exact W1, in the same units, and zero for identical clouds.
  x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) + 0.3
  exact = metrics.wasserstein(x, y).value
  est = metrics.wasserstein(x, y, exact_max_n=100, num_projections=400).value
  assert 0.2 * exact < est <= exact * 1.02
  assert metrics.wasserstein(x, x, exact_max_n=100).value == pytest.approx(0.0, abs=1e-12)
  u = rng.normal(size=(200_000, 16))
  assert np.abs(u[:, 0] / np.linalg.norm(u, axis=1)).mean() == pytest.approx(metrics.sliced_scale(16), rel=0.01)


def unit_rows_loop(x):
  """Each row divided by its Euclidean norm, one row at a time."""
  return np.array([row / math.sqrt(sum(v * v for v in row)) for row in np.asarray(x, np.float64)])


def loop_mmd_kernel(x, y, k):
  """Unbiased squared MMD of kernel k by explicit loops (m, n may differ)."""
  m, n = len(x), len(y)
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return kxx + kyy - 2 * kxy


def test_centroid_distance_and_paired_cosine_match_loops_and_hand_cases():
  rng = np.random.default_rng(11)
  x, y = rng.normal(size=(9, 5)) * 3.0, rng.normal(size=(6, 5)) + 0.4
  xs, ys = unit_rows_loop(x), unit_rows_loop(y)
  cx = [sum(xs[i][d] for i in range(9)) / 9 for d in range(5)]
  cy = [sum(ys[j][d] for j in range(6)) / 6 for d in range(5)]
  naive = math.sqrt(sum((cx[d] - cy[d]) ** 2 for d in range(5)))
  assert metrics.centroid_distance(x, y) == pytest.approx(naive, rel=1e-12)      # m != n allowed
  assert metrics.centroid_distance(x, 7.0 * x) == pytest.approx(0.0, abs=1e-12)   # scale-free per row
  # Hand cases: opposite pairs of axes -> centroids (1/2, 1/2) and (-1/2, -1/2), every pair at cosine -1.
  a, b = np.eye(2), -np.eye(2)
  assert metrics.centroid_distance(a, b) == pytest.approx(math.sqrt(2.0))
  assert metrics.mean_paired_cosine(a, b) == pytest.approx(-1.0)
  assert metrics.mean_paired_cosine(a, a[::-1]) == pytest.approx(0.0)              # orthogonal pairs
  y = x + rng.normal(size=x.shape)
  ys = unit_rows_loop(y)
  naive_cos = sum(sum(xs[i][d] * ys[i][d] for d in range(5)) for i in range(9)) / 9
  assert metrics.mean_paired_cosine(x, y) == pytest.approx(naive_cos, rel=1e-12)
  with pytest.raises(ValueError, match="paired"):
    metrics.mean_paired_cosine(x, y[:5])
  with pytest.raises(ValueError, match="feature"):
    metrics.centroid_distance(x, y[:, :3])
  with pytest.raises(ValueError, match="empty"):
    metrics.centroid_distance(np.zeros((0, 5)), y)


def test_mmd_linear_matches_loop_and_biased_version_is_centroid_distance_squared():
  rng = np.random.default_rng(12)
  x, y = rng.normal(size=(7, 4)), rng.normal(size=(5, 4)) + 0.6
  xs, ys = unit_rows_loop(x), unit_rows_loop(y)
  dot = lambda a, b: float(sum(a[d] * b[d] for d in range(len(a))))
  assert metrics.mmd_linear(x, y) == pytest.approx(loop_mmd_kernel(xs, ys, dot), rel=1e-10)
  biased = (sum(dot(xs[i], xs[j]) for i in range(7) for j in range(7)) / 49
            + sum(dot(ys[i], ys[j]) for i in range(5) for j in range(5)) / 25
            - 2 * sum(dot(xs[i], ys[j]) for i in range(7) for j in range(5)) / 35)
  assert biased == pytest.approx(metrics.centroid_distance(x, y) ** 2, rel=1e-10)
  # Hand cases: two points on e1 vs two on e2 -> 1 + 1 - 0 = 2; +-e1 vs +-e2 -> -1 - 1 - 0 = -2 (negative).
  e1, e2 = np.array([[1.0, 0.0]] * 2), np.array([[0.0, 1.0]] * 2)
  assert metrics.mmd_linear(e1, 5.0 * e2) == pytest.approx(2.0)
  assert metrics.mmd_linear(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, -1.0]])) == \
      pytest.approx(-2.0)
  with pytest.raises(ValueError, match="at least 2"):
    metrics.mmd_linear(x[:1], y)


def test_fixed_bandwidth_mmd_matches_loop_and_hand_case():
  assert metrics.FIXED_MMD_BANDWIDTH == 1.0
  rng = np.random.default_rng(13)
  x, y = unit_rows_loop(rng.normal(size=(6, 3))), unit_rows_loop(rng.normal(size=(8, 3)) + 0.5)
  gauss = lambda a, b: math.exp(-float(np.sum((a - b) ** 2)) / 2.0)   # sigma = 1
  assert metrics.mmd(x, y, bandwidth=metrics.FIXED_MMD_BANDWIDTH) == pytest.approx(loop_mmd_kernel(x, y, gauss),
                                                                                   rel=1e-10)
  # Two copies of e1 vs two of -e1: within-sample kernels 1, across exp(-4 / 2).
  e1 = np.array([[1.0, 0.0]] * 2)
  assert metrics.mmd(e1, -e1, bandwidth=1.0) == pytest.approx(2.0 - 2.0 * math.exp(-2.0))


def test_wasserstein_centered_matches_brute_force_and_removes_the_offset():
  rng = np.random.default_rng(14)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.8
  xs, ys = unit_rows_loop(x), unit_rows_loop(y)
  xc, yc = xs - xs.mean(0), ys - ys.mean(0)
  brute = min(np.mean([np.linalg.norm(xc[i] - yc[p[i]]) for i in range(6)])
              for p in itertools.permutations(range(6)))
  r = metrics.wasserstein_centered(x, y)
  assert r.method == "exact" and r.num_points == 6 and r.value == pytest.approx(brute, rel=1e-12)
  # Two clouds mirrored across the e2 axis: W1 is 2 cos(a) apart, centred they coincide.
  a = 0.4
  left = np.array([[math.cos(a), math.sin(a)], [math.cos(a), -math.sin(a)]])
  right = left * np.array([-1.0, 1.0])
  assert metrics.wasserstein(left, right).value == pytest.approx(2 * math.cos(a))
  assert metrics.wasserstein_centered(left, right).value == pytest.approx(0.0, abs=1e-12)
  # Above max_points: the seeded subset of rows, centred by the means of all rows.
  x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 0.3
  xs, ys = unit_rows_loop(x), unit_rows_loop(y)
  xc, yc = xs - xs.mean(0), ys - ys.mean(0)
  rows_used = np.sort(np.random.default_rng(3).choice(40, 16, replace=False))
  cost = np.linalg.norm(xc[rows_used][:, None] - yc[rows_used][None], axis=-1)
  rows, cols = optimize.linear_sum_assignment(cost)
  r = metrics.wasserstein_centered(x, y, max_points=16, seed=3)
  assert r.num_points == 16 and r.value == pytest.approx(cost[rows, cols].mean(), rel=1e-10)
  with pytest.raises(ValueError, match="paired"):
    metrics.wasserstein_centered(x, y[:30])


@pytest.mark.parametrize("offset", [0.0, 0.5, 3.0])
def test_wasserstein_lies_between_centroid_distance_and_the_centred_bound(offset):
  """On the same points: ||mean x - mean y|| <= W1 <= ||mean x - mean y|| + W1 of the centred clouds."""
  rng = np.random.default_rng(17)
  x, y = rng.normal(size=(24, 4)), rng.normal(size=(24, 4)) * 0.5 + offset
  w1 = metrics.wasserstein(x, y).value
  centroid = metrics.centroid_distance(x, y)
  assert centroid - 1e-12 <= w1 <= centroid + metrics.wasserstein_centered(x, y).value + 1e-12


def loop_description_gap(x, y, descriptions):
  """Clip-weighted mean distance / cosine between each description's speech centroid and text direction."""
  xs, ys = unit_rows_loop(x), unit_rows_loop(y)
  groups = {}
  for i, d in enumerate(descriptions):
    groups.setdefault(d, []).append(i)
  distance = cosine = 0.0
  for rows in groups.values():
    c = sum(xs[i] for i in rows) / len(rows)
    t = sum(ys[i] for i in rows) / len(rows)
    t = t / math.sqrt(float(t @ t))
    distance += len(rows) * math.sqrt(float((c - t) @ (c - t)))
    cosine += len(rows) * float(c @ t) / math.sqrt(float(c @ c))
  return distance / len(xs), cosine / len(xs), len(groups)


def test_description_centroid_gap_matches_loop_and_hand_case():
  rng = np.random.default_rng(15)
  names = ["calm and low", "bright, fast", "a slow sad voice", "calm and low", "angry"]
  descriptions = [names[i] for i in rng.integers(0, len(names), 30)]
  speech = rng.normal(size=(30, 4))
  text = rng.normal(size=(30, 4)) + 0.5        # text rows differ within a group: their normalised mean is used
  got = metrics.description_centroid_gap(speech, text, descriptions)
  distance, cosine, count = loop_description_gap(speech, text, descriptions)
  assert got["num_descriptions"] == count == len(set(descriptions))
  assert (got["distance"], got["cosine"]) == pytest.approx((distance, cosine), rel=1e-10)
  # Hand case. "a": clips e1, e2 with text (1, 1)/sqrt2 -> centroid (1/2, 1/2), distance 1 - 1/sqrt2, cosine 1.
  # "b": clips e1, e1 with text e2 -> distance sqrt2, cosine 0. Clip-weighted: 2 clips each.
  s = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
  t = np.array([[1.0, 1.0], [3.0, 3.0], [0.0, 1.0], [0.0, 1.0]])
  got = metrics.description_centroid_gap(s, t, ["a", "a", "b", "b"])
  assert got["distance"] == pytest.approx((1 - 1 / math.sqrt(2) + math.sqrt(2)) / 2)
  assert got["cosine"] == pytest.approx(0.5) and got["num_descriptions"] == 2
  # Unique descriptions: the paired distance and the paired cosine.
  unique = metrics.description_centroid_gap(speech, text, [f"d{i}" for i in range(30)])
  xs, ys = unit_rows_loop(speech), unit_rows_loop(text)
  assert unique["distance"] == pytest.approx(np.mean([np.linalg.norm(xs[i] - ys[i]) for i in range(30)]))
  assert unique["cosine"] == pytest.approx(metrics.mean_paired_cosine(speech, text))
  assert unique["num_descriptions"] == 30
  with pytest.raises(ValueError, match="descriptions: 29 entries"):
    metrics.description_centroid_gap(speech, text, descriptions[:29])
  with pytest.raises(ValueError, match="expected strings"):
    metrics.description_centroid_gap(speech, text, descriptions[:29] + [None])


def test_modality_gap_metrics_are_the_library_functions():
  rng = np.random.default_rng(16)
  speech, text = rng.normal(size=(24, 6)), rng.normal(size=(24, 6)) + 0.2
  descriptions = [f"level {i % 5}" for i in range(24)]
  out = metrics.modality_gap_metrics(speech, text, descriptions, exact_wasserstein_max_n=20, seed=2)
  s, t = metrics.l2_normalize(speech.astype(np.float32)), metrics.l2_normalize(text.astype(np.float32))
  gap = metrics.description_centroid_gap(speech, text, descriptions)
  expected = {"mmd": metrics.mmd(s, t, seed=2), "mmd_fixed": metrics.mmd(s, t, bandwidth=1.0),
              "mmd_linear": metrics.mmd_linear(speech, text), "centroid_distance": metrics.centroid_distance(s, t),
              "paired_cosine": metrics.mean_paired_cosine(speech, text),
              "wasserstein_centered": metrics.wasserstein_centered(s, t, max_points=20, seed=2).value,
              "wasserstein_num_points": 20.0,
              "wasserstein_sliced": metrics.wasserstein(s, t, exact_max_n=0, seed=2).value,
              "description_centroid_distance": gap["distance"], "description_centroid_cosine": gap["cosine"],
              "num_descriptions": 5.0}
  assert set(out) == set(expected) | {"wasserstein"}
  for key, value in expected.items():
    assert out[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
  assert "num_descriptions" not in metrics.modality_gap_metrics(speech, text)
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.modality_gap_metrics(speech, text[:20])


# ------------------------------------------------------------------------------------------------- retrieval


def test_recall_at_k_matches_naive_ranking():
  rng = np.random.default_rng(5)
  n = 25
  sim = rng.normal(size=(n, n)) + 2.0 * np.eye(n) * rng.uniform(0, 1, n)
  r = metrics.recall_at_k(sim, ks=(1, 5, 10))
  for direction, m in (("s2t", sim), ("t2s", sim.T)):
    ranks = [list(np.argsort(-m[i])).index(i) for i in range(n)]
    for k in (1, 5, 10):
      assert r[f"r{k}_{direction}"] == pytest.approx(np.mean([rank < k for rank in ranks]))
  # All similarities equal: a uniformly random tie break finds the match at rank < k with chance k / n.
  flat = metrics.recall_at_k(np.zeros((8, 8)), ks=(1, 2))
  assert flat["r1_s2t"] == pytest.approx(1 / 8) and flat["r2_t2s"] == pytest.approx(2 / 8)
  with pytest.raises(ValueError, match="square"):
    metrics.recall_at_k(np.zeros((3, 4)))


def test_ndcg_at_k_matches_naive_loop():
  rng = np.random.default_rng(6)
  a_lab, c_lab = rng.uniform(1, 7, (6, 3)), rng.uniform(1, 7, (40, 3))
  sim = rng.normal(size=(6, 40))

  def naive(k, sigma):
    scores = []
    for i in range(6):
      rel = [math.exp(-np.abs(a_lab[i] - c_lab[j]).sum() / sigma) for j in range(40)]
      ranked = sorted(range(40), key=lambda j: -sim[i, j])
      dcg = sum(rel[j] / math.log2(r + 2) for r, j in enumerate(ranked[:k]))
      idcg = sum(v / math.log2(r + 2) for r, v in enumerate(sorted(rel, reverse=True)[:k]))
      scores.append(dcg / idcg)
    return np.mean(scores)

  assert metrics.ndcg_at_k(sim, a_lab, c_lab, k=10, sigma=1.0) == pytest.approx(naive(10, 1.0))
  assert metrics.ndcg_at_k(sim, a_lab, c_lab, k=3, sigma=2.5) == pytest.approx(naive(3, 2.5))
  assert metrics.ndcg_at_k(sim, a_lab, c_lab, k=100) == pytest.approx(naive(40, 1.0))   # k clipped to C
  ideal_sim = -np.abs(a_lab[:, None] - c_lab[None]).sum(-1)
  assert metrics.ndcg_at_k(ideal_sim, a_lab, c_lab) == pytest.approx(1.0)
  # 1-D labels work too.
  assert metrics.ndcg_at_k(sim, a_lab[:, 0], c_lab[:, 0]) <= 1.0
  with pytest.raises(ValueError, match="sim"):
    metrics.ndcg_at_k(sim[:, :5], a_lab, c_lab)


# ------------------------------------------------------------------------------------ emotion recognition


def test_ccc_hand_cases():
  x = np.array([1.0, 2.0, 3.0, 4.0])
  assert metrics.ccc(x, x) == pytest.approx(1.0)
  assert metrics.ccc(x, -x + 5) == pytest.approx(-1.0)
  v = x.var()                                                            # 1.25
  assert metrics.ccc(x, x + 1) == pytest.approx(2 * v / (2 * v + 1))    # shift: cov v, bias term 1
  assert metrics.ccc(x, 2 * x) == pytest.approx(2 * 2 * v / (v + 4 * v + 2.5 ** 2))  # cov 2v, means 2.5 and 5
  both = metrics.ccc(np.stack([x, x], 1), np.stack([x, x + 1], 1))
  np.testing.assert_allclose(both, [1.0, 2 * v / (2 * v + 1)])
  with pytest.raises(ValueError, match="shapes"):
    metrics.ccc(x, x[:3])
  with pytest.raises(ValueError, match="empty"):
    metrics.ccc(x[:0], x[:0])


def test_ccc_of_constant_inputs():
  """The documented constant-input behaviour: one constant side has no covariance (CCC 0); two equal constants
  agree perfectly (0/0 is taken as 1, the limit of CCC(x, x)); two different constants have a bias term (0)."""
  x, three = np.array([1.0, 2.0, 3.0, 4.0]), np.full(4, 3.0)
  assert metrics.ccc(three, three) == 1.0
  assert metrics.ccc(x, three) == 0.0 and metrics.ccc(three, x) == 0.0
  assert metrics.ccc(three, three + 1) == 0.0                           # cov 0, denominator (3 - 4)^2 = 1
  np.testing.assert_array_equal(metrics.ccc(np.stack([three, x], 1), np.stack([three, three], 1)), [1.0, 0.0])
  # The same definition on JAX arrays, also traced, with a finite gradient at 0/0.
  for a, b, want in ((three, three, 1.0), (x, three, 0.0), (x, x + 1, 2 * 1.25 / 3.5)):
    assert float(jax.jit(metrics.ccc)(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(want, rel=1e-6)
  grad = jax.grad(lambda a: metrics.ccc(a, jnp.asarray(three)))(jnp.asarray(three))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_zero_shot_attribute_prediction():
  levels = np.array([1.0, 2.5, 4.0, 5.5, 7.0])
  sim = np.full((5, 3), -1.0)
  sim[4, 0], sim[0, 1], sim[2, 2] = 1.0, 1.0, 1.0
  np.testing.assert_allclose(metrics.zero_shot_attribute_prediction(sim, levels, temperature=0.01),
                             [7.0, 1.0, 4.0], atol=1e-6)
  # Softmax weighting by hand for one clip.
  s = np.array([[0.1], [0.3], [0.2], [0.0], [0.4]])
  w = np.exp(s[:, 0] / 0.1) / np.exp(s[:, 0] / 0.1).sum()
  assert metrics.zero_shot_attribute_prediction(s, levels, temperature=0.1)[0] == pytest.approx(w @ levels)
  with pytest.raises(ValueError, match="prompt_levels"):
    metrics.zero_shot_attribute_prediction(sim, levels[:4])


@pytest.mark.parametrize("n,d", [(40, 6), (10, 25)])   # primal (D <= N) and dual (D > N) forms
def test_ridge_fit_matches_augmented_least_squares(n, d):
  rng = np.random.default_rng(n)
  x, y = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
  alpha = 0.7
  w, b = metrics.ridge_fit(x, y, alpha)
  # Independent reference: unpenalised intercept column, ridge rows sqrt(alpha) I appended.
  aug_x = np.concatenate([np.concatenate([x, np.ones((n, 1))], 1),
                          np.concatenate([np.sqrt(alpha) * np.eye(d), np.zeros((d, 1))], 1)])
  aug_y = np.concatenate([y, np.zeros((d, 3))])
  sol = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
  np.testing.assert_allclose(w, sol[:d], atol=1e-10)
  np.testing.assert_allclose(b, sol[d], atol=1e-10)


def test_ridge_probe_recovers_linear_targets():
  rng = np.random.default_rng(7)
  true_w = rng.normal(size=(8, 3))
  tr, te = rng.normal(size=(200, 8)), rng.normal(size=(50, 8))
  got = metrics.ridge_probe(tr, tr @ true_w + 4.0, te, te @ true_w + 4.0, alpha=1e-6)
  np.testing.assert_allclose(got, [1.0, 1.0, 1.0], atol=1e-6)
  noise = metrics.ridge_probe(tr, rng.normal(size=(200, 3)), te, rng.normal(size=(50, 3)))
  assert np.all(np.abs(noise) < 0.4)
  with pytest.raises(ValueError, match="test_x"):
    metrics.ridge_probe(tr, tr @ true_w, te[:, :5], te @ true_w)


def test_pairwise_ranking_accuracy_against_double_loop():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(30, 3)).astype(np.float32)
  y = (rng.integers(0, 5, size=(30, 3)) * 0.5).astype(np.float32)    # ties
  f[3, 0] = f[4, 0]   # a score tie counts one half
  for margin in (0.0, 0.5):
    ok = cnt = 0.0
    for i in range(30):
      for j in range(30):
        dy = y[i, 0] - y[j, 0]
        if dy != 0 and abs(dy) > margin:
          cnt += 1
          ok += 0.5 if f[i, 0] == f[j, 0] else float((f[i, 0] - f[j, 0]) * dy > 0)
    assert metrics.pairwise_ranking_accuracy(f[:, 0], y[:, 0], margin=margin, block=7) == pytest.approx(ok / cnt)
  assert metrics.pairwise_ranking_accuracy(y, y) == 1.0


# ------------------------------------------------------------------------------------------------- summarize


def test_summarize_keys_and_consistency():
  rng = np.random.default_rng(8)
  n, d = 48, 16
  labels = rng.uniform(1, 7, (n, 3))
  direction = rng.normal(size=(3, d))
  speech = labels @ direction + 0.5 * rng.normal(size=(n, d))
  text = labels @ direction + 0.5 * rng.normal(size=(n, d))
  levels = np.linspace(1, 7, 5)
  prompts = {a: np.outer(levels, direction[i]) + rng.normal(size=(5, d)) for i, a in
             enumerate(("arousal", "valence"))}
  def described(i, values):  # label rows with attribute i at the values and the others neutral (4)
    rows = np.full((len(values), 3), 4.0)
    rows[:, i] = values
    return rows @ direction

  queries = {a: described(i, np.repeat(np.arange(1.0, 8.0), 2)) for i, a in enumerate(("arousal", "valence"))}
  query_values = {a: np.repeat(np.arange(1.0, 8.0), 2) for a in queries}
  train = rng.uniform(1, 7, (60, 3))
  out = metrics.summarize(
      speech, text, labels, prompt_embeddings=prompts, prompt_levels={a: levels for a in prompts},
      query_embeddings=queries, query_values=query_values, train_speech=train @ direction, train_labels=train,
      retrieval_levels=5, retrieval_draws=30, retrieval_top_k=1, seed=0)
  expected = {"num_clips", "anchor_tau_arousal_s2t", "anchor_tau_arousal_t2s", "anchor_tau_arousal",
              "anchor_tau_valence_s2t", "anchor_tau_valence_t2s", "anchor_tau_valence", "mmd",
              "wasserstein", "wasserstein_num_points", "wasserstein_sliced", "ndcg10_s2t", "ndcg10_t2s", "ndcg10_mean",
              "ccc_probe_arousal", "ccc_probe_valence", "ccc_probe_dominance", "ccc_probe_mean",
              "aoc", "voc", "aoc_std", "voc_std", "aoc_voc_mean", "aoc_voc_num_levels", "aoc_voc_num_draws",
              "aoc_voc_top_k", "aoc_ci95_low", "aoc_ci95_high", "voc_ci95_low", "voc_ci95_high",
              "aoc_voc_num_bootstrap", "mmd_fixed", "mmd_linear", "centroid_distance", "paired_cosine",
              "wasserstein_centered"}
  expected |= {f"r{k}_{w}" for k in (1, 5, 10) for w in ("s2t", "t2s")}
  for a in ("arousal", "valence"):
    expected |= {f"ccc_zero_shot_{a}", f"prompt_tau_{a}", f"prompt_distance_tau_{a}", f"prompt_order_tau_{a}",
                 f"prompt_monotone_{a}"}
  assert set(out) == expected
  assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())
  s, t = metrics.l2_normalize(speech), metrics.l2_normalize(text)
  sim = s @ t.T
  assert out["anchor_tau_arousal_s2t"] == pytest.approx(metrics.anchor_kendall_tau(sim, labels[:, 0], labels[:, 0]))
  assert out["anchor_tau_valence_t2s"] == pytest.approx(metrics.anchor_kendall_tau(sim.T, labels[:, 1], labels[:, 1]))
  assert out["mmd"] == pytest.approx(metrics.mmd(s, t))
  assert out["wasserstein"] == pytest.approx(metrics.wasserstein(s, t).value)
  assert out["wasserstein_num_points"] == n and out["wasserstein_sliced"] <= out["wasserstein"]
  assert out["mmd_fixed"] == pytest.approx(metrics.mmd(s, t, bandwidth=1.0))
  assert out["mmd_linear"] == pytest.approx(metrics.mmd_linear(s, t), abs=1e-6)
  assert out["centroid_distance"] == pytest.approx(metrics.centroid_distance(s, t), rel=1e-5)
  assert out["paired_cosine"] == pytest.approx(metrics.mean_paired_cosine(s, t), rel=1e-5)
  assert out["wasserstein_centered"] == pytest.approx(metrics.wasserstein_centered(s, t).value, rel=1e-5)
  small = metrics.summarize(speech, text, labels, exact_wasserstein_max_n=20)   # exact W1 on 20 of 48 pairs
  assert small["wasserstein_num_points"] == 20 and 0.5 < small["wasserstein"] / out["wasserstein"] < 2.0
  assert out["r1_s2t"] == pytest.approx(metrics.recall_at_k(sim)["r1_s2t"])
  assert out["anchor_tau_arousal"] > 0.1 and out["aoc"] > 0.5      # the labels drive both modalities
  assert out["aoc_voc_mean"] == pytest.approx(0.5 * (out["aoc"] + out["voc"]))
  for name, column, attribute in (("aoc", 0, "arousal"), ("voc", 1, "valence")):  # the paper's protocol, by name
    r = metrics.retrieval_kendall_tau(metrics.l2_normalize(queries[attribute]) @ s.T, query_values[attribute],
                                      labels[:, column], num_levels=5, num_draws=30, seed=0, num_bootstrap=1000)
    assert (out[name], out[f"{name}_std"]) == pytest.approx((r["tau"], r["tau_std"]))
    assert (out[f"{name}_ci95_low"], out[f"{name}_ci95_high"]) == pytest.approx((r["ci_low"], r["ci_high"]))
    assert out[f"{name}_ci95_low"] <= out[name] + 0.05 and out[f"{name}_ci95_high"] >= out[name] - 0.05
  assert out["ccc_probe_arousal"] > 0.5
  minimal = metrics.summarize(speech, text, labels)
  assert "ccc_probe_mean" not in minimal and "aoc" not in minimal and "num_descriptions" not in minimal
  described_rows = [f"description {i % 6}" for i in range(n)]
  with_descriptions = metrics.summarize(speech, text, labels, descriptions=described_rows)
  gap = metrics.description_centroid_gap(s, t, described_rows)
  assert set(with_descriptions) - set(minimal) == {"description_centroid_distance", "description_centroid_cosine",
                                                   "num_descriptions"}
  assert with_descriptions["num_descriptions"] == 6.0
  assert with_descriptions["description_centroid_distance"] == pytest.approx(gap["distance"], rel=1e-5)
  assert with_descriptions["description_centroid_cosine"] == pytest.approx(gap["cosine"], rel=1e-5)
  assert all(with_descriptions[k] == v for k, v in minimal.items())
  with pytest.raises(ValueError, match="descriptions"):
    metrics.summarize(speech, text, labels, descriptions=described_rows[:-1])
  fixed = metrics.summarize(speech, text, labels, prompt_embeddings=prompts,
                            prompt_levels={a: levels for a in prompts}, fixed_prompt_embeddings=prompts,
                            fixed_prompt_levels={a: levels for a in prompts})
  for a in ("arousal", "valence"):  # the same prompts under both names give the same values
    for name in ("ccc_zero_shot", "prompt_tau", "prompt_distance_tau", "prompt_order_tau", "prompt_monotone"):
      assert fixed[f"{name}_fixed_{a}"] == out[f"{name}_{a}"]
  with pytest.raises(ValueError, match="labels"):
    metrics.summarize(speech, text, labels[:, :2])
  with pytest.raises(ValueError, match="attribute"):
    metrics.summarize(speech, text, labels, query_embeddings={"joy": queries["arousal"]},
                      query_values={"joy": query_values["arousal"]})


def test_summarize_paraphrase_prompts_hand_built():
  """Clips on a quarter circle by arousal; level prompts at the same angles: the ``paraphrase_`` metrics are
  there, monotone, and the zero-shot CCC equals a naive softmax-then-CCC; reversed prompts are not monotone."""
  rng = np.random.default_rng(5)
  n = 70
  labels = np.column_stack([np.repeat(np.arange(1.0, 8.0), 10), rng.uniform(1, 7, n), np.full(n, 4.0)])
  angle = lambda v: (np.asarray(v) - 1.0) / 6.0 * (np.pi / 2)
  speech = np.column_stack([np.cos(angle(labels[:, 0])), np.sin(angle(labels[:, 0])), np.zeros(n)])
  levels = np.arange(1.0, 8.0)
  prompts = np.column_stack([np.cos(angle(levels)), np.sin(angle(levels)), np.zeros(7)])
  out = metrics.summarize(speech, speech, labels, paraphrase_prompt_embeddings={"arousal": prompts},
                          paraphrase_prompt_levels={"arousal": levels}, zero_shot_temperature=0.05)
  for name in ("ccc_zero_shot", "prompt_tau", "prompt_distance_tau", "prompt_order_tau", "prompt_monotone"):
    assert f"{name}_paraphrase_arousal" in out and f"{name}_arousal" not in out
    assert f"{name}_fixed_arousal" not in out
  assert out["prompt_monotone_paraphrase_arousal"] == 1.0 and out["prompt_order_tau_paraphrase_arousal"] == 1.0
  sim = prompts @ speech.T                                       # (7, n), unit vectors already
  weights = np.exp(sim / 0.05) / np.exp(sim / 0.05).sum(axis=0)
  pred, y = levels @ weights, labels[:, 0]
  naive_ccc = 2 * np.cov(pred, y, bias=True)[0, 1] / (pred.var() + y.var() + (pred.mean() - y.mean()) ** 2)
  assert out["ccc_zero_shot_paraphrase_arousal"] == pytest.approx(naive_ccc, rel=1e-6)
  assert naive_ccc > 0.9
  reversed_ = metrics.summarize(speech, speech, labels, paraphrase_prompt_embeddings={"arousal": prompts[::-1]},
                                paraphrase_prompt_levels={"arousal": levels})
  assert reversed_["prompt_monotone_paraphrase_arousal"] == 0.0
  assert reversed_["ccc_zero_shot_paraphrase_arousal"] < 0.0
  with pytest.raises(ValueError, match="prompt_levels"):
    metrics.summarize(speech, speech, labels, paraphrase_prompt_embeddings={"arousal": prompts})


@pytest.mark.parametrize("bootstrap", [0, 100])
@pytest.mark.parametrize("full", [False, True], ids=["minimal", "everything"])
def test_summary_names_are_the_names_summarize_returns(full, bootstrap):
  """``summary_names`` (what a config is checked against before a run) names exactly what ``summarize`` returns,
  with and without each optional input."""
  rng = np.random.default_rng(11)
  n, d = 24, 6
  labels = rng.uniform(1, 7, (n, 3))
  speech, text = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  levels = np.arange(1.0, 8.0)
  prompt_sets = {"": ("arousal", "valence", "dominance"), "fixed_": ("valence",), "paraphrase_": ("dominance",)}
  queries = ("arousal", "valence") if full else ("valence",)
  kwargs = dict(query_embeddings={a: rng.normal(size=(14, d)) for a in queries},
                query_values={a: np.repeat(levels, 2) for a in queries}, retrieval_draws=5,
                retrieval_bootstrap=bootstrap)
  if full:
    for tag, attributes in prompt_sets.items():  # the keyword arguments prompt_*, fixed_prompt_*, paraphrase_prompt_*
      kwargs[f"{tag}prompt_embeddings"] = {a: rng.normal(size=(7, d)) for a in attributes}
      kwargs[f"{tag}prompt_levels"] = {a: levels for a in attributes}
    kwargs.update(train_speech=rng.normal(size=(30, d)), train_labels=rng.uniform(1, 7, (30, 3)),
                  descriptions=[f"d{i % 4}" for i in range(n)])
  out = metrics.summarize(speech, text, labels, **kwargs)
  names = metrics.summary_names(
      prompt_attributes=prompt_sets[""] if full else (), fixed_prompt_attributes=prompt_sets["fixed_"] if full else (),
      paraphrase_prompt_attributes=prompt_sets["paraphrase_"] if full else (), query_attributes=queries,
      probe=full, bootstrap=bootstrap > 0, descriptions=full)
  assert len(names) == len(set(names))
  assert set(names) == set(out)


def test_normalized_mean_and_mean_by_level():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(6, 5))
  naive = np.mean([row / np.linalg.norm(row) for row in x], axis=0)
  np.testing.assert_allclose(metrics.normalized_mean(x), naive / np.linalg.norm(naive), atol=1e-12)
  np.testing.assert_allclose(metrics.normalized_mean(10 * x), metrics.normalized_mean(x), atol=1e-12)  # scale-free
  levels = np.array([2.0, 1.0, 2.0, 1.0, 3.0, 2.0])
  got_levels, got = metrics.mean_by_level(x, levels)
  np.testing.assert_array_equal(got_levels, [1.0, 2.0, 3.0])
  for k, level in enumerate(got_levels):
    rows = [x[i] / np.linalg.norm(x[i]) for i in range(6) if levels[i] == level]
    np.testing.assert_allclose(got[k], np.mean(rows, 0) / np.linalg.norm(np.mean(rows, 0)), atol=1e-12)
  with pytest.raises(ValueError, match="levels"):
    metrics.mean_by_level(x, levels[:5])


def test_metric_files_of_earlier_releases_read_under_todays_names(tmp_path):
  old = {"aoc_mean": 0.4, "aoc_s2t": 0.3, "aoc_t2s": 0.5, "voc_mean": 0.2, "retrieval_tau_arousal": 0.9,
         "retrieval_tau_valence": 0.7, "retrieval_tau_std_valence": 0.1, "retrieval_num_draws": 100.0, "mmd": 0.4}
  path = tmp_path / "test_metrics.json"
  path.write_text(json.dumps({"step": 600, "split": "test", "metrics": old}))
  read = metrics.read_metrics_file(str(path))
  assert read["step"] == 600 and read["metrics"] == {
      "anchor_tau_arousal": 0.4, "anchor_tau_arousal_s2t": 0.3, "anchor_tau_arousal_t2s": 0.5,
      "anchor_tau_valence": 0.2, "aoc": 0.9, "voc": 0.7, "voc_std": 0.1, "aoc_voc_num_draws": 100.0, "mmd": 0.4}
  assert metrics.upgrade_metric_names(read["metrics"]) == read["metrics"]   # today's names pass unchanged
  path.write_text(json.dumps([1, 2]))
  with pytest.raises(ValueError, match="not an ERCLAP metrics file"):
    metrics.read_metrics_file(str(path))
