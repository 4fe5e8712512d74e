"""A sweep launched for real, part-finished, summarised and served by the real TensorBoard.

Two of a three-run sweep of the tiny two-stage config are trained by `launch/sweep.py`: one `erclap.main` process
prepares the stage 1 and speech cache they share (``--mode=prepare_speech``), then each run is one process, which
records its status; `--summarize` then lists all three, and `tensorboard --logdir <root>/<sweep>` shows the two
trained runs in its HParams table with only the swept key as a column, their values and their metrics (beside the
shared stage 1's own session).
"""

from __future__ import annotations

import csv
import json
import os
import textwrap

import pytest
import train_helpers as th
import viewer_helpers as vh

from erclap import stages

pytestmark = pytest.mark.slow

TEMPERATURES = (0.05, 0.1, 0.2)


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory):
  """(sweep dir, {run: eval metrics}): runs tau0.05 and tau0.1 trained (2 steps, evaluated at the end) on one
  shared stage 1 (2 steps); tau0.2 not started; then summarised."""
  base = tmp_path_factory.mktemp("sweep")
  fixed = th.tiny_overrides(data_dir, **{"train.num_steps": 2, "eval.every_steps": 2, "checkpoint.every_steps": 2,
                                         "checkpoint.best_metric": "aoc_voc_mean", "recipe.stage1": "ser_pretrain:demo",
                                         "recipe.stage1_steps": 2})
  path = base / "tb_study.py"
  path.write_text(textwrap.dedent(f"""
      base_config = "configs/demo.py"
      fixed = {fixed!r}

      def get_sweep():
        return [{{"train.temperature_init": t}} for t in {TEMPERATURES!r}]
      """))
  root = base / "root"
  # launch/sweep.py's main in this process; the stage 1 it prepares and the runs are processes of their own.
  launched = th.sweep_in_process(str(path), f"--root={root}", "--only=tau0.05", "--only=tau0.1")
  assert launched.returncode == 0, launched.stderr[-3000:]
  summarized = th.sweep_in_process(str(path), f"--root={root}", "--summarize")
  assert summarized.returncode == 0, summarized.stderr[-3000:]
  sweep_dir = root / "tb_study"
  metrics = {}
  for run in ("tau0.05", "tau0.1"):
    with open(sweep_dir / run / "eval" / "2.json") as f:
      metrics[run] = json.load(f)["metrics"]
  return str(sweep_dir), metrics


SHARED = os.path.join("_shared", "ser_pretrain-demo_embedded")


def test_runs_record_their_status_and_the_summary_lists_every_run(sweep):
  sweep_dir, metrics = sweep
  with open(os.path.join(sweep_dir, SHARED, "status.json")) as f:
    assert json.load(f)["mode"] == "prepare_speech"
  assert os.listdir(os.path.join(sweep_dir, SHARED, "stage1", "checkpoints")) == ["2"]
  for run in metrics:
    with open(os.path.join(sweep_dir, run, "status.json")) as f:
      record = json.load(f)
    assert (record["mode"], record["state"], record["step"], record["num_steps"]) == ("train", "finished", 2, 2)
    # The run read the shared stage 1 and cache, and trained none of its own.
    assert not os.path.exists(os.path.join(sweep_dir, run, "stage1"))
    with open(os.path.join(sweep_dir, run, "config.train.json")) as f:
      config = json.load(f)["config"]
    assert config["recipe"]["stage1"] == "" and config["model"]["freeze_speech"]
    assert config["model"]["speech_init"] == os.path.join(sweep_dir, SHARED, "stage1")
    assert config["data"]["speech_features"] == os.path.join(sweep_dir, SHARED, "speech_features")
  with open(os.path.join(sweep_dir, "summary.csv"), newline="") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"tau0.05", "tau0.1", "tau0.2"}
  assert rows["tau0.2"]["status"] == "not started" and rows["tau0.2"]["aoc"] == ""
  for run, m in metrics.items():
    assert (rows[run]["status"], rows[run]["step"], rows[run]["metrics_from"]) == ("finished", "2", "eval/2.json")
    assert float(rows[run]["aoc"]) == m["aoc"] and float(rows[run]["train.temperature_init"]) == float(run[3:])


def test_tensorboard_hparams_lists_the_runs_with_the_swept_values_and_metrics(sweep):
  sweep_dir, metrics = sweep
  headline = stages.CLAP.headline_metrics
  with vh.tensorboard(sweep_dir) as url:
    experiment = vh.poll(lambda: vh.post_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""}),
                         lambda e: e.get("hparamInfos"), what="HParams experiment")
    assert [h["name"] for h in experiment["hparamInfos"]] == ["train.temperature_init"]  # not the whole config
    assert experiment["hparamInfos"][0]["domainDiscrete"] == list(TEMPERATURES)
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [f"eval/{m}" for m in headline]
    request = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                          "STATUS_RUNNING"], "colParams": [], "startIndex": 0,
               "sliceSize": 100}
    runs = lambda g: [s for s in g.get("sessionGroups", []) if not s["sessions"][0]["name"].startswith("_shared")]
    groups = vh.poll(lambda: vh.post_json(f"{url}/data/plugin/hparams/session_groups", request),
                     lambda g: len(runs(g)) == 2 and all(len(s["metricValues"]) == len(headline) for s in runs(g)),
                     what="two sessions")
  by_run = {g["sessions"][0]["name"]: g for g in runs(groups)}
  assert set(by_run) == {"tau0.05", "tau0.1"}
  # Besides them, one session: the stage 1 both runs read.
  assert [g["sessions"][0]["name"] for g in groups["sessionGroups"] if g not in runs(groups)] == [
      os.path.join(SHARED, "stage1")]
  types = {}
  for run, group in by_run.items():
    assert group["hparams"]["train.temperature_init"] == float(run[3:])
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    for m in headline:
      assert values[f"eval/{m}"] == pytest.approx(metrics[run][m], rel=1e-6, abs=1e-7)  # logged as float32
    for key, value in group["hparams"].items():
      types.setdefault(key, set()).add(type(value))
  assert {k: t for k, t in types.items() if len(t) > 1} == {}  # one type per key across the runs
