"""A sweep's summary: one row per run, runs grouped over seeds with Student-t intervals, a Markdown table, plots.

``write_summary`` writes into the sweep's directory (``<root>/<sweep>/``, beside the runs' workdirs):

* ``summary.csv`` — one row per run of the sweep, never dropping one: ``run`` (its workdir name), ``status``
  (``erclap.results.runs.STATUSES``), ``error``, ``step``, every swept key under its dotted name, ``metrics_from``
  and every metric under its metrics-file name; a run without a metric has an empty cell, never a zero.
* ``summary_groups.csv`` — the runs grouped by every swept key except ``seed``: ``runs`` (all runs of the group),
  ``n`` (its finished runs), and per metric ``<metric>_mean``, ``_sd`` (sample standard deviation), ``_ci95_low``,
  ``_ci95_high`` (Student t, ``erclap.results.stats``) over the finished runs that have it; sd and interval are
  empty for one run.
* ``summary.md`` — the groups' headline metrics (mean ± sd [95 % CI], n), the best group first by the base
  config's ``checkpoint.best_metric``; the paper's Table 1 figures of those metrics that it reports, for
  reference; the runs that did not finish, and one PNG per headline metric (``summary_<metric>.png``: its group
  means with their intervals against each swept axis).

The functions that build the tables are pure (runs and their ``RunResult`` in, rows out); ``launch/sweep.py
--summarize`` lists the runs and reads each one with ``erclap.results.runs.read_run``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless

import matplotlib.pyplot as plt

from erclap import fileio
from erclap.results import paper, stats
from erclap.results.runs import NOT_STARTED, STATUSES, RunResult
from erclap.run_status import FINISHED

SEED_KEY = "seed"
STAT_SUFFIXES = ("mean", "sd", "ci95_low", "ci95_high")


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One run of a sweep: its name (its workdir's last part), its workdir and every swept key's value in it."""
  name: str
  workdir: str
  values: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Group:
  """The runs of one combination of the swept keys other than ``seed``."""
  values: dict[str, Any]
  runs: list[str]
  n: int                                # finished runs
  stats: dict[str, stats.Summary]       # per metric, over the finished runs that have it


@dataclasses.dataclass(frozen=True)
class SummaryFiles:
  csv: str
  groups_csv: str
  markdown: str
  plots: list[str]


# ---------------------------------------------------------------------------------------------- tables (pure)


def metric_names(results: Sequence[RunResult], first: Sequence[str] = ()) -> list[str]:
  """Every metric any run has: those of ``first`` (e.g. the headline metrics) in their order, then the rest sorted."""
  present = set().union(*(r.metrics for r in results)) if results else set()
  return [m for m in first if m in present] + sorted(present - set(first))


def group_keys(keys: Sequence[str]) -> list[str]:
  return [k for k in keys if k != SEED_KEY]


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value) if math.isfinite(value) else str(value)
  return str(value)


def run_rows(runs: Sequence[SweepRun], results: Sequence[RunResult], keys: Sequence[str],
             metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
  """The header and rows of ``summary.csv`` (one row per run, in the sweep's order).

  Args:
    runs: the sweep's runs.
    results: ``read_run`` of each run, in the same order.
    keys: the swept keys (columns, in this order).
    metrics: the metric columns (``metric_names``).
  """
  if len(runs) != len(results):
    raise ValueError(f"{len(runs)} runs but {len(results)} results")
  header = ["run", "status", "error", "step", *keys, "metrics_from", *metrics]
  rows = []
  for run, result in zip(runs, results, strict=True):
    rows.append([run.name, result.status, result.error, _cell(result.step),
                 *(_cell(run.values.get(k)) for k in keys), result.metrics_from,
                 *(_cell(result.metrics.get(m)) for m in metrics)])
  return header, rows


def groups(runs: Sequence[SweepRun], results: Sequence[RunResult], keys: Sequence[str],
           metrics: Sequence[str]) -> list[Group]:
  """The runs grouped by every swept key but ``seed`` (groups in the order of their first run), with each metric's
  statistics over the group's finished runs (non-finite values left out)."""
  by_key: dict[str, tuple[dict, list[tuple[SweepRun, RunResult]]]] = {}
  for run, result in zip(runs, results, strict=True):
    values = {k: run.values.get(k) for k in group_keys(keys)}
    by_key.setdefault(repr(list(values.values())), (values, []))[1].append((run, result))
  out = []
  for values, members in by_key.values():
    finished = [r for _, r in members if r.status == FINISHED]
    summaries = {}
    for m in metrics:
      x = [r.metrics[m] for r in finished if m in r.metrics and math.isfinite(r.metrics[m])]
      summaries[m] = stats.describe(x)
    out.append(Group(values, [run.name for run, _ in members], len(finished), summaries))
  return out


def group_rows(group_list: Sequence[Group], keys: Sequence[str],
               metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
  """The header and rows of ``summary_groups.csv``."""
  keys = group_keys(keys)
  header = [*keys, "runs", "n", *(f"{m}_{s}" for m in metrics for s in STAT_SUFFIXES)]
  rows = []
  for g in group_list:
    cells = [_cell(g.values[k]) for k in keys] + [str(len(g.runs)), str(g.n)]
    for m in metrics:
      s = g.stats[m]
      cells += [_cell(s.mean), _cell(s.sd), _cell(s.ci_low), _cell(s.ci_high)]
    rows.append(cells)
  return header, rows


def ranking_metric(best_metric: str, headline: Sequence[str]) -> tuple[str, str]:
  """(the metric groups are ordered by, why): the base config's ``checkpoint.best_metric``, else the first
  headline metric."""
  if best_metric:
    return best_metric, "the base config's checkpoint.best_metric"
  return (headline[0], "the first headline metric; checkpoint.best_metric is unset") if headline else ("", "")


def order_groups(group_list: Sequence[Group], metric: str, mode: str = "max") -> list[Group]:
  """Best group first by its mean of ``metric`` (``mode`` "max" or "min"); groups without it last, in order."""
  if mode not in ("max", "min"):
    raise ValueError(f"mode={mode!r}: 'max' or 'min'")
  sign = -1.0 if mode == "max" else 1.0
  ranked = [g for g in group_list if metric in g.stats and g.stats[metric].mean is not None]
  rest = [g for g in group_list if g not in ranked]
  return sorted(ranked, key=lambda g: sign * g.stats[metric].mean) + rest


def format_stat(s: stats.Summary, digits: int = 4) -> str:
  """``mean ± sd [low, high]`` (n >= 2), ``mean`` (n = 1) or ``–`` (none)."""
  if s.mean is None:
    return "–"
  if s.sd is None:
    return f"{s.mean:.{digits}f}"
  return f"{s.mean:.{digits}f} ± {s.sd:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"


def paper_rows(table_metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
  """The paper's Table 1 figures (``erclap.results.paper``) of those of ``table_metrics`` it reports: the header
  (its losses' names, then the metrics) and one row per loss; ([], []) when it reports none of them."""
  reported = [m for m in table_metrics if any(m in figures for figures in paper.PAPER_TABLE1.values())]
  if not reported:
    return [], []
  rows = [[paper.PAPER_LOSS_NAMES.get(loss, loss), *(f"{figures[m]:.3f}" if m in figures else "–" for m in reported)]
          for loss, figures in paper.PAPER_TABLE1.items()]
  return ["the paper (Table 1)", *(paper.display_name(m) for m in reported)], rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  escape = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
  return ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(map(escape, row)) + " |" for row in rows)]


def format_markdown(sweep_name: str, runs: Sequence[SweepRun], results: Sequence[RunResult], keys: Sequence[str],
                    group_list: Sequence[Group], table_metrics: Sequence[str], ranking: tuple[str, str],
                    best_mode: str, plots: Sequence[str] = ()) -> str:
  """``summary.md``: the status counts, the grouped table (best first), the unfinished runs and the plots."""
  counts = {s: sum(r.status == s for r in results) for s in STATUSES}
  lines = [f"# Sweep `{sweep_name}`: {len(runs)} runs",
           "", ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) + ".", ""]
  metric, why = ranking
  keys_text = ", ".join(f"`{k}`" for k in group_keys(keys)) or "nothing (one group)"
  seeds = " (seeds pooled)" if SEED_KEY in keys else ""
  order = f"best first by `{metric}` ({best_mode}; {why})" if metric else "in sweep order"
  lines += [f"Runs grouped by {keys_text}{seeds}, {order}. Each cell: mean ± sample sd [95 % Student-t interval] "
            f"over the group's finished runs (one run: its value alone); n = finished runs / runs. Metrics come "
            f"from each run's export of the test split when it has one, else from its last evaluation "
            f"(`metrics_from` in summary.csv).", ""]
  header = [*group_keys(keys), "n", *(paper.display_name(m) for m in table_metrics)]
  rows = [[_cell(g.values[k]) for k in group_keys(keys)] + [f"{g.n}/{len(g.runs)}"]
          + [format_stat(g.stats[m]) for m in table_metrics] for g in group_list]
  lines += _md_table(header, rows)
  paper_header, paper_figures = paper_rows(table_metrics)
  if paper_figures:
    lines += ["", "The paper's figures for reference (EmotionRankCLAP, Table 1: MSP-Podcast with the authors' models "
              "and protocol; a comparison of losses is read against them, they are not values another corpus or "
              "model should reach):", ""]
    lines += _md_table(paper_header, paper_figures)
  unfinished = [(run, r) for run, r in zip(runs, results, strict=True) if r.status != FINISHED]
  if unfinished:
    lines += ["", "## Runs not finished", ""]
    lines += _md_table(["run", "status", "step", "error"],
                       [[run.name, r.status, _cell(r.step), r.error] for run, r in unfinished])
  if plots:
    lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots


def _is_number(v: Any) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool)


def _determines(a: str, b: str, group_list: Sequence[Group]) -> bool:
  """Whether every value of key ``a`` comes with one value of key ``b`` (``b`` derived from ``a``, like a
  micro-batch size set from the batch size)."""
  seen: dict[str, str] = {}
  return all(seen.setdefault(repr(g.values[a]), repr(g.values[b])) == repr(g.values[b]) for g in group_list)


def plot_axes(group_list: Sequence[Group], keys: Sequence[str]) -> list[str]:
  """The swept keys that get a panel: those with more than one value, except one derived from another key that
  does not derive from it in turn."""
  varied = [k for k in group_keys(keys) if len({repr(g.values[k]) for g in group_list}) > 1]
  return [k for k in varied if not any(_determines(o, k, group_list) and not _determines(k, o, group_list)
                                       for o in varied if o != k)]


def plot_metric(path: str, metric: str, group_list: Sequence[Group], keys: Sequence[str]) -> str | None:
  """One PNG: the group means of ``metric`` (error bars: the 95 % intervals) against each swept axis (``plot_axes``),
  one panel per axis, one line per combination of the other axes that the panel's axis does not determine.
  None (nothing written) without data or axes."""
  axes_keys = plot_axes(group_list, keys)
  if not axes_keys or not any(g.stats[metric].mean is not None for g in group_list):
    return None
  fig, axes = plt.subplots(1, len(axes_keys), figsize=(5.2 * len(axes_keys), 4.2), squeeze=False)
  for ax, key in zip(axes[0], axes_keys, strict=True):
    values = list(dict.fromkeys(g.values[key] for g in group_list))
    numeric = all(_is_number(v) for v in values)
    position = {repr(v): (float(v) if numeric else i) for i, v in enumerate(values)}
    others = [k for k in group_keys(keys) if k != key and not _determines(key, k, group_list)
              and len({repr(g.values[k]) for g in group_list}) > 1]
    lines: dict[str, list[Group]] = {}
    for g in group_list:
      lines.setdefault(", ".join(f"{k}={g.values[k]}" for k in others), []).append(g)
    for label, members in lines.items():
      pts = sorted(((position[repr(g.values[key])], g.stats[metric]) for g in members
                    if g.stats[metric].mean is not None), key=lambda p: p[0])
      if not pts:
        continue
      x = [p for p, _ in pts]
      y = [s.mean for _, s in pts]
      err = [[s.mean - s.ci_low if s.ci_low is not None else 0.0 for _, s in pts],
             [s.ci_high - s.mean if s.ci_high is not None else 0.0 for _, s in pts]]
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label or None)
    if numeric and all(v > 0 for v in values) and max(values) / min(values) >= 20:
      ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(paper.display_name(metric))
    if others and len(lines) <= 12:
      ax.legend(fontsize=7, loc="best")
  fig.suptitle(f"{paper.display_name(metric)}: group means, 95 % intervals over seeds")
  try:
    with fileio.atomic_path(path) as tmp:
      fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
  finally:
    plt.close(fig)
  return path


# ---------------------------------------------------------------------------------------------- files


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return buffer.getvalue()


def write_summary(sweep_dir: str, sweep_name: str, runs: Sequence[SweepRun], results: Sequence[RunResult],
                  keys: Sequence[str], headline: Sequence[str], best_metric: str = "",
                  best_mode: str = "max") -> SummaryFiles:
  """Writes ``summary.csv``, ``summary_groups.csv``, ``summary.md`` and the plots into ``sweep_dir``.

  Args:
    sweep_dir: ``<root>/<sweep>`` (it exists).
    sweep_name: for the page's title.
    runs: every run of the sweep, in its order.
    results: ``read_run`` of each run.
    keys: the swept keys, in order (``seed`` among them when seeds are swept).
    headline: the stage's headline metrics (``erclap.stages``): the Markdown table's columns and the plots.
    best_metric, best_mode: the base config's ``checkpoint.best_metric`` / ``best_mode`` (group order).

  Returns:
    The paths written.
  """
  metrics = metric_names(results, headline)
  group_list = groups(runs, results, keys, metrics)
  ranking = ranking_metric(best_metric, [m for m in headline if m in metrics])
  if ranking[0]:
    group_list = order_groups(group_list, ranking[0], best_mode if best_metric else "max")
  table_metrics = [m for m in headline if m in metrics]
  if ranking[0] in metrics and ranking[0] not in table_metrics:
    table_metrics.insert(0, ranking[0])
  files = SummaryFiles(csv=os.path.join(sweep_dir, "summary.csv"),
                       groups_csv=os.path.join(sweep_dir, "summary_groups.csv"),
                       markdown=os.path.join(sweep_dir, "summary.md"), plots=[])
  with fileio.atomic_open(files.csv, "w", newline="") as f:
    f.write(_csv_text(*run_rows(runs, results, keys, metrics)))
  with fileio.atomic_open(files.groups_csv, "w", newline="") as f:
    f.write(_csv_text(*group_rows(group_list, keys, metrics)))
  for m in table_metrics:
    written = plot_metric(os.path.join(sweep_dir, f"summary_{m}.png"), m, group_list, keys)
    if written:
      files.plots.append(written)
  with fileio.atomic_open(files.markdown, "w") as f:
    f.write(format_markdown(sweep_name, runs, results, keys, group_list, table_metrics, ranking,
                            best_mode if best_metric else "max", files.plots))
  return files


def never_ran(results: Sequence[RunResult]) -> bool:
  """True when no run of the sweep has started."""
  return all(r.status == NOT_STARTED for r in results)


def swept_keys(overrides: Sequence[Mapping[str, Any]]) -> list[str]:
  """The swept keys of a sweep: every key any of its runs overrides, in first-seen order."""
  return list(dict.fromkeys(k for o in overrides for k in o))
