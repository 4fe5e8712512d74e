"""The views of an export: TensorBoard projector files and report.html.

Built from synthetic splits (fast), and from one real export of the suite's trained workdir read through the real
viewers: the `tensorboard` program's projector API, and the report opened in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse

import numpy as np
import pandas as pd
import pytest
import train_helpers as th
import viewer_helpers as vh

from erclap import export
from erclap.results import projector, report, views


def _view(n: int, d: int = 8, seed: int = 0, **kw) -> views.SplitView:
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  labels = rng.uniform(1, 7, (n, 3))
  return views.SplitView(
      split=kw.pop("split", "test"), ids=[f"clip-{i:05d}" for i in range(n)], labels=labels,
      descriptions=[f"a voice\twith <b>tab</b> {i}\nand a newline" for i in range(n)],
      speech=unit(rng.standard_normal((n, d))).astype(np.float32),
      text=unit(rng.standard_normal((n, d))).astype(np.float32), metrics=kw.pop("metrics", {"aoc": 0.5}), **kw)


# ---------------------------------------------------------------------------------------------- projector files


def test_projector_files_hold_both_modalities_and_one_metadata_table(tmp_path):
  view = _view(5)
  config_path = projector.write_projector(str(tmp_path), [view])
  text = open(config_path).read()
  assert 'tensor_name: "test: speech + text"' in text and "tensor_shape: 10" in text and "tensor_shape: 8" in text
  tensor = np.fromfile(tmp_path / "projector" / "test.bytes", np.float32).reshape(10, 8)
  np.testing.assert_array_equal(tensor, np.concatenate([view.speech, view.text]))
  rows = (tmp_path / "projector" / "test_metadata.tsv").read_text().splitlines()
  assert rows[0].split("\t") == ["modality", "split", "id", "arousal", "valence", "dominance", "description"]
  assert len(rows) == 11 and all(len(r.split("\t")) == 7 for r in rows)
  assert rows[1].split("\t")[:3] == ["speech", "test", "clip-00000"] and rows[6].startswith("text\ttest\tclip-00000")
  assert float(rows[2].split("\t")[4]) == pytest.approx(view.labels[1, 1], rel=1e-5)
  assert rows[1].split("\t")[6] == "a voice with <b>tab</b> 0 and a newline"


def test_a_tensor_that_reads_as_text_is_written_as_tsv(tmp_path):
  # All zeros are valid UTF-8: the projector plugin would parse such a .bytes file as TSV, so TSV it is.
  view = _view(3)
  view = views.SplitView(**{**view.__dict__, "speech": np.zeros((3, 8), np.float32),
                            "text": np.full((3, 8), 1 / 3, np.float32) * 0})
  projector.write_projector(str(tmp_path), [view])
  assert not (tmp_path / "projector" / "test.bytes").exists()
  back = np.loadtxt(tmp_path / "projector" / "test.tsv", delimiter="\t", dtype=np.float32)
  np.testing.assert_array_equal(back, np.zeros((6, 8)))
  assert 'tensor_path: "projector/test.tsv"' in (tmp_path / "projector_config.pbtxt").read_text()


# ---------------------------------------------------------------------------------------------- report pieces


def test_map_subsample_is_deterministic_and_within_the_limit():
  np.testing.assert_array_equal(report.map_subsample(100), np.arange(100))
  shown = report.map_subsample(30_000)
  assert len(shown) == report.MAX_MAP_POINTS // 2 and np.all(np.diff(shown) > 0)
  np.testing.assert_array_equal(shown, report.map_subsample(30_000))


def test_a_large_split_is_subsampled_and_the_page_says_so():
  fig, note = report.map_figure(_view(12_000, d=4))
  assert sum(len(trace.x) for trace in fig.data) == report.MAX_MAP_POINTS
  assert "10000 of the split's 12000 clips" in note and "20,000 points" in note
  fig, note = report.map_figure(_view(50))
  assert sum(len(trace.x) for trace in fig.data) == 100 and note == "All 50 clips: 100 points."


def test_report_shows_intervals_only_where_the_metrics_carry_them():
  with_ci = {"aoc": 0.55, "aoc_ci95_low": 0.5, "aoc_ci95_high": 0.6, "voc": 0.61}
  page = report.metrics_table_html(with_ci, ("aoc", "voc"), "rnc")
  aoc_row = next(r for r in page.split("<tr>") if "<code>aoc</code>" in r)
  voc_row = next(r for r in page.split("<tr>") if "<code>voc</code>" in r)
  assert "[0.5000, 0.6000]" in aoc_row and "0.5520" in aoc_row  # ours, its interval, the paper's RNC AOC
  assert "[" not in voc_row and "0.6160" in voc_row and "0.5050" in voc_row
  assert report.interval({"aoc": 0.5}, "aoc") is None


def test_report_page_is_self_contained():
  page = report.build_report([_view(40, level_prompts=None)], {"workdir": "/w/run", "loss": "rnc"}, "{}")
  assert len(re.findall(r"plotly\.js v\d", page)) == 1  # the bundle, inlined once
  assert not re.findall(r"<script[^>]*\bsrc\s*=", page) and "<link" not in page  # nothing loaded from elsewhere
  outside_scripts = re.sub(r"<script.*?</script>", "", page, flags=re.S)
  assert "http:" not in outside_scripts and "https:" not in outside_scripts


# ---------------------------------------------------------------------------------------------- one real export


@pytest.fixture(scope="module")
def exported(data_dir, trained_workdir, tmp_path_factory):
  """(export dir, its test split as a DataFrame): one export of a copy of the suite's trained workdir."""
  workdir = str(tmp_path_factory.mktemp("views") / "run")
  shutil.copytree(os.path.join(trained_workdir, "checkpoints"), os.path.join(workdir, "checkpoints"))
  export.export_embeddings(th.resolved(th.tiny_config(data_dir, **th.TRAINED_STEPS), workdir, "export"), workdir)
  out = os.path.join(workdir, "export")
  return out, pd.read_parquet(os.path.join(out, "test.parquet"))


@pytest.mark.slow
def test_tensorboard_projector_serves_the_exported_embeddings(exported):
  out, frame = exported
  speech = np.stack(frame["speech_embedding"].to_numpy())
  text = np.stack(frame["text_embedding"].to_numpy())
  name = urllib.parse.quote(projector.tensor_name("test"))
  with vh.tensorboard(out) as url:
    runs = vh.poll(lambda: json.loads(vh.get(f"{url}/data/plugin/projector/runs")), lambda r: r == ["."],
                   what="the projector run")
    info = json.loads(vh.get(f"{url}/data/plugin/projector/info?run=."))
    raw = vh.get(f"{url}/data/plugin/projector/tensor?run=.&name={name}")
    metadata = vh.get(f"{url}/data/plugin/projector/metadata?run=.&name={name}").decode()
  assert runs == ["."]
  [embedding] = info["embeddings"]
  assert embedding["tensorName"] == projector.tensor_name("test")
  assert embedding["tensorShape"] == [2 * len(frame), speech.shape[1]]
  served = np.frombuffer(raw, np.float32).reshape(2 * len(frame), -1)
  np.testing.assert_array_equal(served, np.concatenate([speech, text]))  # the Parquet rows, bit for bit
  rows = [line.split("\t") for line in metadata.splitlines()]
  assert rows[0] == ["modality", "split", "id", "arousal", "valence", "dominance", "description"]
  assert [r[2] for r in rows[1:]] == list(frame["id"]) * 2
  assert [r[0] for r in rows[1:]] == ["speech"] * len(frame) + ["text"] * len(frame)
  assert [r[6] for r in rows[1:len(frame) + 1]] == list(frame["description"])


@pytest.mark.slow
def test_report_in_headless_chromium(exported):
  executable = vh.chromium_or_skip()
  from playwright.sync_api import sync_playwright  # the test extra's driver of the system Chromium

  out, frame = exported
  page_url = "file://" + os.path.join(out, report.REPORT_NAME)
  requests, errors = [], []
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=executable, args=vh.CHROMIUM_ARGS)
    try:
      page = browser.new_page()
      page.on("request", lambda r: requests.append(r.url))
      page.on("pageerror", lambda e: errors.append(str(e)))
      page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
      page.goto(page_url)
      points = page.locator("#map-test .scatterlayer .trace .point")
      points.first.wait_for()
      assert points.count() == 2 * len(frame)  # every clip's speech and text point drawn
      fills = lambda: page.eval_on_selector_all("#map-test .scatterlayer .trace:first-child .point",
                                                "els => els.map(e => e.style.fill)")
      before = fills()
      colour = lambda: page.evaluate("() => Array.from(document.getElementById('map-test').data[0].marker.color)")
      np.testing.assert_allclose(colour(), frame["arousal"].to_numpy(), atol=1e-4)
      page.get_by_text("colour: valence").click()
      page.wait_for_function("() => document.querySelector('#map-test .cbtitle').textContent.includes('valence')")
      np.testing.assert_allclose(colour(), frame["valence"].to_numpy(), atol=1e-4)
      after = fills()
      assert len(after) == len(frame) and after != before  # the drawn points took the new colours
      box = points.first.bounding_box()  # plotly's drag layer lies over the points: hover where one is drawn
      page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
      page.locator("#map-test .hoverlayer .hovertext").first.wait_for()
      hover = page.locator("#map-test .hoverlayer").text_content()
      shown = re.match(r"(\S+) \((speech|text)\)arousal ([\d.]+), valence ([\d.]+)", hover)  # the point under it
      assert shown, hover
      row = frame.set_index("id").loc[shown.group(1)]
      assert float(shown.group(3)) == pytest.approx(row["arousal"], abs=1e-3) and row["description"] in hover
      assert page.locator("#similarity-test .scatterlayer .trace").count() == 3
      assert page.locator("#prompts-arousal-test .scatterlayer .trace").count() >= 7
    finally:
      browser.close()
  assert errors == []
  assert [u for u in requests if u != page_url] == []  # nothing asked of the network (nor of other files)
