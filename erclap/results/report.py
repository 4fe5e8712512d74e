"""``export/report.html``: one self-contained page of an export, readable offline.

The page inlines plotly's JavaScript bundle once (``include_plotlyjs=True`` on its first figure) and requests
nothing from the network: no CDN, no fonts, no MathJax. It shows

* the run's identity: workdir, stage, loss, data, the stage-1 source, the exported step, and its whole resolved
  config folded;
* per exported split, the headline metrics under the paper's names with one line each on what they mean and the
  paper's Table 1 figures beside them (``erclap.results.paper``), with a 95 % interval where the metrics carry one
  (``<metric>_ci95_low`` / ``_ci95_high``), then every metric folded;
* a 2-D map (PCA fitted jointly on both modalities' L2-normalised embeddings) of speech (circles) and text
  (triangles), coloured by arousal or valence (buttons switch), with id, labels and description on hover. Above
  ``MAX_MAP_POINTS`` points the map shows a fixed random subset of clips (seed ``SUBSAMPLE_SEED``, both
  modalities of each), and says so;
* mean speech-text similarity against label distance (on at most ``MAX_SIMILARITY_CLIPS`` clips, said so);
* prompt-level ordering for arousal and valence: each level prompt's mean similarity against the clips' value,
  and each level against the mean value of its top 10 % of clips.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from erclap import fileio, metrics, plots, speech_source, stages, trainable
from erclap.results import paper
from erclap.schema import LABEL_NAMES

REPORT_NAME = "report.html"
MAX_MAP_POINTS = 20_000
MAX_SIMILARITY_CLIPS = 2_000
SUBSAMPLE_SEED = 0
COLOUR_ATTRIBUTES = ("arousal", "valence")
COLOUR_SCALE = "RdBu_r"
LABEL_RANGE = (1.0, 7.0)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: #555; font-size: 0.92em; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""


# ---------------------------------------------------------------------------------------------- pieces (pure)


def map_subsample(num_clips: int, max_points: int = MAX_MAP_POINTS) -> np.ndarray:
  """The clips the map shows (sorted indices): all when both modalities fit in ``max_points``, else a fixed
  random subset of ``max_points // 2`` clips (seed ``SUBSAMPLE_SEED``: the same on every export)."""
  if 2 * num_clips <= max_points:
    return np.arange(num_clips)
  rng = np.random.default_rng(SUBSAMPLE_SEED)
  return np.sort(rng.choice(num_clips, max_points // 2, replace=False))


def run_identity(config, workdir: str, step: int) -> dict[str, str]:
  """What identifies an exported run, as {label: text}: workdir, stage, loss, data, speech side, step, seed."""
  stage = stages.of(config)
  loss = config.loss + (" (joint 2N form)" if config.loss_options.get("joint", False) else "")
  held = trainable.of(config).summary  # frozen / tower frozen, pooling trained / trained
  if config.recipe.stage1:
    speech = f"stage 1 {config.recipe.stage1} in {config.model.speech_init} ({held}, {speech_source.of(config).name})"
  elif config.model.speech_init:
    speech = f"{config.model.speech_init} ({'fine-tuned' if held == 'trained' else held})"
  else:
    speech = "none: the speech tower was trained from random initialisation"
  return {
      "workdir": workdir,
      "stage": f"{stage.name}: {stage.title}",
      "loss": loss,
      "data": f"{config.data.name} (descriptions: {config.data.descriptions})",
      "speech side (stage-1 source)": speech,
      "checkpoint step": f"{step} of {config.train.num_steps}",
      "seed": str(config.seed),
      "exported": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
  }


def interval(metrics_: dict[str, float], metric: str) -> tuple[float, float] | None:
  """The 95 % interval of ``metric`` when the metrics carry one (``<metric>_ci95_low`` / ``_ci95_high``)."""
  low, high = metrics_.get(f"{metric}_ci95_low"), metrics_.get(f"{metric}_ci95_high")
  return (float(low), float(high)) if low is not None and high is not None else None


def _fmt(value) -> str:
  if isinstance(value, bool) or not isinstance(value, int | float):
    return html.escape(str(value))
  return f"{value:.4f}" if np.isfinite(value) else str(value)


def metrics_table_html(metrics_: dict[str, float], headline: Sequence[str], loss: str) -> str:
  """The headline metrics: the paper's name, ours with its interval, the paper's figures, what it means."""
  losses = [name for name in paper.PAPER_TABLE1 if name in paper.PAPER_LOSS_NAMES]
  head = "".join(f"<th>paper: {html.escape(paper.PAPER_LOSS_NAMES[n])}</th>" for n in losses)
  rows = [f"<tr><th>metric</th><th>this run ({html.escape(loss)})</th><th>95 % interval</th>{head}"
          f"<th>what it means</th></tr>"]
  for m in headline:
    if m not in metrics_:
      continue
    ci = interval(metrics_, m)
    ci_cell = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
    figures = "".join(f'<td class="num">{_fmt(paper.PAPER_TABLE1[n][m]) if m in paper.PAPER_TABLE1[n] else ""}</td>'
                      for n in losses)
    rows.append(f'<tr><td>{html.escape(paper.display_name(m))} <code>{html.escape(m)}</code></td>'
                f'<td class="num">{_fmt(metrics_[m])}</td><td class="num">{ci_cell}</td>{figures}'
                f'<td>{html.escape(paper.MEANINGS.get(m, ""))}</td></tr>')
  every = "".join(f'<tr><td><code>{html.escape(k)}</code></td><td class="num">{_fmt(v)}</td></tr>'
                  for k, v in sorted(metrics_.items()))
  return (f"<table>{''.join(rows)}</table>"
          f'<p class="note">The paper\'s figures are its Table 1 on MSP-Podcast with its own models; they are the '
          f"reference the comparison of losses is read against, not values this corpus should reach. "
          f"Definitions: docs/metrics.md.</p>"
          f"<details><summary>every metric ({len(metrics_)})</summary><table>{every}</table></details>")


def _hover(ids, labels, descriptions, modality: str) -> list[list]:
  safe = lambda text: html.escape(str(text), quote=False)
  return [[safe(ids[i]), modality, *(round(float(labels[i, a]), 3) for a in range(3)), safe(descriptions[i])]
          for i in range(len(ids))]


_HOVER = ("<b>%{customdata[0]}</b> (%{customdata[1]})<br>arousal %{customdata[2]}, valence %{customdata[3]}, "
          "dominance %{customdata[4]}<br>%{customdata[5]}<extra></extra>")


def map_figure(view, max_points: int = MAX_MAP_POINTS):
  """(plotly figure, note): the PCA map of ``view``'s speech and text embeddings, colour switchable."""
  import plotly.graph_objects as go  # heavy; only the report draws with it

  n = len(view.ids)
  shown = map_subsample(n, max_points)
  labels = np.asarray(view.labels, np.float64)
  speech = metrics.l2_normalize(np.asarray(view.speech, np.float64)[shown])
  text = metrics.l2_normalize(np.asarray(view.text, np.float64)[shown])
  xy = plots.pca_2d(np.concatenate([speech, text]))
  k = len(shown)
  ids = [view.ids[i] for i in shown]
  descriptions = [view.descriptions[i] for i in shown]
  sub = labels[shown]
  colour = {a: sub[:, LABEL_NAMES.index(a)].round(4).tolist() for a in COLOUR_ATTRIBUTES}
  first = COLOUR_ATTRIBUTES[0]
  fig = go.Figure()
  for t, (modality, rows, symbol) in enumerate((("speech", slice(0, k), "circle"),
                                                 ("text", slice(k, 2 * k), "triangle-up"))):
    fig.add_trace(go.Scatter(
        x=xy[rows, 0].round(5).tolist(), y=xy[rows, 1].round(5).tolist(), mode="markers", name=modality,
        customdata=_hover(ids, sub, descriptions, modality), hovertemplate=_HOVER,
        marker=dict(symbol=symbol, size=7, opacity=0.8, color=colour[first], colorscale=COLOUR_SCALE,
                    cmin=LABEL_RANGE[0], cmax=LABEL_RANGE[1], showscale=t == 0,
                    colorbar=dict(title=dict(text=first)), line=dict(width=0))))
  buttons = [dict(label=f"colour: {a}", method="restyle",
                  args=[{"marker.color": [colour[a], colour[a]], "marker.colorbar.title.text": [a, a]}, [0, 1]])
             for a in COLOUR_ATTRIBUTES]
  fig.update_layout(
      height=620, xaxis_title="PC 1", yaxis_title="PC 2", legend=dict(orientation="h", y=-0.12),
      margin=dict(t=60), updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, y=1.12,
                                           xanchor="left", yanchor="top", showactive=True, active=0)])
  note = f"All {n} clips: {2 * n} points."
  if k < n:
    note = (f"The map shows {k} of the split's {n} clips ({2 * k} points; it is limited to {max_points:,} points): "
            f"a fixed random subset (seed {SUBSAMPLE_SEED}), the same in every export of this split. The PCA is "
            f"fitted on the points shown.")
  return fig, note


def similarity_figure(view, max_clips: int = MAX_SIMILARITY_CLIPS):
  """(plotly figure, note): mean speech-text cosine similarity against label distance, binned."""
  import plotly.graph_objects as go

  n = len(view.ids)
  shown = map_subsample(n, 2 * max_clips)
  speech = metrics.l2_normalize(np.asarray(view.speech, np.float64)[shown])
  text = metrics.l2_normalize(np.asarray(view.text, np.float64)[shown])
  labels = np.asarray(view.labels, np.float64)[shown]
  sim = speech @ text.T
  curves = (("|Δ arousal|", np.abs(labels[:, None, 0] - labels[None, :, 0])),
            ("|Δ valence|", np.abs(labels[:, None, 1] - labels[None, :, 1])),
            ("L1 over all labels", np.abs(labels[:, None, :] - labels[None, :, :]).sum(-1)))
  fig = go.Figure()
  for name, distance in curves:
    centres, means, counts = plots.similarity_by_distance(sim, distance)
    fig.add_trace(go.Scatter(x=centres.round(4).tolist(), y=means.round(5).tolist(), mode="lines+markers",
                             name=name, customdata=counts.tolist(),
                             hovertemplate="distance %{x:.2f}: mean similarity %{y:.4f} (%{customdata} pairs)"))
  fig.add_hline(y=float(np.mean(np.diagonal(sim))), line_dash="dash", line_color="gray",
                annotation_text="matched pairs")
  fig.update_layout(height=420, xaxis_title="label distance", yaxis_title="mean cosine similarity",
                    margin=dict(t=30))
  note = f"All {n} clips." if len(shown) == n else \
      f"{len(shown)} of the split's {n} clips (a fixed random subset, seed {SUBSAMPLE_SEED})."
  return fig, note


def prompt_figure(view, attribute: str):
  """Plotly figure of the level prompts of ``attribute`` against the clips (``metrics.prompt_ordinal_consistency``);
  None without level prompts."""
  import plotly.graph_objects as go
  from plotly.subplots import make_subplots

  if not view.level_prompts:
    return None
  a = LABEL_NAMES.index(attribute)
  speech = metrics.l2_normalize(np.asarray(view.speech, np.float64))
  prompts_ = np.asarray(view.level_prompts["prompts"][attribute], np.float64)
  levels = np.asarray(view.level_prompts["prompt_levels"][attribute], np.float64)
  values = np.asarray(view.labels, np.float64)[:, a]
  prompt_sim = metrics.l2_normalize(prompts_) @ speech.T
  result = metrics.prompt_ordinal_consistency(prompt_sim, levels, values)
  fig = make_subplots(rows=1, cols=2, subplot_titles=(
      f"similarity to each level prompt vs the clips' {attribute} (signed τ {result['signed_tau']:+.3f})",
      f"level vs mean {attribute} of its top 10 % clips (order τ {result['order_tau']:+.3f})"))
  order = np.argsort(levels, kind="stable")
  for k in order:
    centres, means, _ = plots.similarity_by_distance(prompt_sim[k], values)
    fig.add_trace(go.Scatter(x=centres.round(4).tolist(), y=means.round(5).tolist(), mode="lines+markers",
                             name=f"level {levels[k]:.3g} (τ {result['tau_per_prompt'][k]:+.2f})",
                             legendgroup="levels"), row=1, col=1)
  fig.add_trace(go.Scatter(x=levels[order].tolist(), y=np.asarray(result["top_clip_values"])[order].round(4).tolist(),
                           mode="lines+markers", name="top-10 % mean", showlegend=True), row=1, col=2)
  fig.add_trace(go.Scatter(x=levels[order].tolist(), y=levels[order].tolist(), mode="lines", name="identity",
                           line=dict(dash="dash", color="gray")), row=1, col=2)
  fig.update_xaxes(title_text=f"clip {attribute}", row=1, col=1)
  fig.update_yaxes(title_text="mean similarity to the prompt", row=1, col=1)
  fig.update_xaxes(title_text="prompt level", row=1, col=2)
  fig.update_yaxes(title_text=f"mean {attribute} of the top 10 %", row=1, col=2)
  fig.update_layout(height=440, margin=dict(t=60))
  return fig


# ---------------------------------------------------------------------------------------------- the page


def build_report(views: Sequence, identity: dict[str, Any], config_json: str = "",
                 headline: Sequence[str] | None = None) -> str:
  """The whole page as one HTML string (see the module docstring).

  Args:
    views: ``erclap.results.views.SplitView`` of each exported split.
    identity: {label: text} of the run (``run_identity``).
    config_json: the resolved config, shown folded ("" = left out).
    headline: the metrics of the table (default: the cross-modal stage's headline metrics).
  """
  headline = tuple(headline or stages.CLAP.headline_metrics)
  loss = str(identity.get("loss", ""))
  bundle = [True]  # the first figure inlines plotly's bundle; the others use it

  def figure_html(fig, div_id: str) -> str:
    include, bundle[0] = bundle[0], False
    return fig.to_html(full_html=False, include_plotlyjs=include, include_mathjax=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})

  title = f"ERCLAP export: {identity.get('workdir', '')}"
  parts = [f"<h1>{html.escape(title)}</h1>", "<table>"]
  parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in identity.items()]
  parts.append("</table>")
  if config_json:
    parts.append(f"<details><summary>the resolved config</summary><pre>{html.escape(config_json)}</pre></details>")
  for view in views:
    s = html.escape(view.split)
    parts.append(f"<h2>{s}: {len(view.ids)} clips</h2>")
    parts.append(f"<h3>Metrics</h3>{metrics_table_html(view.metrics, headline, loss)}")
    fig, note = map_figure(view)
    parts.append(f"<h3>The joint space (PCA of both modalities)</h3><p class=\"note\">Circles: speech; triangles: "
                 f"text (each clip's description). Hover for a point's id, labels and description; the buttons "
                 f"switch the colour between arousal and valence. {html.escape(note)}</p>"
                 + figure_html(fig, f"map-{s}"))
    fig, note = similarity_figure(view)
    parts.append(f"<h3>Similarity vs label distance</h3><p class=\"note\">Mean cosine similarity of speech and "
                 f"text embeddings of clip pairs, binned by how far apart their labels are (it should fall with "
                 f"distance). {html.escape(note)}</p>" + figure_html(fig, f"similarity-{s}"))
    for attribute in COLOUR_ATTRIBUTES:
      fig = prompt_figure(view, attribute)
      if fig is not None:
        parts.append(f"<h3>Prompt-level ordering: {attribute}</h3><p class=\"note\">The template level prompts "
                     f"(levels 1–7 of {attribute}, the other attributes neutral) against the clips: each prompt "
                     f"should prefer clips near its level.</p>" + figure_html(fig, f"prompts-{attribute}-{s}"))
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
          + "\n".join(parts) + "\n</body></html>\n")


def write_report(path: str, views: Sequence, identity: dict[str, Any], config_json: str = "",
                 headline: Sequence[str] | None = None) -> str:
  """Writes ``build_report`` to ``path`` atomically; returns ``path``."""
  page = build_report(views, identity, config_json, headline)
  with fileio.atomic_open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path


def config_text(config) -> str:
  """The config as indented JSON for the page."""
  return json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)
