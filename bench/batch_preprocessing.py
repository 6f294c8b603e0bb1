"""How fast is a batch of realistic uploads preprocessed: in the request thread, on a
small thread pool, or in spawned helper processes? Side by side, interleaved.

    python bench/batch_preprocessing.py [--batch 64] [--batches 8] [--rounds 5] [--workers 2]
                                        [--against old_preprocessing.py]

* serial: `preprocess_many` in the calling thread;
* threads: ``preprocess_many(items, threads=--workers)``, as the batch endpoint runs it:
  one contiguous run per thread, the caller taking the first (Pillow's decoders and
  OpenCV release the GIL);
* processes: ``--workers`` spawned processes, one chunk each, as app/ml/parallel.py did
  before it was removed (the pickling of bytes in and arrays out included);
* with ``--against``: another copy of app/ml/preprocessing.py (loaded as
  bench/preprocessing_speed.py loads it) in the calling thread and in the processes.

Each round runs every batch through every mode, in a rotating order, so all modes see
the same machine load; the table gives the median time per batch, images per second,
each mode's speed relative to the processes, and the CPU time spent per image (by this
process and the helpers; Linux), which a busy shared machine changes far less than the
wall time. The last line puts the best mode
against the batch endpoint's budget: the raw model infers about 5,500 img/s batched on
this machine, and the endpoint must keep a quarter of that (~1,400 img/s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from _paths import ROOT  # noqa: F401,E402  (sets up imports first)

from app.ml.preprocessing import preprocess_many  # noqa: E402
from preprocessing_speed import load_module  # noqa: E402

RAW_INFERENCE_IMG_S = 5500.0  # the raw model on batches of 64 here (bench/http_bench.py, "raw model")


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, stop) ranges covering range(n)."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


_AGAINST = {}


def against_many(path: str, items: list[bytes], start: int = 0) -> np.ndarray:
    """`preprocess_many` of the copy at `path` (loaded once per process)."""
    if path not in _AGAINST:
        _AGAINST[path] = load_module(Path(path))
    return _AGAINST[path].preprocess_many(items, start=start)


def in_chunks(executor, items: list[bytes], parts: int, fn=preprocess_many) -> np.ndarray:
    futures = [executor.submit(fn, items[a:b], start=a) for a, b in chunks(len(items), parts)]
    return np.concatenate([f.result() for f in futures])


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and of `pids` so far, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="uploads per batch")
    parser.add_argument("--batches", type=int, default=8, help="different batches")
    parser.add_argument("--rounds", type=int, default=5, help="times every batch goes through every mode")
    parser.add_argument("--workers", type=int, default=2, help="threads or processes")
    parser.add_argument("--against", type=Path, default=None, help="another preprocessing.py, in this thread and in processes")
    args = parser.parse_args(argv)

    from bench.uploads import load_mnist_test, make_uploads

    x_test, _ = load_mnist_test()
    batches = [make_uploads(x_test[i * args.batch : (i + 1) * args.batch], seed=i) for i in range(args.batches)]

    processes = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    modes = {
        "serial": preprocess_many,
        f"threads ({args.workers})": partial(preprocess_many, threads=args.workers),
        f"processes ({args.workers})": lambda items: in_chunks(processes, items, args.workers),
    }
    if args.against:
        old = partial(against_many, str(args.against.resolve()))
        modes["against, serial"] = old
        modes[f"against, proc ({args.workers})"] = lambda items: in_chunks(processes, items, args.workers, old)
    for name, run in modes.items():  # start the processes, warm every path; same results in each pair
        for items in batches:
            want = (old if "against" in name else preprocess_many)(items)
            assert np.array_equal(run(items), want)

    helpers = list(processes._processes)
    names = list(modes)
    seconds = {name: [] for name in names}
    cpu = {name: 0.0 for name in names}
    for r in range(args.rounds):
        for b, items in enumerate(batches):
            shift = (r * len(batches) + b) % len(names)
            for name in names[shift:] + names[:shift]:
                cpu_started, started = cpu_seconds(helpers), time.perf_counter()
                modes[name](items)
                seconds[name].append(time.perf_counter() - started)
                cpu[name] += cpu_seconds(helpers) - cpu_started
    processes.shutdown()

    reference = statistics.median(seconds[f"processes ({args.workers})"])
    print(f"{args.batches} batches of {args.batch} realistic uploads, {args.rounds} rounds, interleaved")
    print(f"{'mode':<16} {'ms/batch':>9} {'p90':>7} {'img/s':>7} {'ms/img':>7} {'vs processes':>13} {'CPU ms/img':>11}")
    print("-" * 75)
    n_images = args.rounds * args.batches * args.batch
    for name in names:
        median = statistics.median(seconds[name])
        p90 = float(np.percentile(seconds[name], 90))
        print(f"{name:<16} {1000 * median:9.2f} {1000 * p90:7.2f} {args.batch / median:7.0f} "
              f"{1000 * median / args.batch:7.3f} {reference / median:12.2f}x {1000 * cpu[name] / n_images:11.3f}")
    best = min(names, key=lambda name: statistics.median(seconds[name]))
    rate = args.batch / statistics.median(seconds[best])
    print(f"best: {best}, {rate:.0f} img/s = {rate / RAW_INFERENCE_IMG_S:.2f}x raw inference "
          f"({RAW_INFERENCE_IMG_S:.0f} img/s); with inference after it: "
          f"{1 / (1 / rate + 1 / RAW_INFERENCE_IMG_S):.0f} img/s = "
          f"{1 / (1 / rate + 1 / RAW_INFERENCE_IMG_S) / RAW_INFERENCE_IMG_S:.2f}x (target 0.25x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
