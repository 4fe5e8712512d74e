r"""Expand a sweep (configs/sweeps/<name>.py) into runs; submit each one locally, to a TPU VM slice or SLURM.

  python launch/sweep.py configs/sweeps/demo_smoke.py --backend=local --root=workdirs/sweeps
  python launch/sweep.py batch_temperature_lr --backend=tpu --tpu-name=erclap-v4 --zone=us-central2-b \
      --root=gs://BUCKET/erclap/sweeps -- --config.data.manual_dir=/data/MSP-Podcast
  python launch/sweep.py batch_temperature_lr --backend=slurm --sbatch-arg=--partition=gpu \
      --root=/shared/erclap/sweeps --dry-run

Each run gets its own workdir ``<root>/<sweep>/<run>``, where ``<run>`` is made from the run's overrides
(``bs1024_tau0.05_lr1e-4``): deterministic, so re-submitting a sweep resumes every run from its own
checkpoints. Every override key (and every ``--config.*`` key after ``--``) is checked against the base
config before anything is submitted, and each run's config is validated as the program would.
``--dry-run`` prints the commands and runs nothing. Launching also writes the TensorBoard HParams experiment
config into ``<root>/<sweep>`` (the swept keys and the headline metrics).

Runs of the two-stage recipe (``recipe.stage1``) that share their speech side (the same stage-1 config and
speech representation: ``speech_side``) share one stage 1 and one speech cache, ``<root>/<sweep>/_shared/<name>``,
prepared once (``--mode=prepare_speech``) before them: locally and on a TPU slice first, on SLURM as a job the
runs depend on. The runs read it with the recipe off (``erclap.resolve.stage1_overrides``).

  python launch/sweep.py demo_smoke --root=workdirs/sweeps --summarize

``--summarize`` trains nothing: it reads what the runs left and writes ``summary.csv``, ``summary_groups.csv``
(seeds pooled, Student-t intervals), ``summary.md`` and plots into ``<root>/<sweep>`` (``erclap.results.sweep``).
See launch/README.md and docs/results.md.

A sweep file's ``members`` (member axes, ``{"seed": (0, 1, 2, 3)}``) makes each run one program of the product of
those axes (``config.members``, ``erclap.members``): one process per point of the other axes, and ``--summarize``
lists each member as a run (``<run>/members/<k>``) with its member values as swept keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from erclap import config_lib, validation
from erclap import members as members_lib
from erclap.configs.sweeps import member_overrides
from erclap.results import hparams as hparams_lib
from erclap.results import runs as runs_lib
from erclap.results import sweep as summary_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS_DIR = os.path.join(REPO_ROOT, "configs", "sweeps")
BACKENDS = ("local", "tpu", "slurm")
MAX_NAME_LEN = 120

# Short names for the keys sweeps usually vary; any other key is named by its last component.
ABBREVIATIONS = {
    "train.global_batch_size": "bs",
    "train.micro_batch_size": "mb",
    "train.temperature_init": "tau",
    "train.learning_rate": "lr",
    "train.num_steps": "steps",
    "train.warmup_steps": "warmup",
    "train.weight_decay": "wd",
    "train.speech_lr_multiplier": "speechlr",
    "train.text_lr_multiplier": "textlr",
    "model.joint_dim": "dim",
    "model.size": "size",
    "mesh.shape": "mesh",
}


SHARED_DIR = "_shared"      # <root>/<sweep>/_shared/<name>: a stage 1 and speech cache that runs share
PREPARE_MODES = ("train", "all")  # the modes that need the shared speech side prepared first


@dataclass(frozen=True)
class Run:
  """One run of a sweep: its name (the last part of its workdir), workdir and program arguments."""
  name: str
  workdir: str
  overrides: dict[str, Any]
  args: list[str] = field(default_factory=list)  # arguments of `python -m erclap.main`
  shared: str = ""  # the name of the shared speech side it reads (``SharedSpeech``), "" for none

  @property
  def tag(self) -> str:  # in job and log names
    return self.name


@dataclass(frozen=True)
class SharedSpeech:
  """A stage 1 and its speech cache that runs of a sweep share, in ``<root>/<sweep>/_shared/<name>``: made once by
  ``python -m erclap.main ... --mode=prepare_speech`` before the runs that read it."""
  name: str
  workdir: str
  args: list[str]   # arguments of `python -m erclap.main` (--mode=prepare_speech)
  runs: list[str]   # the runs that read it

  @property
  def tag(self) -> str:
    return f"{SHARED_DIR}.{self.name}"


@dataclass(frozen=True)
class Sweep:
  name: str
  base_config: str                # relative to the repository root, e.g. "configs/tpu_v4.py"
  runs: list[dict[str, Any]]      # overrides that vary (they name the workdirs)
  fixed: dict[str, Any]           # overrides applied to every run (not in the names)
  summary_metrics: tuple[str, ...] = ()  # summary.md's and HParams' metrics; () = the stage's headline metrics
  members: dict[str, tuple] = field(default_factory=dict)  # member axes: {key: values}, crossed into config.members

  @property
  def member_overrides(self) -> dict[str, tuple]:
    """The ``config.members`` overrides every run gets (the member axes' product; {} without)."""
    return member_overrides(self.members)

  @property
  def member_keys(self) -> list[str]:
    """The config keys the member axes stand for, in their order."""
    return [members_lib.key_named(key).config_key for key in self.members]


# ---------------------------------------------------------------- loading
def _load_module(path: str, what: str):
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path!r}: no such file")
  module_name = "_erclap_launch_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def resolve_sweep_path(sweep: str) -> str:
  """A sweep file path, or a bare name looked up in configs/sweeps/ (``demo_smoke``)."""
  if os.path.isfile(sweep):
    return sweep
  candidate = os.path.join(SWEEPS_DIR, sweep if sweep.endswith(".py") else sweep + ".py")
  if os.path.isfile(candidate):
    return candidate
  raise ValueError(f"sweep {sweep!r}: neither a file nor a sweep in {SWEEPS_DIR}")


def load_sweep(sweep: str) -> Sweep:
  """Loads a sweep module; raises ValueError naming the file when it lacks what a sweep needs."""
  path = resolve_sweep_path(sweep)
  module = _load_module(path, "sweep file")
  base_config = getattr(module, "base_config", None)
  if not isinstance(base_config, str) or not base_config:
    raise ValueError(f"sweep file {path!r}: needs a `base_config` string, e.g. 'configs/tpu_v4.py'")
  if not callable(getattr(module, "get_sweep", None)):
    raise ValueError(f"sweep file {path!r}: needs a `get_sweep()` function returning a list of overrides")
  runs = module.get_sweep()
  if not isinstance(runs, list) or not runs or not all(isinstance(r, Mapping) for r in runs):
    raise ValueError(f"sweep file {path!r}: get_sweep() must return a non-empty list of dicts, got {runs!r}")
  fixed = dict(getattr(module, "fixed", {}) or {})
  summary_metrics = getattr(module, "summary_metrics", ())
  if not isinstance(summary_metrics, tuple | list) or not all(isinstance(m, str) and m for m in summary_metrics):
    raise ValueError(f"sweep file {path!r}: `summary_metrics` must be a tuple of metric names, got "
                     f"{summary_metrics!r}")
  axes = getattr(module, "members", {}) or {}
  if not isinstance(axes, Mapping):
    raise ValueError(f"sweep file {path!r}: `members` must be a dict of member axes, e.g. {{'seed': (0, 1, 2, 3)}}")
  try:
    member_overrides(axes)
  except ValueError as e:
    raise ValueError(f"sweep file {path!r}: members: {e}") from None
  return Sweep(name=os.path.splitext(os.path.basename(path))[0], base_config=base_config,
               runs=[dict(r) for r in runs], fixed=fixed, summary_metrics=tuple(summary_metrics),
               members={k: tuple(v) for k, v in axes.items()})


def load_base_config(base_config: str):
  """The base config (an ml_collections.ConfigDict) of a sweep, from a path relative to the repo root, with its
  argument as the program reads it (``configs/demo.py:single_stage``)."""
  path, _, argument = base_config.partition(":")
  path = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
  module = _load_module(path, "base config")
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"base config {base_config!r}: has no get_config()")
  return module.get_config(argument) if argument else module.get_config()


# ---------------------------------------------------------------- validation
def validate_runs(sweep: Sweep, extra_keys: Sequence[str] = ()) -> None:
  """Checks every override key against the base config, and each run's config values as the program would.

  Raises ValueError (config_lib.ConfigError) naming the run and the key."""
  base = load_base_config(sweep.base_config)
  for key in extra_keys:
    config_lib.check_key(base, key, "argument after --")
  taken = set(sweep.member_keys) | set(sweep.member_overrides)
  for key in [*sweep.fixed, *(k for r in sweep.runs for k in r), *extra_keys]:
    if key in taken:
      raise config_lib.ConfigError(f"sweep {sweep.name!r}: {key!r} is a member axis (`members`); set it there only")
  for i, overrides in enumerate(sweep.runs):
    where = f"sweep {sweep.name!r}, run {i} {overrides}"
    config = config_lib.apply_overrides(base, {**sweep.fixed, **sweep.member_overrides, **overrides}, where)
    try:
      validation.validate(config)  # the program's validation, before the run's command line and devices exist
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"{where}: {e}") from None


# ---------------------------------------------------------------- names and command lines
def _name_value(value: Any) -> str:
  """A compact, filesystem-safe rendering of a value for a workdir name (1e-4, 0.05, 1x-1x1)."""
  if isinstance(value, float) and math.isfinite(value) and value != 0 and not (1e-3 <= abs(value) < 1e5):
    mantissa, exponent = f"{value:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, list | tuple):
    return "x".join(_name_value(v) for v in value) or "empty"
  return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
  """The workdir name of a run: its overrides in order, e.g. ``bs1024_tau0.05_lr1e-4``.

  Numbers follow their (abbreviated) key directly; other values after a dash (``loss-infonce``).
  Characters outside [A-Za-z0-9.-] become dashes; parts are joined by underscores.
  """
  if not overrides:
    return "base"
  parts = []
  for key, value in overrides.items():
    label = ABBREVIATIONS.get(key, key.split(".")[-1].replace("_", ""))
    text = _name_value(value)
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    parts.append(label + text if numeric else f"{label}-{text}")
  name = "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p) for p in parts).strip(".")
  if len(name) > MAX_NAME_LEN:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f"{name[:MAX_NAME_LEN - 11]}-{digest}"
  return name


def join_path(root: str, *parts: str) -> str:
  """``root/part/...`` for local paths and gs:// URLs alike."""
  return "/".join([root.rstrip("/"), *parts]) if root else "/".join(parts)


def expand(sweep: Sweep, root: str, mode: str = "train", extra_args: Sequence[str] = ()) -> list[Run]:
  """The runs of a sweep with unique workdirs and the arguments of `python -m erclap.main` for each."""
  runs, seen = [], {}
  for overrides in sweep.runs:
    name = run_name(overrides)
    if name in seen:
      raise ValueError(f"sweep {sweep.name!r}: runs {seen[name]} and {overrides} both get the workdir name "
                       f"{name!r}: make the overrides differ, or move constants to `fixed`")
    seen[name] = overrides
    workdir = join_path(root, sweep.name, name)
    args = [f"--config={sweep.base_config}", f"--workdir={workdir}", f"--mode={mode}"]
    args += config_lib.override_flags({**sweep.fixed, **sweep.member_overrides, **overrides})
    args += list(extra_args)
    runs.append(Run(name=name, workdir=workdir, overrides=dict(overrides), args=args))
  return runs


def extra_config_keys(extra_args: Sequence[str]) -> list[str]:
  """The config keys named by ``--config.KEY=VALUE`` arguments passed through after ``--``."""
  keys = []
  for arg in extra_args:
    if arg.startswith("--config."):
      if "=" not in arg:
        raise ValueError(f"extra argument {arg!r}: write --config.KEY=VALUE")
      keys.append(arg[len("--config."):].split("=", 1)[0])
  return keys


def command_for(run: Run | SharedSpeech, sweep: Sweep, backend: str, opts: argparse.Namespace,
                after: str = "") -> list[str]:
  """The command that submits (or, locally, runs) one run, or prepares a shared speech side.

  ``after``: slurm: the job id the run waits for (its shared speech side's job)."""
  program = ["-m", "erclap.main", *run.args]
  if backend == "local":
    return [opts.python or sys.executable, *program]
  if backend == "tpu":
    cmd = ["bash", "launch/tpu_vm.sh", "run", "--name", opts.tpu_name, "--zone", opts.zone]
    if opts.project:
      cmd += ["--project", opts.project]
    return [*cmd, "--log-name", f"{sweep.name}.{run.tag}", "--", "python", *program]
  if backend == "slurm":
    cmd = ["sbatch", f"--job-name=erclap.{sweep.name}.{run.tag}"]
    if isinstance(run, SharedSpeech):
      cmd.append("--parsable")  # prints the job id the runs depend on
    if after:  # a failed preparation cancels the runs instead of leaving them pending
      cmd += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    if not run.workdir.startswith("gs://"):
      cmd.append(f"--output={run.workdir}/slurm-%j.out")
    if opts.python:
      cmd.append(f"--export=ALL,ERCLAP_PYTHON={opts.python}")
    return [*cmd, *opts.sbatch_arg, "launch/slurm.sbatch", *run.args]
  raise ValueError(f"--backend={backend!r}: choose one of {BACKENDS}")


# ---------------------------------------------------------------- the shared speech side
def with_extra_args(config, extra_args: Sequence[str]):
  """``config`` with the ``--config.KEY=VALUE`` arguments passed through after ``--`` applied, parsed as the
  program's own flag parser (ml_collections' config flags) reads them."""
  from absl import flags
  from ml_collections import config_flags

  argv = ["sweep.py", *(a for a in extra_args if a.startswith("--config."))]
  if len(argv) == 1:
    return config
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config_lib.apply_overrides(config, {}), flag_values=values,
                                  sys_argv=argv)
  values(argv)
  return values.config


def speech_side(config) -> dict[str, str] | None:
  """What a two-stage run's speech side is made of: stage 1's config (``erclap.resolve.stage1_config``, seeded by
  ``recipe.stage1_seed``) and what the cross-modal stage reads of it (its representation, whether cached, the
  cache's splits); runs with equal speech sides can read one stage 1 and one cache. None for a run without the
  recipe (one stage, or ``model.speech_init`` given). Values as their repr, by dotted key."""
  from erclap import resolve  # the models and losses behind it: only two-stage sweeps need it

  if not config.recipe.stage1 or config.model.speech_init:
    return None
  side = {f"stage1 {k}": repr(v) for k, v in config_lib.flat_items(resolve.stage1_config(config))}
  cross = config_lib.apply_overrides(config, resolve.stage1_overrides(config, "stage1", "cache"))
  side.update({"cached": repr(bool(cross.data.speech_features)), "cache": config.data.speech_features,
               "model.speech_representation": repr(config.model.get("speech_representation", "")),
               "splits": repr([config.data.train_split, config.data.eval_split, config.data.test_split,
                               *config.export.splits])})
  return side


def _shared_name(stage1: str, corpus: str, members: Sequence[Mapping[str, Any]],
                 others: Sequence[Sequence[Mapping[str, Any]]]) -> str:
  """The directory name of a shared speech side: stage 1's config and the corpus (``ser_pretrain-demo_embedded``),
  then the swept values its runs have in common and other shared sides do not (``stage1seed1``)."""
  common = {k: v for k, v in members[0].items() if all(k in m and m[k] == v for m in members)}
  own = {k: v for k, v in common.items() if any(any(m.get(k) != v for m in group) for group in others)}
  prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{stage1}_{corpus}")
  return prefix + ("_" + run_name(own) if own else "")


def share_speech(sweep: Sweep, runs: Sequence[Run], root: str, extra_args: Sequence[str] = ()
                 ) -> tuple[list[Run], list[SharedSpeech]]:
  """The runs with the recipe's stage 1 replaced by the shared speech side they read, and those sides.

  Runs whose ``speech_side`` is equal share one: ``<root>/<sweep>/_shared/<name>`` (``_shared_name``), prepared by
  ``--mode=prepare_speech`` with the first such run's settings; each run's arguments end with
  ``--config.recipe.stage1=`` and ``erclap.resolve.stage1_overrides`` of that directory (its ``stage1`` and
  ``speech_features``). Runs without the recipe are returned as they are.

  """
  base = load_base_config(sweep.base_config)
  sides: dict[str, tuple[dict, list[int]]] = {}
  configs = []
  for i, run in enumerate(runs):
    config = with_extra_args(config_lib.apply_overrides(base, {**sweep.fixed, **run.overrides}), extra_args)
    configs.append(config)
    side = speech_side(config)
    if side is not None:
      sides.setdefault(repr(sorted(side.items())), (side, []))[1].append(i)
  if not sides:
    return list(runs), []
  from erclap import resolve

  groups = [members for _, members in sides.values()]
  out, shared, names = list(runs), [], {}
  for members in groups:
    first = configs[members[0]]
    others = [[runs[i].overrides for i in g] for g in groups if g is not members]
    name = _shared_name(first.recipe.stage1, first.data.name, [runs[i].overrides for i in members], others)
    if name in names:  # stage 1 changes with a combination of swept values: named by its settings' digest
      key = next(k for k, (_, m) in sides.items() if m is members)
      name = f"{name}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    names[name] = runs[members[0]].name
    workdir = join_path(root, sweep.name, SHARED_DIR, name)
    prepare = [f"--config={sweep.base_config}", f"--workdir={workdir}", "--mode=prepare_speech",
               *config_lib.override_flags({**sweep.fixed, **runs[members[0]].overrides}), *extra_args]
    shared.append(SharedSpeech(name, workdir, prepare, [runs[i].name for i in members]))
    for i in members:
      cache = configs[i].data.speech_features or join_path(workdir, "speech_features")
      reads = {"recipe.stage1": "", **resolve.stage1_overrides(configs[i], join_path(workdir, resolve.STAGE1_DIR),
                                                                cache)}
      out[i] = dataclasses.replace(runs[i], args=[*runs[i].args, *config_lib.override_flags(reads)], shared=name)
  return out, shared


# ---------------------------------------------------------------- results
def swept_values(sweep: Sweep, runs: Sequence[Run]) -> tuple[list[str], list[summary_lib.SweepRun]]:
  """The swept keys (every key a run overrides, then the member axes' config keys) and each run's value of every
  one of them: its override, else the base config's (with ``fixed``), so that a key only some runs set still has a
  value in every run. With member axes each member of each run's program is a run (``<run>/members/<k>``, its
  directory), with its member values."""
  keys = summary_lib.swept_keys(sweep.runs)
  base = config_lib.apply_overrides(load_base_config(sweep.base_config), sweep.fixed, f"sweep {sweep.name!r}")
  member_values = [dict(zip(sweep.member_keys, point, strict=True))
                   for point in zip(*sweep.member_overrides.values(), strict=True)]
  out = []
  for run in runs:
    values = {k: run.overrides[k] if k in run.overrides else config_lib.get(base, k) for k in keys}
    if not member_values:
      out.append(summary_lib.SweepRun(name=run.name, workdir=run.workdir, values=values))
    for k, own in enumerate(member_values):
      out.append(summary_lib.SweepRun(name=f"{run.name}/{members_lib.MEMBERS_DIR}/{k}",
                                      workdir=members_lib.directory(run.workdir, k), values={**values, **own}))
  return [*keys, *sweep.member_keys], out


def _stage_settings(sweep: Sweep) -> tuple[tuple[str, ...], str, str]:
  """(the sweep's headline metrics: its ``summary_metrics``, else those of its stage; checkpoint.best_metric,
  checkpoint.best_mode) of its base config."""
  from erclap import stages  # the models and losses behind it: only results need the headline metrics

  base = config_lib.apply_overrides(load_base_config(sweep.base_config), sweep.fixed, f"sweep {sweep.name!r}")
  return (sweep.summary_metrics or stages.of(base).headline_metrics, base.checkpoint.best_metric,
          base.checkpoint.best_mode)


def write_hparams_experiment(sweep: Sweep, runs: Sequence[Run], root: str) -> str:
  """The TensorBoard HParams experiment config of the sweep in ``<root>/<sweep>``: its swept keys with their
  values, its stage's headline metrics (``eval/<metric>``)."""
  keys, sweep_runs = swept_values(sweep, runs)
  headline, _, _ = _stage_settings(sweep)
  values = {k: [r.values[k] for r in sweep_runs] for k in keys}
  return hparams_lib.write_experiment(join_path(root, sweep.name), values, headline)


def summarize(sweep: Sweep, runs: Sequence[Run], root: str) -> int:
  """``--summarize``: reads every run of the sweep and writes the summary files; returns the exit status."""
  sweep_dir = join_path(root, sweep.name)
  start = shlex.join(["python", "launch/sweep.py", sweep.name, f"--root={root}"])
  if not os.path.isdir(sweep_dir):
    print(f"sweep.py: error: sweep {sweep.name!r} never ran under {root}: there is no {sweep_dir} "
          f"(start it with: {start})", file=sys.stderr)
    return 1
  keys, sweep_runs = swept_values(sweep, runs)
  results = [runs_lib.read_run(r.workdir) for r in sweep_runs]
  if summary_lib.never_ran(results):
    print(f"sweep.py: error: sweep {sweep.name!r} never ran under {root}: none of its {len(runs)} runs has "
          f"started (no workdir in {sweep_dir} holds a run's outputs; start it with: {start})", file=sys.stderr)
    return 1
  headline, best_metric, best_mode = _stage_settings(sweep)
  missing = [m for m in sweep.summary_metrics if not any(m in r.metrics for r in results)]
  if missing:
    print(f"sweep.py: warning: summary_metrics {', '.join(missing)}: in no run's metrics (yet)", file=sys.stderr)
  files = summary_lib.write_summary(sweep_dir, sweep.name, sweep_runs, results, keys, headline, best_metric,
                                    best_mode)
  experiment = hparams_lib.write_experiment(sweep_dir, {k: [r.values[k] for r in sweep_runs] for k in keys},
                                            headline)
  with open(files.markdown) as f:
    print(f.read(), end="")
  print(f"# summary of {len(runs)} run(s) -> {files.csv}, {files.groups_csv}, {files.markdown}, "
        f"{len(files.plots)} plot(s); TensorBoard HParams: {experiment} (tensorboard --logdir {sweep_dir})",
        flush=True)
  return 0


def _submit(cmd: list[str], run: Run | SharedSpeech, backend: str) -> tuple[int, str]:
  """Runs (local, tpu) or submits (slurm) one command from the repository root: (exit status, slurm job id)."""
  if backend in ("local", "slurm") and not run.workdir.startswith("gs://"):
    os.makedirs(run.workdir, exist_ok=True)  # sbatch writes its --output file there
  parsable = isinstance(run, SharedSpeech) and backend == "slurm"
  try:
    done = subprocess.run(cmd, cwd=REPO_ROOT, check=False, text=True, capture_output=parsable)
  except FileNotFoundError as e:
    print(f"sweep.py: error: {run.tag}: cannot start {cmd[0]!r}: {e}", file=sys.stderr)
    return 127, ""
  if not parsable:
    return done.returncode, ""
  sys.stderr.write(done.stderr)
  job = done.stdout.strip().split(";")[0]  # --parsable: "<job id>[;<cluster>]"
  if done.returncode == 0 and not job:
    print(f"sweep.py: error: sbatch printed no job id for {run.tag}", file=sys.stderr)
    return 1, ""
  if job:
    print(f"# submitted job {job}", flush=True)
  return done.returncode, job


# ---------------------------------------------------------------- command line
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  argv = list(argv)
  extra = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  p = argparse.ArgumentParser(
      prog="launch/sweep.py", description=__doc__.split("\n\n")[0],
      epilog="Arguments after `--` are appended to every run's command (--config.data.manual_dir=/data).")
  p.add_argument("sweep", help="a sweep file (configs/sweeps/NAME.py) or its NAME")
  p.add_argument("--backend", choices=BACKENDS, default="local")
  p.add_argument("--root", default="workdirs/sweeps", help="workdirs: ROOT/<sweep>/<run> (gs:// allowed)")
  p.add_argument("--base-config", default="", help="run the sweep on this config file instead of its "
                 "base_config (e.g. configs/gpu.py for a sweep written for configs/tpu_v4.py)")
  p.add_argument("--mode", choices=("train", "eval", "export", "all"), default="train")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  p.add_argument("--summarize", action="store_true",
                 help="train nothing: summarise what the runs left into ROOT/<sweep>/summary.{csv,md} (local root)")
  p.add_argument("--only", action="append", default=[], metavar="RUN",
                 help="submit only this run (its workdir name); repeatable")
  p.add_argument("--keep-going", action="store_true", help="local/tpu: go on after a failed run")
  p.add_argument("--python", default="", help="local: interpreter (default: this one); slurm: ERCLAP_PYTHON")
  p.add_argument("--tpu-name", default="", help="tpu: the TPU VM slice (launch/tpu_vm.sh create --name)")
  p.add_argument("--zone", default="", help="tpu: its zone")
  p.add_argument("--project", default="", help="tpu: its Google Cloud project (default: gcloud's)")
  p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                 help="slurm: an extra sbatch option, e.g. --sbatch-arg=--partition=gpu; repeatable")
  opts = p.parse_args(argv)
  if opts.backend == "tpu" and not (opts.tpu_name and opts.zone):
    p.error("--backend=tpu needs --tpu-name and --zone")
  return opts, extra


def main(argv: Sequence[str] | None = None) -> int:
  opts, extra = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    sweep = load_sweep(opts.sweep)
    if opts.base_config:
      sweep = dataclasses.replace(sweep, base_config=opts.base_config)
    validate_runs(sweep, extra_config_keys(extra))
    root = opts.root
    if opts.backend in ("local", "slurm") and not root.startswith("gs://"):
      root = os.path.abspath(root)  # the runs start in the repository root, not here
    runs = expand(sweep, root, opts.mode, extra)
  except ValueError as e:
    print(f"sweep.py: error: {e}", file=sys.stderr)
    return 2
  if opts.summarize:
    if "://" in opts.root:
      print(f"sweep.py: error: --summarize reads the runs' directories: copy {opts.root} to a local directory "
            f"first (gsutil -m rsync -r ...) and pass that as --root", file=sys.stderr)
      return 2
    return summarize(sweep, runs, root)
  try:
    runs, shared = share_speech(sweep, runs, root, extra)
  except ValueError as e:  # config_lib.ConfigError: a run's stage-1 config
    print(f"sweep.py: error: {e}", file=sys.stderr)
    return 2
  if opts.only:
    unknown = sorted(set(opts.only) - {r.name for r in runs})
    if unknown:
      print(f"sweep.py: error: --only {', '.join(unknown)}: not a run of {sweep.name!r} "
            f"(runs: {', '.join(r.name for r in runs)})", file=sys.stderr)
      return 2
    runs = [r for r in runs if r.name in opts.only]
  shared = [s for s in shared if set(s.runs) & {r.name for r in runs}]
  if opts.backend == "tpu" and not opts.root.startswith("gs://"):
    print("sweep.py: warning: on a multi-host TPU slice every worker must see the same workdir: use "
          "--root=gs://BUCKET/...", file=sys.stderr)

  members_note = ""
  if sweep.members:
    k = len(next(iter(sweep.member_overrides.values())))
    members_note = f" of {k} members each ({', '.join(sweep.member_keys)})"
  print(f"# sweep {sweep.name}: {len(runs)} run(s){members_note} of {sweep.base_config}, backend {opts.backend}, "
        f"from {REPO_ROOT}", flush=True)
  if not opts.dry_run:
    try:
      print(f"# TensorBoard HParams experiment: {write_hparams_experiment(sweep, runs, root)}", flush=True)
    except Exception as e:  # the runs matter more than their TensorBoard table (object stores raise their own)
      print(f"sweep.py: warning: the TensorBoard HParams experiment config was not written ({e}); "
            f"--summarize writes it later", file=sys.stderr)
  failed, jobs, unprepared = [], {}, set()
  if opts.mode not in PREPARE_MODES:
    shared = []  # the runs were trained: their shared speech side exists
  for i, side in enumerate(shared):
    cmd = command_for(side, sweep, opts.backend, opts)
    print(f"# [shared {i + 1}/{len(shared)}] {SHARED_DIR}/{side.name}: stage 1 and speech cache of "
          f"{len(side.runs)} run(s), prepared once before them", flush=True)
    print(shlex.join(cmd), flush=True)
    if opts.dry_run:
      jobs[side.name] = f"<job id of {side.tag}>"
      continue
    rc, job = _submit(cmd, side, opts.backend)
    if rc == 127:
      return rc
    if rc != 0:
      print(f"sweep.py: the shared speech side {side.name} failed (exit status {rc}): its run(s) "
            f"{', '.join(side.runs)} cannot start", file=sys.stderr, flush=True)
      if not opts.keep_going:
        return rc
      unprepared.add(side.name)
      failed += [r for r in side.runs if r in {run.name for run in runs}]
    jobs[side.name] = job
  for i, run in enumerate(runs):
    cmd = command_for(run, sweep, opts.backend, opts, after=jobs.get(run.shared, ""))
    print(f"# [{i + 1}/{len(runs)}] {run.name}" + (f" (reads {SHARED_DIR}/{run.shared})" if run.shared else ""),
          flush=True)
    print(shlex.join(cmd), flush=True)
    if opts.dry_run or run.shared in unprepared:
      continue
    rc, _ = _submit(cmd, run, opts.backend)
    if rc == 127:
      return rc
    if rc != 0:
      failed.append(run.name)
      print(f"sweep.py: run {run.name} failed (exit status {rc})", file=sys.stderr, flush=True)
      if not opts.keep_going:
        return rc
  if failed:
    print(f"sweep.py: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
