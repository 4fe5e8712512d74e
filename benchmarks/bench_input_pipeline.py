"""Input pipeline throughput and embedded-corpus build time on this machine (2 shared CPU cores here).

  python benchmarks/bench_input_pipeline.py                     # build 4000/500/1000, demo + base settings
  python benchmarks/bench_input_pipeline.py --skip_build --batches=10 --workers=0

Measures, in one run: the embedded corpus build (synthesis + ArrayRecord writing, default sizes) from
scratch in a fresh directory; training-iterator examples/s at demo-like (batch 64, 3 s) and base-like
(batch 256, 4 s) settings, in-process and with Grain worker processes; the evaluation iterator; and, side
by side, what the demo training step consumes (tiny model forward+backward at batch 64, 3 s, from
bench_models.py), so the figure that matters is the ratio pipeline / consumption (target >= 5).
Single runs on a shared machine: compare ratios, not single timings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _config(data_dir: str, batch: int, seconds: float, workers: int):
  from erclap.configs import default

  c = default.get_config()
  c.data.data_dir = data_dir
  c.data.max_seconds = seconds
  c.data.max_text_tokens = 24
  c.data.worker_count = workers
  c.train.global_batch_size = batch
  return c


def bench_build(sizes: tuple[int, int, int]) -> dict:
  from erclap import data

  tmp = tempfile.mkdtemp(prefix="erclap_build_bench_")
  try:
    c = _config(tmp, 64, 3.0, 0)
    c.data.embedded.num_train, c.data.embedded.num_validation, c.data.embedded.num_test = sizes
    start = time.perf_counter()
    data.ensure_dataset(c.data)
    seconds = time.perf_counter() - start
    size_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs) / 2 ** 20
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dict(seconds=seconds, clips=sum(sizes), size_mb=size_mb)


def bench_train_iterator(data_dir: str, batch: int, seconds: float, workers: int, batches: int) -> dict:
  from erclap import input_pipeline, tokenization

  c = _config(data_dir, batch, seconds, workers)
  tokenizer = tokenization.build_tokenizer(c.model, c.data.max_text_tokens, descriptions=c.data.descriptions)
  it = input_pipeline.create_train_iterator(c, tokenizer, process_index=0, process_count=1)
  for _ in range(2 if workers == 0 else 2 * workers):  # warm-up: file handles, worker start-up
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - start
  return dict(name=f"train b{batch} {seconds:g}s workers={workers}", examples_per_s=batches * batch / elapsed)


def bench_eval_iterator(data_dir: str, batch: int, seconds: float) -> dict:
  from erclap import input_pipeline, tokenization

  c = _config(data_dir, batch, seconds, 0)
  tokenizer = tokenization.build_tokenizer(c.model, c.data.max_text_tokens, descriptions=c.data.descriptions)
  it = input_pipeline.create_eval_iterator(c, tokenizer, "test", batch_size=batch, process_index=0,
                                           process_count=1)
  start = time.perf_counter()
  n = sum(len(b["valid"]) for b in it)
  return dict(name=f"eval b{batch} {seconds:g}s", examples_per_s=n / (time.perf_counter() - start))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "erclap_bench_data"),
                      help="where the default-size embedded corpus is built once and reused")
  parser.add_argument("--sizes", default="4000,500,1000", help="train,validation,test clips for the build")
  parser.add_argument("--skip_build", action="store_true", help="skip the from-scratch build timing")
  parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
  parser.add_argument("--workers", default="0,2", help="Grain worker counts to compare")
  parser.add_argument("--skip_model", action="store_true", help="skip the demo train-step measurement")
  args = parser.parse_args()
  from absl import flags

  flags.FLAGS.mark_as_parsed()
  from erclap import data

  sizes = tuple(int(x) for x in args.sizes.split(","))
  print(f"cpu count {os.cpu_count()}; corpus {sizes}")
  if not args.skip_build:
    b = bench_build(sizes)
    print(f"embedded corpus build from scratch: {b['clips']} clips in {b['seconds']:.1f} s "
          f"({b['clips'] / b['seconds']:.0f} clips/s, {b['size_mb']:.0f} MiB on disk)")
  c = _config(args.data_dir, 64, 3.0, 0)
  c.data.embedded.num_train, c.data.embedded.num_validation, c.data.embedded.num_test = sizes
  data.ensure_dataset(c.data)

  rows = []
  for batch, seconds in ((64, 3.0), (256, 4.0)):
    for workers in (int(w) for w in args.workers.split(",")):
      n = args.batches if batch == 64 else max(4, args.batches // 4)
      rows.append(bench_train_iterator(args.data_dir, batch, seconds, workers, n))
  rows.append(bench_eval_iterator(args.data_dir, 100, 3.0))

  consume = None
  if not args.skip_model:
    import bench_models

    step = bench_models.bench_clap("tiny", 64, 3.0, 24, repeats=3)
    consume = step["examples_per_s"]
  print("\n| setting | examples/s | ratio to demo train step |")
  print("|---|---|---|")
  for r in rows:
    ratio = f"{r['examples_per_s'] / consume:.1f}x" if consume else "-"
    print(f"| {r['name']} | {r['examples_per_s']:.0f} | {ratio} |")
  if consume:
    print(f"| demo train step (tiny fwd+bwd, b64, 3 s) | {consume:.0f} | 1.0x |")


if __name__ == "__main__":
  main()
