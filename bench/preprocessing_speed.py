"""How long does `preprocess` take per image? Median ms per image for three kinds of input.

    python bench/preprocessing_speed.py [--realistic 500] [--repeats 5] [--against old.py]

* 28x28 PNG: MNIST test digits saved as 28x28 grayscale PNGs (the smallest upload);
* fixtures: the realistic uploads of tests/fixtures/mnist50 (small files, 2-4x MNIST);
* realistic: ``--realistic`` MNIST test digits rendered by bench/uploads.py (seed 0):
  paper, tint, JPEG, blur, tilt, RGBA canvas exports, up to ~600 px a side.

Every image is preprocessed ``--repeats`` times; its time is the median of those, and
the table shows the median (and mean, p95) over images. With ``--against`` another copy
of app/ml/preprocessing.py (e.g. the previous version, from ``git show``; one that
imports the old numba kernels needs them saved beside it as kernels_before.py) is timed too,
interleaved call by call so that both see the same machine load, and its outputs are
compared with the current ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _paths import ROOT  # noqa: E402  (sets up imports first)


def png_28x28(digits: np.ndarray) -> list[bytes]:
    """MNIST digits (uint8, n x 28 x 28) as 28x28 grayscale PNG files."""
    from PIL import Image

    out = []
    for digit in digits:
        buf = io.BytesIO()
        Image.fromarray(digit).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def load_module(path: Path):
    """Import a copy of preprocessing.py from `path` under a private module name.

    A copy from before OpenCV imports `app.ml.kernels` (numba), which is gone: a
    `kernels_before.py` saved beside the copy stands in for it.
    """
    kernels = path.with_name("kernels_before.py")
    if kernels.exists() and "app.ml.kernels" not in sys.modules:
        import app.ml

        spec = importlib.util.spec_from_file_location("app.ml.kernels", kernels)
        sys.modules["app.ml.kernels"] = app.ml.kernels = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app.ml.kernels)
    spec = importlib.util.spec_from_file_location("preprocessing_against", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_once(fn, data: bytes):
    """(seconds, output or the refusal's class name) of one call."""
    started = time.perf_counter()
    try:
        out = fn(data)
    except Exception as exc:  # ImageRejected of either module
        out = type(exc).__name__
    return time.perf_counter() - started, out


def measure(items: list[bytes], fns: dict, repeats: int) -> tuple[dict, dict]:
    """Per-image median ms for each function (interleaved, order alternating) + outputs."""
    names = list(fns)
    times = {name: np.zeros((repeats, len(items))) for name in names}
    outputs = {name: [None] * len(items) for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for i, data in enumerate(items):
            for name in order:
                seconds, out = run_once(fns[name], data)
                times[name][r, i] = seconds * 1000.0
                outputs[name][i] = out
    return {name: np.median(t, axis=0) for name, t in times.items()}, outputs


def compare(a: list, b: list) -> tuple[float, int]:
    """Max abs difference over accepted images, and how many results differ in kind."""
    worst, mismatched = 0.0, 0
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            worst = max(worst, float(np.abs(x - y).max()))
        elif not (isinstance(x, str) and isinstance(y, str) and x == y):
            mismatched += 1
    return worst, mismatched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realistic", type=int, default=500, help="number of rendered uploads")
    parser.add_argument("--repeats", type=int, default=5, help="calls per image (median taken)")
    parser.add_argument("--against", type=Path, default=None, help="another preprocessing.py to time side by side")
    args = parser.parse_args(argv)

    from app.ml.preprocessing import preprocess
    from bench.uploads import load_mnist_test, make_uploads

    x_test, _ = load_mnist_test()
    fixtures = sorted(p for p in (ROOT / "tests" / "fixtures" / "mnist50").iterdir() if p.suffix in (".png", ".jpg"))
    groups = {
        "28x28 PNG": png_28x28(x_test[:50]),
        "fixtures (mnist50)": [p.read_bytes() for p in fixtures],
        "realistic uploads": make_uploads(x_test[: args.realistic], seed=0),
    }
    fns = {"current": preprocess}
    if args.against:
        fns["against"] = load_module(args.against).preprocess
    for fn in fns.values():  # warm imports and caches
        for items in groups.values():
            run_once(fn, items[0])

    print(f"preprocess: median ms per image ({args.repeats} calls per image, median over images)")
    header = f"{'input':<20} {'n':>4} {'current':>8} {'mean':>6} {'p95':>6}"
    if args.against:
        header += f" {'against':>8} {'speed-up':>8} {'max |diff|':>10} {'refusals':>9}"
    print(header)
    print("-" * len(header))
    for label, items in groups.items():
        ms, outputs = measure(items, fns, args.repeats)
        cur = ms["current"]
        refused = sum(isinstance(o, str) for o in outputs["current"])
        line = f"{label:<20} {len(items):>4} {statistics.median(cur):8.3f} {cur.mean():6.2f} {np.percentile(cur, 95):6.2f}"
        if args.against:
            old = ms["against"]
            worst, mismatched = compare(outputs["current"], outputs["against"])
            same = "same" if mismatched == 0 else f"{mismatched} DIFFER"
            line += f" {statistics.median(old):8.3f} {statistics.median(old) / statistics.median(cur):7.2f}x {worst:10.2g} {same:>9}"
        print(line + (f"   ({refused} refused)" if refused else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
