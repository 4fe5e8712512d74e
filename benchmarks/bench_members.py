"""K members in one program against K standalone runs: the demo's cross-modal stage on its speech cache.

  python benchmarks/bench_members.py                                  # K = 1, 2, 4, 8; 600 steps (~23 min on 2 cores)
  python benchmarks/bench_members.py --ks=1,4 --steps=100             # a quick look

Both sides run as a user runs them: ``python -m erclap.main --config=configs/demo.py --mode=all`` (training with
its periodic evaluations, then the export of the test split), on one frozen stage-1 speech model and its cache
(``configs/demo.py``'s stage 1, trained and cached once before anything is timed; ``--shared`` reuses them). The
program of K members varies the seed (``config.members.seeds=(0, ..., K-1)``, one data order); standalone run k is
member k's config (``seed=k``, ``data.seed=0``), the runs started one after another. Wall time is from the
process's start to its exit (the last export written). The processes alternate (program 1, run 0, program 2,
run 1, program 4, runs 2-3, program 8, runs 4-7), so that a change of load on a shared machine falls on both sides;
the standalone time for K is the sum of runs 0..K-1.

Each process's output lines are timed as they come, giving the breakdown: start-up (to the resolved config),
set-up and compilation (to the first logged window, less its steps at the steady rate), the training steps (the
steady step time x steps), the periodic evaluations, the export (with its checkpoint restore). Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_LINE = re.compile(r"^\[train\] step (\d+)/(\d+)\s+loss .*?\s([\d.]+) steps/s")


def _env() -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
              PYTHONUNBUFFERED="1")


def prepare(shared: str) -> None:
  """Stage 1 of configs/demo.py and its speech cache in ``shared`` (as the demo makes them), once."""
  if os.path.isfile(os.path.join(shared, "speech_features", "fingerprint.json")):
    return
  code = ("from erclap import configs, recipe, resolve; "
          f"recipe.prepare_stages(resolve.resolve(configs.get('demo'), {shared!r}, 'train'), {shared!r})")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), check=True)


def _flags(shared: str, steps: int) -> list[str]:
  flags = ["--config.recipe.stage1=", f"--config.model.speech_init={shared}/stage1",
           "--config.model.freeze_speech=True", f"--config.data.speech_features={shared}/speech_features",
           "--config.data.seed=0"]
  if steps != 600:  # the demo's: evaluation and checkpoints every third of the run
    flags += [f"--config.train.num_steps={steps}", f"--config.eval.every_steps={max(steps // 3, 1)}",
              f"--config.checkpoint.every_steps={max(steps // 3, 1)}",
              f"--config.train.warmup_steps={min(50, steps // 4)}"]
  return flags


def timed_run(workdir: str, flags: list[str]) -> dict:
  """Runs ``python -m erclap.main --mode=all`` and times it and its phases (see the module docstring)."""
  cmd = [sys.executable, "-m", "erclap.main", "--config=configs/demo.py", f"--workdir={workdir}", "--mode=all", *flags]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout]
  proc.wait()
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n" + "\n".join(t for _, t in lines[-30:]))
  return dict(wall=wall, **_phases(lines, wall))


def _phases(lines: list[tuple[float, str]], wall: float) -> dict:
  """The breakdown of one process's wall time from its timed output lines."""
  config_at = next(t for t, line in lines if line.startswith("[config]"))
  windows = [(t, int(m.group(1)), float(m.group(3))) for t, line in lines if (m := TRAIN_LINE.match(line))]
  step_s = 1.0 / statistics.median(rate for _, _, rate in windows[1:])  # the first window holds the compilation
  first_t, first_step, _ = windows[0]
  steps = windows[-1][1]
  evals, previous = 0.0, config_at
  for t, line in lines:
    if line.startswith("[eval] step"):  # one line per evaluated run, after its evaluation
      evals += t - previous
    previous = t
  export_at = next(t for t, line in lines if line.startswith("[export]"))
  return dict(startup=config_at, setup_compile=first_t - config_at - first_step * step_s, steps=steps * step_s,
              step_ms=1000 * step_s, evaluation=evals, export=wall - export_at)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ks", default="1,2,4,8", help="member counts")
  p.add_argument("--steps", type=int, default=600, help="cross-modal steps (the demo's 600)")
  p.add_argument("--root", default="/tmp/erclap_bench_members", help="workdirs (replaced)")
  p.add_argument("--shared", default="", help="stage 1 + cache of configs/demo.py (default: <root>/shared)")
  opts = p.parse_args(argv)
  ks = [int(k) for k in opts.ks.split(",")]
  shared = opts.shared or os.path.join(opts.root, "shared")
  prepare(shared)
  load_before = os.getloadavg()
  programs, runs = {}, {}
  for k in ks:  # program K, then the standalone runs not yet timed up to K (the A B A B order)
    programs[k] = timed_run(os.path.join(opts.root, f"program{k}.{time.time_ns()}"),
                            [*_flags(shared, opts.steps), f"--config.members.seeds={tuple(range(k))}".replace(" ", "")])
    print(f"# program of {k} member(s): {programs[k]['wall']:.0f} s", flush=True)
    for seed in range(k):
      if seed not in runs:
        runs[seed] = timed_run(os.path.join(opts.root, f"run{seed}.{time.time_ns()}"),
                               [*_flags(shared, opts.steps), f"--config.seed={seed}"])
        print(f"# standalone run seed {seed}: {runs[seed]['wall']:.0f} s", flush=True)
  load_after = os.getloadavg()

  print(f"\n{opts.steps} cross-modal steps x 64 on the cache, evaluation every {max(opts.steps // 3, 1)} steps, export "
        f"of the test split; {os.cpu_count()}-core CPU shared with other jobs (load average {load_before[0]:.1f} "
        f"before, {load_after[0]:.1f} after; niceness {os.nice(0)})\n")
  print("| K | program (s) | K standalone runs (s) | speed-up | step, program (ms) | step, one run (ms) |")
  print("|---|---|---|---|---|---|")
  for k in ks:
    alone = sum(runs[s]["wall"] for s in range(k))
    step_alone = statistics.median(runs[s]["step_ms"] for s in range(k))
    print(f"| {k} | {programs[k]['wall']:.0f} | {alone:.0f} | {alone / programs[k]['wall']:.2f}x | "
          f"{programs[k]['step_ms']:.0f} | {step_alone:.0f} |")
  print("\nWhere the time goes (s): the program of K, and one standalone run (the mean of runs 0..K-1)\n")
  phases = ("startup", "setup_compile", "steps", "evaluation", "export")
  print("| K | " + " | ".join(f"{p} (program / one run)" for p in phases) + " |")
  print("|---|" + "---|" * len(phases))
  for k in ks:
    cells = [f"{programs[k][p]:.0f} / {statistics.mean(runs[s][p] for s in range(k)):.0f}" for p in phases]
    print(f"| {k} | " + " | ".join(cells) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
