r"""What moves the paper's AOC / VOC estimator (the retrieval Kendall tau), measured on one trained model.

Reads a workdir's test-split export (``--mode=export``: ``export/test_speech.npy``, ``export/test_text.npy``,
``export/test.parquet``), embeds the retrieval query pools with the workdir's model (``erclap.inference``) and
recomputes AOC / VOC (``metrics.retrieval_kendall_tau``) under each estimator setting, with the paper's protocol
(K = 5 of the 7 levels, 4 wordings per level, M = 200 draws, top-1, every test clip, draw seed 0) as the base
that one setting at a time departs from. For each setting, the spread that each source of variation causes:

  noise 1e-6   sd (and max - min) over 20 copies of the embeddings (speech and queries) with independent relative
               noise of 1e-6 (x * (1 + 1e-6 e), e ~ N(0, 1) per element): what float rounding alone does, e.g.
               reductions summed in another order on another CPU or with another thread count;
  draw seed    sd over 20 seeds of the draws (levels and wordings);
  test set     sd over 20 random halves of the test split (which clips are in it);
  CI width     the width of the 95 % bootstrap interval (``eval.retrieval_bootstrap``, 1000 resamples).

The anchor-wise tau (``anchor_tau_*``, speech anchors against the exported description embeddings and back) is
given the same 1e-6 noise and the same test halves for comparison.

Two parts need no model: the bootstrap's cost (1000 resamples, 1000 clips, 28 queries), and its calibration on
synthetic test sets from a known population (clip values uniform on 1–7; query q at value v_q + a wording offset;
similarity -|v_q - (clip value + N(0, 1))|): the share of 200 test sets whose 95 % interval holds the estimator's
expected value (its mean over 1000 test sets of the same size).

  python benchmarks/aoc_voc_estimator.py --workdir=workdirs/demo [--repeats=20] [--out=results.json]
  python benchmarks/aoc_voc_estimator.py --calibration          # the cost and the calibration only

Prints markdown tables (benchmarks/README.md holds them) and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ATTRIBUTES = ("arousal", "valence")
NAMES = {"arousal": "AOC", "valence": "VOC"}


def _noisy(x: np.ndarray, rng: np.random.Generator, relative: float) -> np.ndarray:
  return (x * (1.0 + relative * rng.standard_normal(x.shape))).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
  from erclap import metrics
  return metrics.l2_normalize(np.asarray(x, np.float32))


class Study:
  """The model's query embeddings (any number of wordings) and the test split, and the estimator on them."""

  def __init__(self, workdir: str):
    import pandas as pd

    from erclap import inference
    export = os.path.join(workdir, "export")
    self.speech = np.load(os.path.join(export, "test_speech.npy"))
    self.text = np.load(os.path.join(export, "test_text.npy"))
    table = pd.read_parquet(os.path.join(export, "test.parquet"), columns=list(ATTRIBUTES))
    self.labels = {a: table[a].to_numpy(np.float64) for a in ATTRIBUTES}
    self.model = inference.ERCLAP.load(workdir)
    self.seed = int(self.model.config.seed)
    e = self.model.config.eval
    # The protocol the run was evaluated with (prompts.retrieval_queries: 4 wordings per value 1..7).
    self.base = dict(levels=int(e.retrieval_levels), wordings=4, draws=int(e.retrieval_draws),
                     top_k=int(e.retrieval_top_k))
    self._pools = {}

  def pool(self, attribute: str, wordings: int):
    """The query pool of ``prompts.retrieval_queries`` with ``wordings`` wordings per value 1..7: (Q, D), (Q,)."""
    from erclap import descriptions
    if (attribute, wordings) not in self._pools:
      values = np.arange(1, 8, dtype=np.float32)
      texts = descriptions.attribute_queries(attribute, values, num_wordings=wordings, seed=self.seed)
      self._pools[attribute, wordings] = self.model.embed_text(texts), np.repeat(values, wordings)
    return self._pools[attribute, wordings]

  def tau(self, attribute, *, speech=None, query=None, clips=None, seed=None, bootstrap=0, levels, wordings,
          draws, top_k):
    from erclap import metrics
    emb, values = self.pool(attribute, wordings)
    speech = self.speech if speech is None else speech
    query = emb if query is None else query
    labels = self.labels[attribute]
    if clips is not None:
      speech, labels = speech[clips], labels[clips]
    sim = _unit(query) @ _unit(speech).T
    k = max(1, int(round(0.01 * len(labels)))) if top_k == "1%" else int(top_k)
    return metrics.retrieval_kendall_tau(sim, values, labels, num_levels=levels, num_draws=draws, top_k=k,
                                         seed=self.seed if seed is None else seed, num_bootstrap=bootstrap)

  def spreads(self, setting: dict, repeats: int) -> dict:
    """Value, 1e-6-noise spread, draw-seed spread, half-test-set spread and CI width of one setting."""
    rng = np.random.default_rng(12345)
    n = len(self.speech)
    halves = [rng.permutation(n)[: n // 2] for _ in range(repeats)]
    out = {}
    for a in ATTRIBUTES:
      emb, _ = self.pool(a, setting["wordings"])
      base = self.tau(a, bootstrap=1000, **setting)
      noise = [self.tau(a, speech=_noisy(self.speech, rng, 1e-6), query=_noisy(emb, rng, 1e-6), **setting)["tau"]
               for _ in range(repeats)]
      seeds = [self.tau(a, seed=1000 + s, **setting)["tau"] for s in range(repeats)]
      half = [self.tau(a, clips=c, **setting)["tau"] for c in halves]
      out[a] = dict(value=base["tau"], ci_low=base["ci_low"], ci_high=base["ci_high"],
                    noise_sd=float(np.std(noise)), noise_range=float(np.ptp(noise)), seed_sd=float(np.std(seeds)),
                    half_sd=float(np.std(half)), half_mean=float(np.mean(half)))
    return out

  def anchor_tau(self, repeats: int) -> dict:
    """The anchor-wise tau: value, spread under 1e-6 noise and over the same test halves as ``spreads``."""
    from erclap import metrics
    rng = np.random.default_rng(12345)
    n = len(self.speech)
    halves = [rng.permutation(n)[: n // 2] for _ in range(repeats)]
    out = {}
    for a in ATTRIBUTES:
      def anchor(s, t, rows=slice(None), y=self.labels[a]):
        sim = _unit(s[rows]) @ _unit(t[rows]).T
        return 0.5 * (metrics.anchor_kendall_tau(sim, y[rows], y[rows])
                      + metrics.anchor_kendall_tau(np.ascontiguousarray(sim.T), y[rows], y[rows]))
      noise = [anchor(_noisy(self.speech, rng, 1e-6), _noisy(self.text, rng, 1e-6)) for _ in range(repeats)]
      half = [anchor(self.speech, self.text, c) for c in halves]
      out[a] = dict(value=anchor(self.speech, self.text), noise_sd=float(np.std(noise)),
                    noise_range=float(np.ptp(noise)), half_sd=float(np.std(half)))
    return out

  def noise_levels(self, levels, repeats: int) -> dict:
    """sd of AOC / VOC (the run's protocol) and of the anchor-wise tau over copies with relative noise of each
    size on the embeddings."""
    from erclap import metrics
    rng = np.random.default_rng(2468)
    out = {}
    for level in levels:
      row = {}
      for a in ATTRIBUTES:
        emb, _ = self.pool(a, self.base["wordings"])
        y = self.labels[a]
        taus, anchors = [], []
        for _ in range(repeats):
          s, t, q = (_noisy(x, rng, level) for x in (self.speech, self.text, emb))
          taus.append(self.tau(a, speech=s, query=q, **self.base)["tau"])
          sim = _unit(s) @ _unit(t).T
          anchors.append(0.5 * (metrics.anchor_kendall_tau(sim, y, y)
                                + metrics.anchor_kendall_tau(np.ascontiguousarray(sim.T), y, y)))
        row[a] = dict(tau_sd=float(np.std(taus)), anchor_sd=float(np.std(anchors)))
      out[level] = row
    return out

  def test_size(self, sizes, repeats: int) -> dict:
    """Mean and sd of AOC / VOC over random test subsets of each size (base protocol), and the mean CI width."""
    rng = np.random.default_rng(777)
    out = {}
    for size in sizes:
      subsets = [rng.permutation(len(self.speech))[:size] for _ in range(repeats)]
      row = {}
      for a in ATTRIBUTES:
        results = [self.tau(a, clips=c, bootstrap=1000 if i < 5 else 0, **self.base) for i, c in enumerate(subsets)]
        taus = [r["tau"] for r in results]
        widths = [r["ci_high"] - r["ci_low"] for r in results[:5]]
        row[a] = dict(mean=float(np.mean(taus)), sd=float(np.std(taus)), ci_width=float(np.mean(widths)))
      out[size] = row
    return out


def bootstrap_cost(repeats: int = 5) -> float:
  """Seconds per retrieval_kendall_tau call with 1000 resamples minus without, 1000 clips x 28 queries."""
  from erclap import metrics
  rng = np.random.default_rng(0)
  clips = rng.uniform(1, 7, 1000)
  values = np.repeat(np.arange(1.0, 8.0), 4)
  sim = (-np.abs(values[:, None] - clips[None] - rng.normal(0, 1, 1000))).astype(np.float32)
  times = {}
  for b in (0, 1000):
    start = time.perf_counter()
    for _ in range(repeats):
      metrics.retrieval_kendall_tau(sim, values, clips, num_bootstrap=b)
    times[b] = (time.perf_counter() - start) / repeats
  return times[1000] - times[0]


def calibration(sizes=(120, 500, 1000), top_ks=(1, 5), sets: int = 200, reference_sets: int = 1000) -> list:
  """Coverage of the 95 % interval of the expected value on synthetic test sets (see the module docstring)."""
  from erclap import metrics
  values = np.repeat(np.arange(1.0, 8.0), 4) + np.tile([-0.3, -0.1, 0.1, 0.3], 7)
  levels = np.repeat(np.arange(1.0, 8.0), 4)
  rows = []
  for n in sizes:
    for k in top_ks:
      rng = np.random.default_rng([n, k])

      def test_set(rng=rng, n=n):
        clips = rng.uniform(1, 7, n)
        return -np.abs(values[:, None] - clips[None] - rng.normal(0, 1, n)), clips

      def estimate(seed, bootstrap=0, test_set=test_set, k=k):
        sim, clips = test_set()
        return metrics.retrieval_kendall_tau(sim, levels, clips, num_levels=5, num_draws=200, top_k=k, seed=seed,
                                             num_bootstrap=bootstrap)

      expected = np.mean([estimate(i)["tau"] for i in range(reference_sets)])
      results = [estimate(10_000 + i, bootstrap=1000) for i in range(sets)]
      estimates = np.array([r["tau"] for r in results])
      rows.append(dict(n=n, top_k=k, expected=float(expected), sd=float(estimates.std()),
                       width=float(np.mean([r["ci_high"] - r["ci_low"] for r in results])),
                       coverage=float(np.mean([r["ci_low"] <= expected <= r["ci_high"] for r in results]))))
  return rows


def _cell(row, key, digits=3):
  return " / ".join(f"{row[a][key]:.{digits}f}" for a in ATTRIBUTES)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="workdirs/demo")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--calibration", action="store_true", help="only the bootstrap's cost and calibration")
  parser.add_argument("--out", default="", help="JSON of every figure (default <workdir>/aoc_voc_estimator.json)")
  args = parser.parse_args()
  start = time.time()
  if args.calibration:
    print(f"bootstrap cost: {bootstrap_cost():.3f} s per attribute (1000 resamples, 1000 clips, 28 queries)\n")
    print("| test clips | top_k | expected value | sd over test sets | mean 95 % CI width | coverage |")
    print("|---|---|---|---|---|---|")
    for r in calibration():
      print(f"| {r['n']} | {r['top_k']} | {r['expected']:.3f} | {r['sd']:.3f} | {r['width']:.3f} | "
            f"{r['coverage']:.2f} |", flush=True)
    print(f"\n{time.time() - start:.0f} s")
    return
  study = Study(args.workdir)
  p = study.base
  settings = [(f"protocol of the run (K={p['levels']}, 4 wordings, M={p['draws']}, top-{p['top_k']})", {})]
  settings += [(f"top_k = {k}", dict(top_k=k)) for k in (1, 3, 5, "1%") if k != p["top_k"]]
  settings += [(f"{w} wording{'s' if w > 1 else ''} per level", dict(wordings=w)) for w in (1, 2, 8)]
  settings += [(f"K = {k} levels per draw", dict(levels=k)) for k in (3, 5, 7) if k != p["levels"]]
  settings += [(f"M = {m} draws", dict(draws=m)) for m in (50, 200, 1000, 5000) if m != p["draws"]]
  rows = []
  for title, change in settings:
    result = study.spreads(dict(p, **change), args.repeats)
    rows.append((title, dict(p, **change), result))
    print(f"[{time.time() - start:6.1f} s] {title}: {_cell(result, 'value', 4)}", flush=True)
  sizes = study.test_size((60, 120, 250, 500), args.repeats)
  anchor = study.anchor_tau(args.repeats)
  noise = study.noise_levels((1e-6, 1e-5, 1e-4, 1e-3, 1e-2), max(5, args.repeats // 2))

  print(f"\nAOC / VOC of {args.workdir} ({len(study.speech)} test clips), each cell 'AOC / VOC':\n")
  print("| setting | value | 95 % CI | sd, 1e-6 noise | max - min, 1e-6 noise | sd, draw seed | sd, test half |")
  print("|---|---|---|---|---|---|---|")
  for title, _, r in rows:
    ci = " / ".join(f"[{r[a]['ci_low']:.3f}, {r[a]['ci_high']:.3f}]" for a in ATTRIBUTES)
    print(f"| {title} | {_cell(r, 'value')} | {ci} | {_cell(r, 'noise_sd')} | {_cell(r, 'noise_range')} | "
          f"{_cell(r, 'seed_sd')} | {_cell(r, 'half_sd')} |")
  print(f"| anchor-wise tau (anchor_tau_arousal / _valence) | {_cell(anchor, 'value', 4)} | | "
        f"{_cell(anchor, 'noise_sd', 6)} | {_cell(anchor, 'noise_range', 6)} | | {_cell(anchor, 'half_sd')} |")
  print("\nTest-set size (random subsets, the run's protocol), 'AOC / VOC':\n")
  print("| clips | mean | sd over subsets | mean 95 % CI width |")
  print("|---|---|---|---|")
  for size, r in sizes.items():
    print(f"| {size} | {_cell(r, 'mean')} | {_cell(r, 'sd')} | {_cell(r, 'ci_width')} |")
  print("\nRelative noise on the embeddings (speech, descriptions, queries), sd over copies, 'AOC / VOC':\n")
  print("| noise | sd of AOC / VOC | sd of the anchor-wise tau |")
  print("|---|---|---|")
  for level, r in noise.items():
    print(f"| {level:g} | {_cell(r, 'tau_sd')} | {_cell(r, 'anchor_sd', 6)} |")
  out = args.out or os.path.join(args.workdir, "aoc_voc_estimator.json")
  with open(out, "w") as f:
    json.dump(dict(settings=[dict(title=t, setting={k: str(v) for k, v in s.items()}, result=r) for t, s, r in rows],
                   test_size={str(k): v for k, v in sizes.items()}, anchor_tau=anchor,
                   noise={str(k): v for k, v in noise.items()}), f, indent=1)
  print(f"\n{time.time() - start:.0f} s; figures in {out}")


if __name__ == "__main__":
  main()
