"""Launch scripts and sweeps: the dry-runs print the expected commands; bad sweeps fail before submission.

Nothing here needs gcloud or SLURM: the scripts' --dry-run / DRY_RUN=1 print the commands they would run.
"""

import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
import train_helpers as th

from erclap.configs import sweeps as sweeps_pkg
from launch import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWEEP_PY = os.path.join(ROOT, "launch", "sweep.py")
TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.sh")
SLURM_SH = os.path.join(ROOT, "launch", "slurm.sh")
SLURM_SBATCH = os.path.join(ROOT, "launch", "slurm.sbatch")


def _run(cmd, env=None, cwd=ROOT):
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def _sweep(*args, env=None):
  """``python launch/sweep.py ARGS`` from the repository root: in a process of its own when ``env`` is given, else
  its ``main`` in this process (train_helpers.sweep_in_process)."""
  if env is not None:
    return _run([sys.executable, SWEEP_PY, *args], env=env)
  return th.sweep_in_process(*args)


def _commands(stdout):
  """The printed commands (lines that are not `#` comments), split as the shell would."""
  return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def _flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


@pytest.fixture
def sweep_file(tmp_path):
  """Writes a sweep module against configs/default.py (so the tests do not depend on other config files)."""
  def write(body, name="tiny"):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)
  return write


TINY = """
from erclap.configs.sweeps import product

base_config = "configs/default.py"
fixed = {"train.num_steps": 7}


def get_sweep():
  return product({"train.global_batch_size": (64, 128), "train.temperature_init": (0.05, 0.1),
                  "train.learning_rate": (1e-4,)})
"""


# ---------------------------------------------------------------- sweep definitions
def test_product_order_and_bad_axes():
  assert sweeps_pkg.product({"a": (1, 2), "b": ("x", "y")}) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  with pytest.raises(ValueError, match="'b'"):
    sweeps_pkg.product({"a": (1,), "b": ()})
  with pytest.raises(ValueError, match="'a'"):
    sweeps_pkg.product({"a": "abc"})


def test_shipped_sweeps_are_products_with_valid_keys():
  main = sweep_lib.load_sweep("batch_temperature_lr")
  assert main.base_config == "configs/tpu_v4.py" and os.path.isfile(os.path.join(ROOT, main.base_config))
  assert len(main.runs) == 27
  triples = {(r["train.global_batch_size"], r["train.temperature_init"], r["train.learning_rate"])
             for r in main.runs}
  assert len(triples) == 27  # a full 3 × 3 × 3 product
  for r in main.runs:  # gradient caching exactly where the batch is above the micro-batch
    assert r.get("train.micro_batch_size", 0) == (1024 if r["train.global_batch_size"] > 1024 else 0)
  demo = sweep_lib.load_sweep(os.path.join(ROOT, "configs", "sweeps", "demo_smoke.py"))
  assert demo.base_config == "configs/demo.py" and len(demo.runs) == 2
  # Keys and values pass the program's own validation, against the config files they name.
  sweep_lib.validate_runs(demo)
  sweep_lib.validate_runs(main)


# ---------------------------------------------------------------- workdir names
def test_run_names_hand_computed():
  assert sweep_lib.run_name({"train.global_batch_size": 1024, "train.temperature_init": 0.05,
                             "train.learning_rate": 1e-4}) == "bs1024_tau0.05_lr1e-4"
  assert sweep_lib.run_name({"train.learning_rate": 3e-5, "train.weight_decay": 0.0}) == "lr3e-5_wd0.0"
  assert sweep_lib.run_name({"loss": "infonce", "mesh.shape": (1, -1, 1)}) == "loss-infonce_mesh-1x-1x1"
  assert sweep_lib.run_name({"model.freeze_speech": True, "seed": 3}) == "freezespeech-True_seed3"
  assert sweep_lib.run_name({"data.data_dir": "/a b/../c"}) == "datadir--a-b-..-c"
  assert sweep_lib.run_name({"train.learning_rate": 2.5e5}) == "lr2.5e5"
  assert sweep_lib.run_name({}) == "base"


@pytest.mark.parametrize("value", [1e-4, 0.1, 1234567.0, -2, "../../etc", "a/b\\c d", ("x", 1), "", True,
                                   None])
def test_run_names_are_filesystem_safe(value):
  name = sweep_lib.run_name({"train.learning_rate": 1e-3, "data.name": value})
  assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
  assert not name.startswith(".") and "/" not in name
  long = sweep_lib.run_name({f"k{i}.some_long_key_name": "v" * 20 for i in range(20)})
  assert len(long) <= sweep_lib.MAX_NAME_LEN and re.fullmatch(r"[A-Za-z0-9._-]+", long)


def test_name_collisions_are_refused(sweep_file):
  path = sweep_file("""
    base_config = "configs/default.py"
    def get_sweep():
      return [{"data.name": "a/b"}, {"data.name": "a b"}]
    """)
  with pytest.raises(ValueError, match="both get the workdir name 'name-a-b'"):
    sweep_lib.expand(sweep_lib.load_sweep(path), "/r")


# ---------------------------------------------------------------- sweep.py dry-runs
def test_local_dry_run_prints_one_command_per_run(sweep_file, tmp_path):
  root = tmp_path / "sweeps"
  out = _sweep(sweep_file(TINY), "--backend=local", f"--root={root}", "--dry-run",
               "--", "--config.data.max_seconds=2.5", "--config.seed=3")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  assert len(cmds) == 4
  workdirs = [_flag(c, "--workdir") for c in cmds]
  assert workdirs == [f"{root}/tiny/bs64_tau0.05_lr1e-4", f"{root}/tiny/bs64_tau0.1_lr1e-4",
                      f"{root}/tiny/bs128_tau0.05_lr1e-4", f"{root}/tiny/bs128_tau0.1_lr1e-4"]
  for cmd, (bs, tau) in zip(cmds, [(64, 0.05), (64, 0.1), (128, 0.05), (128, 0.1)], strict=True):
    assert cmd[:3] == [sys.executable, "-m", "erclap.main"]
    assert _flag(cmd, "--config") == "configs/default.py" and _flag(cmd, "--mode") == "train"
    assert float(_flag(cmd, "--config.train.temperature_init")) == tau
    assert int(_flag(cmd, "--config.train.global_batch_size")) == bs
    assert float(_flag(cmd, "--config.train.learning_rate")) == 1e-4
    assert _flag(cmd, "--config.train.num_steps") == "7"           # `fixed`: passed, not in the name
    assert cmd[-2:] == ["--config.data.max_seconds=2.5", "--config.seed=3"]  # after --: passed through
  assert not root.exists()  # a dry run creates nothing


def test_generated_arguments_parse_back_to_the_overrides(sweep_file):
  """The program's own flag parser (ml_collections config flags) reads the values the sweep asked for."""
  from absl import flags
  from ml_collections import config_flags

  path = sweep_file("""
    base_config = "configs/default.py"
    def get_sweep():
      return [{"train.learning_rate": 3e-05, "train.global_batch_size": 512, "loss": "infonce",
               "mesh.shape": (1, -1, 1), "model.freeze_speech": True, "train.temperature_init": 0.07,
               "loss_options.rank_labels": ("arousal",)}]
    """)
  sweep = sweep_lib.load_sweep(path)
  [run] = sweep_lib.expand(sweep, "/r")
  args = ["prog", *(a.replace("--config=configs/", f"--config={ROOT}/configs/") for a in run.args
                    if not a.startswith(("--workdir", "--mode")))]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=args)
  fv(args)
  c = fv.config
  assert c.train.learning_rate == 3e-05 and c.train.global_batch_size == 512 and c.loss == "infonce"
  assert tuple(c.mesh.shape) == (1, -1, 1) and c.model.freeze_speech is True
  assert c.train.temperature_init == 0.07 and tuple(c.loss_options.rank_labels) == ("arousal",)


@pytest.mark.parametrize("body, extra, needle", [
    ('[{"train.learning_rte": 1e-4}]', [], "'train.learning_rte'"),
    ('[{"trian.learning_rate": 1e-4}]', [], "'trian.learning_rate'"),
    ('[{"train": 1}]', [], "'train' is a section"),
    ('[{"train.global_batch_size": "big"}]', [], "'train.global_batch_size'"),
    ('[{"train.global_batch_size": 96, "train.micro_batch_size": 64}]', [], "config.train.micro_batch_size"),
    ('[{"seed": 1}]', ["--config.data.nmae=x"], "'data.nmae'"),
])
def test_bad_override_fails_before_submission_naming_the_key(sweep_file, tmp_path, body, extra, needle):
  path = sweep_file(f"""
    base_config = "configs/default.py"
    def get_sweep():
      return {body}
    """)
  out = _sweep(path, "--backend=local", f"--root={tmp_path}/r", "--dry-run", "--", *extra)
  assert out.returncode == 2
  assert needle in out.stderr, out.stderr
  assert _commands(out.stdout) == []  # nothing printed, nothing submitted


def test_bad_sweep_files_are_named(sweep_file, tmp_path):
  no_base = sweep_file("def get_sweep():\n  return [{}]\n", name="nobase")
  out = _sweep(no_base, "--dry-run")
  assert out.returncode == 2 and "nobase.py" in out.stderr and "base_config" in out.stderr
  missing = _sweep(str(tmp_path / "nothere.py"), "--dry-run")
  assert missing.returncode == 2 and "nothere.py" in missing.stderr
  bad_base = sweep_file('base_config = "configs/nope.py"\ndef get_sweep():\n  return [{}]\n', name="badbase")
  out = _sweep(bad_base, "--dry-run")
  assert out.returncode == 2 and "configs/nope.py" in out.stderr


def test_local_backend_runs_each_run_in_order_and_stops_at_a_failure(sweep_file, tmp_path):
  # A stand-in interpreter records its arguments and working directory, and fails for one run.
  record = tmp_path / "calls.txt"
  fake = tmp_path / "fake_python"
  fake.write_text(textwrap.dedent(f"""\
      #!/bin/sh
      printf '%s|%s\\n' "$(pwd)" "$*" >> {record}
      case "$*" in *tau0.1_*) exit 3 ;; esac
      """))
  fake.chmod(0o755)
  root = tmp_path / "sweeps"
  path = sweep_file(TINY)
  out = _sweep(path, "--backend=local", f"--root={root}", f"--python={fake}")
  assert out.returncode == 3 and "bs64_tau0.1_lr1e-4 failed (exit status 3)" in out.stderr
  calls = record.read_text().splitlines()
  assert len(calls) == 2  # stopped after the failing second run
  assert all(c.split("|")[0] == ROOT for c in calls)  # started in the repository root
  assert f"--workdir={root}/tiny/bs64_tau0.05_lr1e-4" in calls[0]
  assert (root / "tiny" / "bs64_tau0.05_lr1e-4").is_dir()
  record.unlink()
  out = _sweep(path, "--backend=local", f"--root={root}", f"--python={fake}", "--keep-going")
  assert out.returncode == 1 and "2 run(s) failed" in out.stderr
  assert len(record.read_text().splitlines()) == 4
  record.unlink()
  out = _sweep(path, "--backend=local", f"--root={root}", f"--python={fake}", "--only=bs128_tau0.05_lr1e-4")
  assert out.returncode == 0, out.stderr
  [call] = record.read_text().splitlines()
  assert "bs128_tau0.05_lr1e-4" in call


def test_slurm_backend_dry_run(sweep_file, tmp_path):
  out = _sweep(sweep_file(TINY), "--backend=slurm", f"--root={tmp_path}/s", "--dry-run",
               "--sbatch-arg=--partition=gpu", "--python=/opt/venv/bin/python")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  assert len(cmds) == 4
  for cmd in cmds:
    assert cmd[0] == "sbatch" and "--partition=gpu" in cmd
    assert "--export=ALL,ERCLAP_PYTHON=/opt/venv/bin/python" in cmd
    i = cmd.index("launch/slurm.sbatch")
    workdir = _flag(cmd[i:], "--workdir")
    assert _flag(cmd[:i], "--output") == f"{workdir}/slurm-%j.out"
    assert _flag(cmd[:i], "--job-name") == f"erclap.tiny.{os.path.basename(workdir)}"
  assert len({_flag(c, "--workdir") for c in cmds}) == 4
  assert not (tmp_path / "s").exists()


def test_tpu_backend_dry_run_chains_into_tpu_vm_dry_run(sweep_file):
  out = _sweep(sweep_file(TINY), "--backend=tpu", "--tpu-name=erclap-v4", "--zone=us-central2-b",
               "--root=gs://bucket/sweeps", "--dry-run", "--", "--config.data.manual_dir=/data/msp podcast")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  assert len(cmds) == 4
  cmd = cmds[2]
  assert cmd[:3] == ["bash", "launch/tpu_vm.sh", "run"]
  assert cmd[cmd.index("--log-name") + 1] == "tiny.bs128_tau0.05_lr1e-4"
  program = cmd[cmd.index("--") + 1:]
  assert program[:3] == ["python", "-m", "erclap.main"]
  assert _flag(program, "--workdir") == "gs://bucket/sweeps/tiny/bs128_tau0.05_lr1e-4"
  # The printed tpu_vm.sh command, itself dry-run, runs the same program on every worker.
  gcloud = _run([*cmd[:2], "--dry-run", *cmd[2:]])
  assert gcloud.returncode == 0, gcloud.stderr
  [line] = _commands(gcloud.stdout)
  assert line[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "erclap-v4"] and "--worker=all" in line
  assert _remote_program(_flag(line, "--command")) == program
  missing = _sweep(sweep_file(TINY), "--backend=tpu", "--dry-run")
  assert missing.returncode == 2 and "--tpu-name" in missing.stderr


# ---------------------------------------------------------------- the shared speech side of two-stage sweeps
TWO_STAGE = """
from erclap.configs.sweeps import product

base_config = "configs/demo.py"


def get_sweep():
  return product({"loss": ("rnc", "infonce"), "seed": (0, 1)})
"""

SHARED_FLAGS = ("--config.recipe.stage1", "--config.model.speech_init", "--config.model.freeze_speech",
                "--config.data.speech_features")


def _program_config(cmd):
  """The config `erclap.main` builds from a printed command (its own flag parser)."""
  from absl import flags
  from ml_collections import config_flags

  start = cmd.index("erclap.main") + 1
  args = ["prog", *(a.replace("--config=configs/", f"--config={ROOT}/configs/") for a in cmd[start:]
                    if not a.startswith(("--workdir", "--mode")))]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values, lock_config=True, sys_argv=args)
  values(args)
  return values.config


def test_two_stage_runs_share_one_stage1_prepared_before_them(sweep_file, tmp_path):
  """Runs that differ in loss and seed share one stage 1 and cache: one --mode=prepare_speech first, in
  <root>/<sweep>/_shared/<name>, with the first run's settings; every run reads it with the recipe off, and
  resolves to the stage 1 and cache that the preparation writes."""
  from erclap import resolve

  root = tmp_path / "sweeps"
  out = _sweep(sweep_file(TWO_STAGE), f"--root={root}", "--dry-run", "--", "--config.data.max_seconds=2.5")
  assert out.returncode == 0, out.stderr
  prepare, *runs = _commands(out.stdout)
  assert len(runs) == 4
  shared = f"{root}/tiny/_shared/ser_pretrain-demo_embedded"
  assert "# [shared 1/1] _shared/ser_pretrain-demo_embedded: stage 1 and speech cache of 4 run(s)" in out.stdout
  assert prepare[:3] == [sys.executable, "-m", "erclap.main"]
  assert _flag(prepare, "--workdir") == shared and _flag(prepare, "--mode") == "prepare_speech"
  assert "--config.data.max_seconds=2.5" in prepare and _flag(prepare, "--config.loss") == "rnc"
  prepared = resolve.resolve(_program_config(prepare), str(tmp_path / "shared"), "prepare_speech")
  first = resolve.stage1_config(_program_config(prepare))
  for cmd, (loss, seed) in zip(runs, [("rnc", 0), ("rnc", 1), ("infonce", 0), ("infonce", 1)], strict=True):
    assert _flag(cmd, "--workdir") == f"{root}/tiny/loss-{loss}_seed{seed}" and _flag(cmd, "--mode") == "train"
    assert [a.split("=", 1)[0] for a in cmd[-4:]] == list(SHARED_FLAGS)  # last: they win over the rest
    assert _flag(cmd, "--config.recipe.stage1") == "" and _flag(cmd, "--config.model.freeze_speech") == "True"
    assert _flag(cmd, "--config.model.speech_init") == f"{shared}/stage1"
    assert _flag(cmd, "--config.data.speech_features") == f"{shared}/speech_features"
    # Without the shared side, the run would train the very stage 1 that is prepared (its seed is not stage 1's).
    assert resolve.stage1_config(_program_config(cmd[:-4])).to_dict() == first.to_dict()
    run = resolve.resolve(_program_config(cmd), str(tmp_path / "run"), "train")
    assert run.recipe.stage1 == "" and run.seed == seed and run.model.freeze_speech
    # ... and reads it where the preparation writes it (relative to the prepared workdir).
    assert run.model.speech_init.replace(shared, str(tmp_path / "shared")) == prepared.model.speech_init
    assert run.data.speech_features.replace(shared, str(tmp_path / "shared")) == prepared.data.speech_features
  assert not root.exists()


def test_a_swept_stage1_setting_gives_each_value_its_shared_stage1(sweep_file, tmp_path):
  path = sweep_file("""
    from erclap.configs.sweeps import product
    base_config = "configs/demo.py"
    def get_sweep():
      return product({"recipe.stage1_seed": (0, 1), "seed": (0, 1, 2)})
    """)
  out = _sweep(path, f"--root={tmp_path}", "--dry-run")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  prepares = [c for c in cmds if _flag(c, "--mode") == "prepare_speech"]
  runs = [c for c in cmds if _flag(c, "--mode") == "train"]
  assert len(prepares) == 2 and len(runs) == 6
  assert cmds.index(prepares[-1]) < cmds.index(runs[0])  # every preparation before the first run
  names = {int(_flag(c, "--config.recipe.stage1_seed")): _flag(c, "--workdir") for c in prepares}
  assert names == {s: f"{tmp_path}/tiny/_shared/ser_pretrain-demo_embedded_stage1seed{s}" for s in (0, 1)}
  for cmd in runs:
    reads = names[int(_flag(cmd, "--config.recipe.stage1_seed"))]
    assert _flag(cmd, "--config.model.speech_init") == f"{reads}/stage1"


def test_sweeps_without_the_recipe_and_modes_after_training_prepare_nothing(sweep_file, tmp_path):
  out = _sweep(sweep_file(TINY), f"--root={tmp_path}", "--dry-run")
  assert out.returncode == 0 and "prepare_speech" not in out.stdout and "recipe.stage1" not in out.stdout
  # A base config's argument is read as the program reads it: the one-stage demo shares nothing.
  assert sweep_lib.load_base_config("configs/demo.py:single_stage").recipe.stage1 == ""
  out = _sweep(sweep_file(TWO_STAGE), f"--root={tmp_path}", "--dry-run", "--base-config=configs/demo.py:single_stage")
  assert out.returncode == 0 and "prepare_speech" not in out.stdout and "recipe.stage1" not in out.stdout
  out = _sweep(sweep_file(TWO_STAGE), f"--root={tmp_path}", "--dry-run", "--mode=export")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  assert len(cmds) == 4 and all(_flag(c, "--mode") == "export" for c in cmds)  # trained: nothing to prepare
  assert all(_flag(c, "--config.model.speech_init").endswith("_shared/ser_pretrain-demo_embedded/stage1")
             for c in cmds)  # and the runs resolve as they trained


def test_slurm_runs_wait_for_their_shared_stage1(sweep_file, tmp_path):
  out = _sweep(sweep_file(TWO_STAGE), "--backend=slurm", f"--root={tmp_path}/s", "--dry-run")
  assert out.returncode == 0, out.stderr
  prepare, *runs = _commands(out.stdout)
  assert prepare[0] == "sbatch" and "--parsable" in prepare and "--dependency" not in " ".join(prepare)
  assert _flag(prepare, "--job-name") == "erclap.tiny._shared.ser_pretrain-demo_embedded"
  for cmd in runs:
    assert _flag(cmd, "--dependency") == "afterok:<job id of _shared.ser_pretrain-demo_embedded>"
    assert "--kill-on-invalid-dep=yes" in cmd and "--parsable" not in cmd
  # Submitted: the runs depend on the job id sbatch printed for the preparation.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "sbatch_calls.txt"
  (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
      #!/bin/sh
      echo "$*" >> {calls}
      case "$*" in *--parsable*) echo "4242;cluster" ;; *) echo "Submitted batch job 7" ;; esac
      """))
  (bin_dir / "sbatch").chmod(0o755)
  out = _sweep(sweep_file(TWO_STAGE), "--backend=slurm", f"--root={tmp_path}/s",
               env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
  assert out.returncode == 0, out.stderr
  assert "# submitted job 4242" in out.stdout
  submitted = calls.read_text().splitlines()
  assert len(submitted) == 5 and "--mode=prepare_speech" in submitted[0]
  assert all("--dependency=afterok:4242 " in line for line in submitted[1:])


def test_local_runs_follow_their_prepared_stage1_and_a_failed_one_starts_none(sweep_file, tmp_path):
  record = tmp_path / "calls.txt"
  fake = tmp_path / "fake_python"
  fake.write_text(textwrap.dedent(f"""\
      #!/bin/sh
      echo "$*" >> {record}
      case "$*" in *prepare_speech*) exit ${{PREPARE_STATUS:-0}} ;; esac
      """))
  fake.chmod(0o755)
  path = sweep_file(TWO_STAGE)
  out = _sweep(path, f"--root={tmp_path}/r", f"--python={fake}", "--only=loss-infonce_seed1")
  assert out.returncode == 0, out.stderr
  calls = record.read_text().splitlines()
  assert len(calls) == 2 and "--mode=prepare_speech" in calls[0] and "loss-infonce_seed1" in calls[1]
  record.unlink()
  out = _sweep(path, f"--root={tmp_path}/r", f"--python={fake}", env={"PREPARE_STATUS": "4"})
  assert out.returncode == 4 and "the shared speech side ser_pretrain-demo_embedded failed (exit status 4)" in \
      out.stderr
  assert len(record.read_text().splitlines()) == 1  # no run started
  record.unlink()
  out = _sweep(path, f"--root={tmp_path}/r", f"--python={fake}", "--keep-going", env={"PREPARE_STATUS": "4"})
  assert out.returncode == 1 and "4 run(s) failed" in out.stderr
  assert len(record.read_text().splitlines()) == 1


@pytest.mark.slow
def test_the_shared_stage1_is_never_trained_by_two_processes(sweep_file, tmp_path, data_dir):
  """While one process holds the shared speech side's workdir (the workdir lock), the sweep's preparation stops
  naming the holder, trains nothing, and starts no run."""
  import train_helpers as th

  from erclap import workdir_lock

  root = tmp_path / "r"
  shared = root / "tiny" / "_shared" / "ser_pretrain-demo_embedded"
  flags = th.override_flags(data_dir, **{"recipe.stage1": "ser_pretrain:demo", "recipe.stage1_steps": 2})
  with workdir_lock.WorkdirLock(str(shared)):
    out = _sweep(sweep_file(TWO_STAGE), f"--root={root}", "--", *flags, env=th.subprocess_env(num_devices=1))
  assert out.returncode != 0
  assert "is in use by another run" in out.stderr and f"pid {os.getpid()}" in out.stderr, out.stderr[-2000:]
  assert "the shared speech side ser_pretrain-demo_embedded failed" in out.stderr
  assert not (shared / "stage1").exists()
  assert not [p for p in (root / "tiny").iterdir() if p.name != "_shared" and p.is_dir()]  # no run started


# ---------------------------------------------------------------- tpu_vm.sh
def _remote_program(remote):
  """The program words inside a `run` remote command (between the venv activation and the tee)."""
  m = re.search(r"\. \.venv/bin/activate && (.*) 2>&1 \| tee ~/erclap_logs/[A-Za-z0-9._-]+\."
                r"\$\(hostname\)\.log$", remote)
  assert m, remote
  return shlex.split(m.group(1))


def _fake_gcloud_path(tmp_path):
  """A PATH whose `gcloud` leaves a mark: a dry run must never call it."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / "gcloud").write_text(f"#!/bin/sh\ntouch {tmp_path}/gcloud-was-called\n")
  (bin_dir / "gcloud").chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_tpu_vm_dry_run_prints_gcloud_commands(tmp_path):
  env = _fake_gcloud_path(tmp_path)
  common = ["--name", "erclap-v4", "--zone", "us-central2-b", "--project", "my-proj"]

  out = _run(["bash", TPU_VM, "--dry-run", "create", *common], env=env)
  assert out.returncode == 0, out.stderr
  assert _commands(out.stdout) == [["gcloud", "compute", "tpus", "tpu-vm", "create", "erclap-v4",
                                    "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-32",
                                    "--version=tpu-ubuntu2204-base"]]
  out = _run(["bash", TPU_VM, "create", *common, "--accelerator-type=v4-64", "--spot"],
             env={**env, "DRY_RUN": "1"})
  [create] = _commands(out.stdout)
  assert "--accelerator-type=v4-64" in create and "--spot" in create

  out = _run(["bash", TPU_VM, "--dry-run", "install", *common], env=env)
  assert out.returncode == 0, out.stderr
  archive, scp, ssh = _commands(out.stdout)
  assert archive[:4] == ["git", "-C", ROOT, "archive"] and archive[-1] == "HEAD"
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[5] == archive[archive.index("-o") + 1]  # the archive just made is what is copied
  assert ssh[4:6] == ["ssh", "erclap-v4"] and "--worker=all" in ssh
  remote = _flag(ssh, "--command")
  assert "tar -xzf ~/erclap.tar.gz" in remote and ".venv/bin/pip install -q -e '.[tpu]'" in remote
  out = _run(["bash", TPU_VM, "--dry-run", "install", *common, "--repo", "https://example.org/erclap.git",
              "--ref", "v1"], env=env)
  [ssh] = _commands(out.stdout)
  assert "git clone -q https://example.org/erclap.git ~/erclap" in _flag(ssh, "--command")
  assert "checkout -q v1" in _flag(ssh, "--command")

  program = ["python", "-m", "erclap.main", "--config=configs/tpu_v4.py", "--workdir=gs://b/run 1",
             "--config.data.manual_dir=/it's here", "--config.mesh.shape=(1,-1,1)"]
  out = _run(["bash", TPU_VM, "--dry-run", "run", *common, "--log-name", "run1", "--", *program], env=env)
  assert out.returncode == 0, out.stderr
  [ssh] = _commands(out.stdout)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "erclap-v4"]
  assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh and "--project=my-proj" in ssh
  remote = _flag(ssh, "--command")
  assert _remote_program(remote) == program  # every argument arrives intact, quoting included
  assert "tee ~/erclap_logs/run1.$(hostname).log" in remote and remote.startswith("set -o pipefail;")
  assert _flag(ssh, "--output-directory") == os.path.join(ROOT, "workdirs", "tpu_logs", "erclap-v4", "run1")

  out = _run(["bash", TPU_VM, "--dry-run", "logs", *common, "--dest", str(tmp_path / "logs")], env=env)
  [scp] = _commands(out.stdout)
  assert scp[4:7] == ["scp", "--recurse", "erclap-v4:erclap_logs/*"] and "--worker=all" in scp
  assert scp[7] == f"{tmp_path}/logs/"

  out = _run(["bash", TPU_VM, "--dry-run", "delete", *common], env=env)
  assert _commands(out.stdout) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "erclap-v4",
                                    "--zone=us-central2-b", "--project=my-proj", "--quiet"]]
  assert not (tmp_path / "gcloud-was-called").exists()
  assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("args, needle", [
    (["run", "--zone", "z", "--", "python"], "--name is required"),
    (["run", "--name", "a", "--", "python"], "--zone is required"),
    (["run", "--name", "a", "--zone", "z"], "give the command after --"),
    (["run", "--name", "Bad_Name", "--zone", "z", "--", "x"], "--name 'Bad_Name'"),
    (["frobnicate", "--name", "a", "--zone", "z"], "unknown subcommand 'frobnicate'"),
    (["create", "--name", "a", "--zone", "z", "--bogus"], "unknown argument '--bogus'"),
])
def test_tpu_vm_usage_errors(tmp_path, args, needle):
  out = _run(["bash", TPU_VM, "--dry-run", *args], env=_fake_gcloud_path(tmp_path))
  assert out.returncode == 2 and needle in out.stderr, out.stderr
  assert out.stdout == ""


# ---------------------------------------------------------------- SLURM
def test_slurm_wrapper_dry_run(tmp_path):
  program = ["--config=configs/gpu.py", "--workdir=rel/run1", "--config.mesh.shape=(1,-1,1)",
             "--config.data.manual_dir=/it's here"]
  out = _run(["bash", SLURM_SH, "--dry-run", "--nodes", "4", "--partition", "gpu", "--time", "2:00:00", "--",
              *program], cwd=str(tmp_path))
  assert out.returncode == 0, out.stderr
  [cmd] = _commands(out.stdout)
  i = cmd.index(SLURM_SBATCH)
  assert cmd[0] == "sbatch"
  assert {"--nodes=4", "--partition=gpu", "--time=2:00:00", f"--chdir={ROOT}"} <= set(cmd[:i])
  workdir = f"{tmp_path}/rel/run1"  # relative to where it was submitted; the job starts in the repo root
  assert _flag(cmd[:i], "--output") == f"{workdir}/slurm-%j.out"
  assert cmd[i + 1:] == [program[0], f"--workdir={workdir}", *program[2:]]
  assert not (tmp_path / "rel").exists()
  out = _run(["bash", SLURM_SH, "--dry-run", "--", "--config=configs/gpu.py"])
  assert out.returncode == 2 and "--workdir" in out.stderr


def _slurm_env(tmp_path, **extra):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  # scontrol expands the node list; this stand-in answers for the allocation below.
  (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-a[07-09]" ] '
                                    '&& printf "gpu-a07\\ngpu-a08\\ngpu-a09\\n"\n')
  (bin_dir / "scontrol").chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-a[07-09]",
          "SLURM_NNODES": "3", "SLURM_SUBMIT_DIR": ROOT, "SLURM_JOB_ID": "42", **extra}


def test_slurm_batch_script_dry_run_one_task_per_node(tmp_path):
  program = ["--config=configs/gpu.py", "--workdir=/shared/run1", "--config.train.learning_rate=3e-05"]
  out = _run(["bash", SLURM_SBATCH, *program], env=_slurm_env(tmp_path, DRY_RUN="1"))
  assert out.returncode == 0, out.stderr
  [cmd] = _commands(out.stdout)
  assert cmd[0] == "srun" and {"--nodes=3", "--ntasks=3", "--ntasks-per-node=1"} <= set(cmd)
  j = cmd.index("erclap-task")
  assert cmd[j + 1:j + 4] == [os.path.join(ROOT, ".venv", "bin", "python"), "-m", "erclap.main"]
  assert cmd[j + 4:j + 7] == program
  assert cmd[j + 7:] == ["--config.distributed.coordinator_address=gpu-a07:12355",
                         "--config.distributed.num_processes=3"]
  # What each task runs: its process id comes from its own SLURM_PROCID.
  task = cmd[cmd.index("bash"):]
  task[task.index("erclap-task") + 1] = "echo"
  for procid in ("0", "2"):
    res = _run(task, env={"SLURM_PROCID": procid})
    assert res.stdout.split()[-1] == f"--config.distributed.process_id={procid}"
    assert res.stdout.split()[:3] == ["-m", "erclap.main", program[0]]


def test_slurm_batch_script_refuses_bad_use(tmp_path):
  out = _run(["bash", SLURM_SBATCH, "--config=configs/gpu.py", "--config.distributed.num_processes=2"],
             env=_slurm_env(tmp_path, DRY_RUN="1"))
  assert out.returncode == 2 and "--config.distributed.num_processes=2" in out.stderr
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  out = subprocess.run(["bash", SLURM_SBATCH, "--config=configs/gpu.py"], env=env, capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
  assert out.returncode != 0 and "not inside a SLURM allocation" in out.stderr


def test_scripts_parse():
  for script in (TPU_VM, SLURM_SH, SLURM_SBATCH):
    res = _run(["bash", "-n", script])
    assert res.returncode == 0, (script, res.stderr)
    assert "set -euo pipefail" in open(script).read()
