"""Reading results: seed statistics, a run's status record, what a run left, and `launch/sweep.py --summarize`.

The statistics are checked against hand-computed values and scipy.stats.t; the summaries against runs written
here by hand (status records, metrics files, checkpoint directories, a live workdir lock), so every status and
every cell is known in advance.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import textwrap

import numpy as np
import pytest
from scipy import stats as scipy_stats

from erclap import config_lib, run_status, signals, workdir_lock
from erclap.configs import default
from erclap.results import hparams, runs, stats
from erclap.results import sweep as summary
from launch import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- statistics


def test_describe_matches_hand_computed_mean_sd_and_student_t_interval():
  x = [0.50, 0.54, 0.47, 0.53]
  s = stats.describe(x)
  mean = 2.04 / 4
  sd = math.sqrt(((0.50 - mean) ** 2 + (0.54 - mean) ** 2 + (0.47 - mean) ** 2 + (0.53 - mean) ** 2) / 3)
  half = 3.182446305284263 * sd / 2  # t_{0.975, 3} from tables; sqrt(n) = 2
  assert s.n == 4
  assert s.mean == pytest.approx(0.51, abs=1e-12)
  assert s.sd == pytest.approx(sd, rel=1e-12)
  assert (s.ci_low, s.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-9)
  ref = scipy_stats.t.interval(0.95, df=3, loc=np.mean(x), scale=scipy_stats.sem(x))
  assert (s.ci_low, s.ci_high) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("df, table", [(1, 12.7062047), (2, 4.30265273), (3, 3.18244631), (9, 2.26215716),
                                       (30, 2.04227246)])
def test_t_quantile_against_tables_and_scipy(df, table):
  assert stats.t_quantile(0.975, df) == pytest.approx(table, rel=1e-7)
  assert stats.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-12)


def test_describe_of_one_or_no_value_has_no_spread_and_bad_values_are_refused():
  assert stats.describe([0.3]) == stats.Summary(1, 0.3, None, None, None)
  assert stats.describe([]) == stats.Summary(0, None, None, None, None)
  with pytest.raises(ValueError, match="finite"):
    stats.describe([0.1, float("nan")])
  with pytest.raises(ValueError, match="degree"):
    stats.t_quantile(0.975, 0)


# ---------------------------------------------------------------------------------------------- status records


_Config = config_lib.apply_overrides(default.get_config(), {"train.num_steps": 10})


def _checkpoint(workdir, step):
  os.makedirs(os.path.join(workdir, "checkpoints", str(step)), exist_ok=True)


def test_recorded_writes_running_then_finished(tmp_path):
  workdir = str(tmp_path)
  with run_status.recorded(workdir, "train", _Config):
    record = run_status.read(workdir)
    assert record["state"] == "running" and record["mode"] == "train" and record["pid"] == os.getpid()
    _checkpoint(workdir, 10)
    os.makedirs(os.path.join(workdir, "checkpoints", "8.orbax-checkpoint-tmp-1"))  # never counted as a step
  record = run_status.read(workdir)
  assert (record["state"], record["step"], record["num_steps"], record["error"]) == ("finished", 10, 10, "")
  assert record["ended"] >= record["started"]


def test_recorded_failures_signals_and_early_stops(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(RuntimeError), run_status.recorded(workdir, "export", _Config):
    raise RuntimeError("Non-finite loss near step 4\n(details)")
  assert run_status.read(workdir)["state"] == "failed"
  assert run_status.read(workdir)["error"] == "RuntimeError: Non-finite loss near step 4 (details)"
  with pytest.raises(SystemExit), run_status.recorded(workdir, "train", _Config):
    raise SystemExit("FATAL config error: --config.nope: no such config key 'nope'")
  assert run_status.read(workdir)["error"] == "FATAL config error: --config.nope: no such config key 'nope'"
  # erclap.main turns a signal into its exit status: the StopRequested behind it makes the run preempted.
  with pytest.raises(SystemExit), run_status.recorded(workdir, "train", _Config):
    try:
      raise signals.StopRequested("train", 15)
    except signals.StopRequested:
      raise SystemExit(143) from None
  assert run_status.read(workdir)["state"] == "preempted"
  _checkpoint(workdir, 6)  # the training loop checkpointed on SIGTERM and returned before num_steps
  with run_status.recorded(workdir, "train", _Config):
    pass
  assert run_status.read(workdir)["state"] == "preempted" and "step 6 of 10" in run_status.read(workdir)["error"]
  with run_status.recorded(workdir, "plan", _Config):  # plan says nothing about the run: no record
    pass
  assert run_status.read(workdir)["mode"] == "train"


# ---------------------------------------------------------------------------------------------- what a run left


def _write_json(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f)


def _status(workdir, state, step=20, error="", mode="train", started="2026-01-01T00:00:00Z"):
  _write_json(os.path.join(workdir, "status.json"),
              dict(mode=mode, state=state, step=step, num_steps=20, error=error, started=started, ended="",
                   host=socket.gethostname(), pid=1))


def _eval(workdir, step, metrics):
  _write_json(os.path.join(workdir, "eval", f"{step}.json"), dict(step=step, split="validation", metrics=metrics))


def _export(workdir, step, metrics):
  _write_json(os.path.join(workdir, "export", "test_metrics.json"), dict(step=step, split="test", metrics=metrics))


def _hold_lock(workdir, pid, host=None):
  _write_json(workdir_lock.lock_path(workdir), dict(host=host or socket.gethostname(), pid=pid, since="now",
                                                    command="python -m erclap.main", token="t"))


def test_read_run_statuses_and_metrics_sources(tmp_path):
  root = tmp_path
  assert runs.read_run(str(root / "missing")).status == "not started"
  os.makedirs(root / "queued")
  (root / "queued" / "slurm-1.out").write_text("")
  assert runs.read_run(str(root / "queued")) == runs.RunResult(str(root / "queued"), "not started")

  done = str(root / "done")
  _status(done, "finished")
  _checkpoint(done, 20)
  _eval(done, 10, {"aoc": 0.1})
  _eval(done, 20, {"aoc": 0.2, "aoc_mean": 0.7, "note": "text"})  # aoc_mean: the anchor-wise tau's old name
  r = runs.read_run(done)
  assert (r.status, r.step, r.metrics_from) == ("finished", 20, "eval/20.json")
  assert r.metrics == {"aoc": 0.2, "anchor_tau_arousal": 0.7}
  _export(done, 20, {"aoc": 0.25})
  assert runs.read_run(done).metrics_from == "export/test_metrics.json"
  assert runs.read_run(done).metrics == {"aoc": 0.25}

  live = str(root / "live")
  _status(live, "running", step=0)
  _checkpoint(live, 4)
  _hold_lock(live, os.getpid())  # this process is alive
  r = runs.read_run(live)
  assert (r.status, r.step, r.error) == ("running", 4, "")
  _hold_lock(live, 2 ** 22 + 12345)  # no such pid on this host: the run died without recording its end
  r = runs.read_run(live)
  assert r.status == "failed" and "without recording" in r.error and "2026-01-01" in r.error
  _hold_lock(live, 1, host="another-host")  # cannot be checked from here: taken as running
  assert runs.read_run(live).status == "running"

  failed = str(root / "failed")
  _status(failed, "failed", step=None, error="ValueError: corrupt audio in clip 12")
  r = runs.read_run(failed)
  assert (r.status, r.error, r.metrics, r.metrics_from) == ("failed", "ValueError: corrupt audio in clip 12", {}, "")

  old = str(root / "old_release")  # no status record: judged by its outputs
  _checkpoint(old, 20)
  _write_json(os.path.join(old, "config.train.json"), {"train": {"num_steps": 20}})
  assert runs.read_run(old).status == "finished"
  _write_json(os.path.join(old, "config.train.json"), {"train": {"num_steps": 50}})
  r = runs.read_run(old)
  assert r.status == "failed" and "step 20 of 50" in r.error

  broken = str(root / "broken")
  os.makedirs(broken)
  (root / "broken" / "status.json").write_text("{not json")
  _eval(broken, 5, {"aoc": 0.1})
  r = runs.read_run(broken)
  assert "status.json" in r.error and r.metrics == {"aoc": 0.1}


# ---------------------------------------------------------------------------------------------- sweep summaries


SWEEP = """
from erclap.configs.sweeps import product

base_config = "configs/default.py"
fixed = {"checkpoint.best_metric": "aoc", "train.num_steps": 20}

def get_sweep():
  runs = product({"train.temperature_init": (0.05, 0.1), "seed": (0, 1, 2)})
  for run in runs:  # a key only some runs set: the others have the base config's value
    if run["train.temperature_init"] == 0.05:
      run["train.micro_batch_size"] = 64
  return runs
"""

AOC = {(0.05, 0): 0.50, (0.05, 1): 0.54, (0.05, 2): 0.47, (0.1, 0): 0.61, (0.1, 1): 0.65}


@pytest.fixture
def summarized(tmp_path):
  """A sweep of 6 runs: temperature 0.05 (3 finished seeds; one only evaluated), temperature 0.1 (2 finished,
  one not started), plus a failed and a running state on top of the finished ones."""
  path = tmp_path / "study.py"
  path.write_text(textwrap.dedent(SWEEP))
  root = tmp_path / "root"
  sweep = sweep_lib.load_sweep(str(path))
  names = {(r.overrides["train.temperature_init"], r.overrides["seed"]): r.name for r in
           sweep_lib.expand(sweep, str(root))}
  for (tau, seed), aoc in AOC.items():
    workdir = str(root / "study" / names[(tau, seed)])
    _status(workdir, "finished")
    _checkpoint(workdir, 20)
    metrics = {"aoc": aoc, "voc": 0.3 + seed / 10, "mmd": 0.1}
    (_eval if (tau, seed) == (0.05, 2) else _export)(workdir, 20, metrics)
  return str(path), str(root), names


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_summarize_writes_every_run_and_seed_intervals(summarized, capsys):
  path, root, names = summarized
  assert sweep_lib.main([path, f"--root={root}", "--summarize"]) == 0
  out_dir = os.path.join(root, "study")
  rows = {r["run"]: r for r in _read_csv(os.path.join(out_dir, "summary.csv"))}
  assert len(rows) == 6  # never dropping a run
  first = rows[names[(0.05, 0)]]
  assert list(first)[:7] == ["run", "status", "error", "step", "train.temperature_init", "seed",
                             "train.micro_batch_size"]
  assert (first["status"], first["step"], first["train.micro_batch_size"]) == ("finished", "20", "64")
  assert rows[names[(0.1, 1)]]["train.micro_batch_size"] == "0"  # the base config's value
  assert float(first["aoc"]) == 0.50 and first["metrics_from"] == "export/test_metrics.json"
  assert rows[names[(0.05, 2)]]["metrics_from"] == "eval/20.json"
  missing = rows[names[(0.1, 2)]]
  assert missing["status"] == "not started" and missing["aoc"] == missing["step"] == missing["metrics_from"] == ""

  groups = {g["train.temperature_init"]: g for g in _read_csv(os.path.join(out_dir, "summary_groups.csv"))}
  assert len(groups) == 2 and "seed" not in next(iter(groups.values()))
  for tau, seeds in ((0.05, (0, 1, 2)), (0.1, (0, 1))):
    g = groups[str(tau)]
    x = [AOC[(tau, s)] for s in seeds]
    ref = scipy_stats.t.interval(0.95, df=len(x) - 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert (g["runs"], g["n"]) == ("3", str(len(x)))
    assert float(g["aoc_mean"]) == pytest.approx(np.mean(x), rel=1e-12)
    assert float(g["aoc_sd"]) == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    assert (float(g["aoc_ci95_low"]), float(g["aoc_ci95_high"])) == pytest.approx(ref, rel=1e-12)

  text = open(os.path.join(out_dir, "summary.md")).read()
  table = [line for line in text.splitlines() if line.startswith("| ")]
  assert table[0].startswith("| train.temperature_init | train.micro_batch_size | n | AOC | VOC | MMD")
  # Best first by checkpoint.best_metric (aoc, max): temperature 0.1 (mean 0.63) leads.
  assert table[1].startswith("| 0.1 | 0 | 2/3 | 0.6300 ± 0.0283 [")
  assert "1 not started" in text and names[(0.1, 2)] in text.split("## Runs not finished")[1]
  # The paper's Table 1 figures of the table's metrics it reports, for reference, after the table.
  paper_table = text.split("The paper's figures for reference")[1].split("## Runs not finished")[0]
  assert "| the paper (Table 1) | AOC | VOC | MMD |" in paper_table
  assert "| RNC (EmotionRankCLAP) | 0.552 | 0.616 | 0.087 |" in paper_table
  assert "| SCE (InfoNCE) | 0.492 | 0.505 | 0.096 |" in paper_table
  assert os.path.isfile(os.path.join(out_dir, "summary_aoc.png"))
  assert "summary.csv" in capsys.readouterr().out
  # The HParams experiment: the swept keys only, each with its values.
  assert os.path.isfile(os.path.join(out_dir, hparams.EXPERIMENT_FILE))


def test_summary_counts_only_finished_runs_and_states_what_others_did(summarized):
  path, root, names = summarized
  dead = os.path.join(root, "study", names[(0.05, 1)])
  _status(dead, "failed", error="NonFiniteLossError: Non-finite loss near step 7")
  alive = os.path.join(root, "study", names[(0.1, 1)])
  _status(alive, "running", step=3)
  _hold_lock(alive, os.getpid())
  assert sweep_lib.main([path, f"--root={root}", "--summarize"]) == 0
  rows = {r["run"]: r for r in _read_csv(os.path.join(root, "study", "summary.csv"))}
  assert rows[names[(0.05, 1)]]["status"] == "failed"
  assert rows[names[(0.05, 1)]]["error"] == "NonFiniteLossError: Non-finite loss near step 7"
  assert rows[names[(0.05, 1)]]["aoc"] == "0.54"  # its metrics are still shown, never dropped
  assert rows[names[(0.1, 1)]]["status"] == "running"
  groups = {g["train.temperature_init"]: g for g in _read_csv(os.path.join(root, "study", "summary_groups.csv"))}
  assert groups["0.05"]["n"] == "2" and float(groups["0.05"]["aoc_mean"]) == pytest.approx((0.50 + 0.47) / 2)
  assert groups["0.1"]["n"] == "1" and groups["0.1"]["aoc_sd"] == groups["0.1"]["aoc_ci95_low"] == ""


def test_summarize_refuses_a_root_where_the_sweep_never_ran(summarized, tmp_path, capsys):
  path, _, names = summarized
  assert sweep_lib.main([path, f"--root={tmp_path / 'elsewhere'}", "--summarize"]) == 1
  assert "never ran" in capsys.readouterr().err
  os.makedirs(tmp_path / "empty" / "study" / names[(0.05, 0)])  # made by a submission that never started
  assert sweep_lib.main([path, f"--root={tmp_path / 'empty'}", "--summarize"]) == 1
  assert "none of its 6 runs has started" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "empty" / "study" / "summary.csv")


def test_group_statistics_leave_out_unfinished_runs_and_order_by_the_best_metric():
  runs_ = [summary.SweepRun(f"r{i}", f"/w/r{i}", {"loss": loss, "seed": i}) for i, loss in
           enumerate(("rnc", "rnc", "infonce", "infonce"))]
  results = [runs.RunResult("/w/r0", "finished", metrics={"mmd": 0.4}),
             runs.RunResult("/w/r1", "finished", metrics={"mmd": 0.2}),
             runs.RunResult("/w/r2", "finished", metrics={"mmd": 0.1}),
             runs.RunResult("/w/r3", "running", metrics={"mmd": 9.0})]
  groups = summary.groups(runs_, results, ["loss", "seed"], ["mmd"])
  assert [(g.values, g.n, g.stats["mmd"].mean) for g in groups] == [({"loss": "rnc"}, 2, pytest.approx(0.3)),
                                                                   ({"loss": "infonce"}, 1, 0.1)]
  assert [g.values["loss"] for g in summary.order_groups(groups, "mmd", "min")] == ["infonce", "rnc"]
  assert [g.values["loss"] for g in summary.order_groups(groups, "mmd", "max")] == ["rnc", "infonce"]
  assert summary.format_stat(groups[1].stats["mmd"]) == "0.1000"


# ---------------------------------------------------------------------------------------------- HParams


def test_run_hparams_keep_one_type_per_key_across_every_config():
  from erclap import configs

  kinds = {}
  for name in ("default", "demo", "demo_minilm", "gpu", "paper", "ser_pretrain", "tpu_v4"):
    for key, value in hparams.run_hparams(configs.get(name)).items():
      assert isinstance(value, bool | float | str), (name, key, value)
      kinds.setdefault(key, set()).add(type(value))
  assert {k: v for k, v in kinds.items() if len(v) > 1} == {}
  assert kinds["train.global_batch_size"] == {float} and kinds["model.remat"] == {bool}
  assert kinds["mesh.shape"] == {str}
  # configs/paper.py leaves model.speech_init to the command line (None): left out, not a string "None".
  assert "model.speech_init" not in hparams.run_hparams(configs.get("paper"))
  assert hparams.run_hparams(config_lib.apply_overrides(default.get_config(), {"train.micro_batch_size": 64}))[
      "train.micro_batch_size"] == 64.0


def test_experiment_config_lists_only_the_swept_keys():
  from tensorboard.plugins.hparams import plugin_data_pb2

  pb = hparams.experiment_summary({"train.temperature_init": [0.1, 0.05, 0.1], "loss": ["rnc", "infonce"],
                                   "train.global_batch_size": [64, 128]}, ["aoc", "voc"])
  data = plugin_data_pb2.HParamsPluginData.FromString(pb.value[0].metadata.plugin_data.content)
  infos = {i.name: i for i in data.experiment.hparam_infos}
  assert set(infos) == {"train.temperature_init", "loss", "train.global_batch_size"}
  assert list(infos["train.temperature_init"].domain_discrete) == [0.05, 0.1]
  assert list(infos["train.global_batch_size"].domain_discrete) == [64.0, 128.0]
  assert [m.name.tag for m in data.experiment.metric_infos] == ["eval/aoc", "eval/voc"]
  assert [m.display_name for m in data.experiment.metric_infos] == ["AOC", "VOC"]


def test_a_sweep_names_its_summary_metrics(summarized, capsys):
  """``summary_metrics`` in a sweep file: summary.md's columns and plots and the HParams metrics, in its order;
  a name no run has is said so; stage-1 metrics get no paper figures."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.plugins.hparams import plugin_data_pb2

  path, root, _ = summarized
  with open(path, "a") as f:
    f.write('summary_metrics = ("mmd", "aoc", "no_such_metric")\n')
  assert sweep_lib.load_sweep(path).summary_metrics == ("mmd", "aoc", "no_such_metric")
  assert sweep_lib.main([path, f"--root={root}", "--summarize"]) == 0
  assert "summary_metrics no_such_metric: in no run's metrics" in capsys.readouterr().err
  out_dir = os.path.join(root, "study")
  text = open(os.path.join(out_dir, "summary.md")).read()
  header = next(line for line in text.splitlines() if line.startswith("| train.temperature_init"))
  assert header == "| train.temperature_init | train.micro_batch_size | n | MMD | AOC |"
  assert "| the paper (Table 1) | MMD | AOC |" in text
  assert sorted(f for f in os.listdir(out_dir) if f.endswith(".png")) == ["summary_aoc.png", "summary_mmd.png"]
  with open(os.path.join(out_dir, hparams.EXPERIMENT_FILE), "rb") as f:
    raw = f.read()
  event = event_pb2.Event()
  offset = 0
  while offset < len(raw):  # TFRecord framing: length (8), its crc (4), the record, its crc (4)
    length = int.from_bytes(raw[offset:offset + 8], "little")
    event.ParseFromString(raw[offset + 12:offset + 12 + length])
    offset += 16 + length
  data = plugin_data_pb2.HParamsPluginData.FromString(event.summary.value[0].metadata.plugin_data.content)
  assert [m.name.tag for m in data.experiment.metric_infos] == ["eval/mmd", "eval/aoc", "eval/no_such_metric"]
  assert summary.paper_rows(["ser_ccc_arousal", "ser_ccc_valence"]) == ([], [])
  with open(path, "a") as f:
    f.write('summary_metrics = "aoc"\n')
  with pytest.raises(ValueError, match="summary_metrics"):
    sweep_lib.load_sweep(path)


# ---------------------------------------------------------------------------------------------- member axes


MEMBER_SWEEP = """
base_config = "configs/default.py"
fixed = {"checkpoint.best_metric": "aoc", "train.num_steps": 20}
members = {"seed": (0, 1, 2)}

def get_sweep():
  return [{"train.temperature_init": 0.05}, {"train.temperature_init": 0.1}]
"""

MEMBER_AOC = {(0.05, 0): 0.50, (0.05, 1): 0.54, (0.05, 2): 0.47, (0.1, 0): 0.61, (0.1, 1): 0.65}


def test_summarize_lists_every_member_of_every_program_as_a_run(tmp_path, capsys):
  path = tmp_path / "grid.py"
  path.write_text(textwrap.dedent(MEMBER_SWEEP))
  root = tmp_path / "root"
  sweep = sweep_lib.load_sweep(str(path))
  programs = sweep_lib.expand(sweep, str(root))
  assert len(programs) == 2 and all("--config.members.seeds=(0,1,2)" in r.args for r in programs)
  for run in programs:  # what a finished program leaves: its record and config, each member's export
    tau = run.overrides["train.temperature_init"]
    _status(run.workdir, "finished")
    _checkpoint(run.workdir, 20)
    config = config_lib.apply_overrides(default.get_config(), {**sweep.fixed, **sweep.member_overrides,
                                                               **run.overrides})
    _write_json(os.path.join(run.workdir, "config.train.json"), dict(config=json.loads(config.to_json())))
    for seed in (0, 1, 2):
      if (tau, seed) in MEMBER_AOC:  # member 2 of the second program left no metrics
        _export(os.path.join(run.workdir, "members", str(seed)), 20, {"aoc": MEMBER_AOC[(tau, seed)]})
  found = runs.member_runs(programs[0].workdir)
  assert [(m.member, m.values) for m in found] == [(k, {"seed": k}) for k in range(3)]
  assert [r.metrics.get("aoc") for r in runs.read_runs(programs[1].workdir)] == [0.61, 0.65, None]

  assert sweep_lib.main([str(path), f"--root={root}", "--summarize"]) == 0
  rows = {r["run"]: r for r in _read_csv(os.path.join(root, "grid", "summary.csv"))}
  assert sorted(rows) == sorted(f"{r.name}/members/{k}" for r in programs for k in range(3))
  for (tau, seed), aoc in MEMBER_AOC.items():
    row = rows[f"{sweep_lib.run_name({'train.temperature_init': tau})}/members/{seed}"]
    assert (row["status"], row["step"], row["seed"], float(row["aoc"])) == ("finished", "20", str(seed), aoc)
  groups = {g["train.temperature_init"]: g for g in _read_csv(os.path.join(root, "grid", "summary_groups.csv"))}
  x = [MEMBER_AOC[(0.05, s)] for s in (0, 1, 2)]
  assert (groups["0.05"]["runs"], groups["0.05"]["n"]) == ("3", "3")
  assert float(groups["0.05"]["aoc_mean"]) == pytest.approx(np.mean(x), rel=1e-12)
  assert float(groups["0.05"]["aoc_sd"]) == pytest.approx(np.std(x, ddof=1), rel=1e-12)
  assert "summary.csv" in capsys.readouterr().out


def test_member_axes_name_member_keys_and_nothing_else_sets_them(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text(textwrap.dedent(MEMBER_SWEEP).replace('{"seed": (0, 1, 2)}', '{"train.global_batch_size": (8,)}'))
  with pytest.raises(ValueError, match="train.global_batch_size.*cannot vary between the members"):
    sweep_lib.load_sweep(str(path))
  path.write_text(textwrap.dedent(MEMBER_SWEEP).replace('"train.num_steps": 20}', '"train.num_steps": 20, "seed": 4}'))
  with pytest.raises(config_lib.ConfigError, match="'seed' is a member axis"):
    sweep_lib.validate_runs(sweep_lib.load_sweep(str(path)))
  path.write_text(textwrap.dedent(MEMBER_SWEEP).replace('{"seed": (0, 1, 2)}',
                                                       '{"seed": (0, 1), "learning_rates": (1e-3, 3e-3)}'))
  sweep = sweep_lib.load_sweep(str(path))  # axes by member key or by config key; their product
  assert sweep.member_overrides == {"members.seeds": (0, 0, 1, 1), "members.learning_rates": (1e-3, 3e-3, 1e-3, 3e-3)}
  assert sweep.member_keys == ["seed", "train.learning_rate"]
