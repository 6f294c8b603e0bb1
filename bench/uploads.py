"""Turn MNIST digits into the kind of files real clients upload.

MNIST digits are white ink on black, 28x28, centred by mass. Uploads are not: dark ink
on (sometimes tinted, textured, unevenly lit) paper, photographed or scanned at any
size, off-centre, slightly rotated, blurred, JPEG-compressed, or exported from an HTML
canvas with the ink only in the alpha channel. `make_upload` renders one digit that way,
deterministically from a numpy Generator, so that the benchmark can compare the model on
the same digits before and after the trip through a realistic upload.

Used by bench/preprocessing_accuracy.py and to build tests/fixtures/mnist50. As a
script it writes a folder of uploads plus labels.csv:

    python -m bench.uploads --out /tmp/uploads --per-class 5 --seed 0 [--max-scale 4]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
if not MNIST_DIR.exists():
    MNIST_DIR = Path("/work/shared/data/mnist")

# Share of each kind of upload (must sum to 1).
KINDS = (
    ("paper", 0.62),  # photo/scan of dark ink on light paper: PNG or JPEG, L or RGB
    ("canvas", 0.20),  # RGBA canvas export: black ink in alpha on transparent black
    ("cutout", 0.08),  # RGBA with opaque white paper and transparent margins
    ("dark", 0.10),  # light ink on a dark board / dark-mode canvas, opaque
)


def load_mnist_test(mnist_dir: str | os.PathLike = MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The official MNIST test set as (x uint8 [n,28,28], y uint8 [n]).

    Uses the project's loader when it is there, else a private IDX reader, so the bench
    does not depend on the order in which the package is written.
    """
    mnist_dir = Path(mnist_dir)
    try:
        from app.ml.datasets import load_mnist

        return load_mnist(mnist_dir, split="test")
    except (ImportError, TypeError):  # not written yet, or an older signature
        pass
    return (
        _read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz"),
        _read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz"),
    )


def _read_idx(path: Path) -> np.ndarray:
    """Minimal IDX (unsigned byte) reader, gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


# ------------------------------------------------------------------------- rendering


def _ink_map(digit: np.ndarray, rng: np.random.Generator, max_scale: float) -> Image.Image:
    """The digit as an ink-coverage image ("F", 0..1) at a random 2-max_scale x scale and tilt."""
    ink = Image.fromarray(digit.astype(np.float32) / 255.0, mode="F")
    scale = float(rng.uniform(2.0, max(2.0, max_scale)))
    size = int(round(28 * scale))
    ink = ink.resize((size, size), Image.Resampling.BICUBIC)
    angle = float(rng.uniform(-10.0, 10.0))
    ink = ink.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0.0)
    arr = np.clip(np.asarray(ink, dtype=np.float32), 0.0, 1.0)
    if rng.random() < 0.5:
        # A pen or a canvas brush gives crisper edges than upscaled MNIST.
        arr = 1.0 / (1.0 + np.exp(-(arr - 0.45) * rng.uniform(8.0, 16.0)))
        arr = np.clip((arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6), 0.0, 1.0)
    return Image.fromarray(arr.astype(np.float32), mode="F")


def _place(ink: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Put the ink on a larger canvas, off-centre; returns coverage (H, W) float32."""
    w, h = ink.size
    # The 28x28 MNIST frame already has a 4 px margin; the canvas adds more.
    cw = int(w * rng.uniform(1.0, 2.2)) + 4
    ch = int(h * rng.uniform(1.0, 2.2)) + 4
    if rng.random() < 0.3:  # portrait or landscape photo proportions
        if rng.random() < 0.5:
            cw = int(cw * rng.uniform(1.2, 1.6))
        else:
            ch = int(ch * rng.uniform(1.2, 1.6))
    canvas = np.zeros((ch, cw), dtype=np.float32)
    x = int(rng.integers(0, cw - w + 1))
    y = int(rng.integers(0, ch - h + 1))
    canvas[y : y + h, x : x + w] = np.asarray(ink, dtype=np.float32)
    return canvas


def _blur(cov: np.ndarray, rng: np.random.Generator, chance: float) -> np.ndarray:
    """Out-of-focus or motion-free camera blur on some uploads."""
    if rng.random() >= chance:
        return cov
    radius = float(rng.uniform(0.6, 2.0)) * max(cov.shape) / 300.0
    im = Image.fromarray(np.clip(cov * 255.0 + 0.5, 0, 255).astype(np.uint8))
    im = im.filter(ImageFilter.GaussianBlur(radius=max(radius, 0.5)))
    return np.asarray(im, dtype=np.float32) / 255.0


def _encode(rgb_or_l: np.ndarray, rng: np.random.Generator, allow_jpeg: bool = True) -> bytes:
    """uint8 image (H, W) or (H, W, 3) -> PNG or JPEG (quality 50-95) bytes."""
    im = Image.fromarray(rgb_or_l)
    buf = io.BytesIO()
    if allow_jpeg and rng.random() < 0.4:
        im.save(buf, format="JPEG", quality=int(rng.integers(50, 96)))
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def _paper(cov: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dark ink on light, maybe tinted, textured, unevenly lit paper."""
    h, w = cov.shape
    cov = _blur(cov, rng, chance=0.3)
    tinted = rng.random() < 0.4
    if tinted:
        paper = rng.uniform(0.72, 1.0, size=3)
        ink = rng.uniform(0.0, 0.3, size=3) * (rng.uniform(0.3, 1.0) if rng.random() < 0.5 else 1.0)
        if rng.random() < 0.3:  # blue or red pen
            ink = np.array([0.1, 0.15, 0.55]) if rng.random() < 0.5 else np.array([0.55, 0.08, 0.08])
    else:
        paper = np.full(3, rng.uniform(0.7, 1.0))
        ink = np.full(3, rng.uniform(0.0, 0.35))
    # Lighting: a linear gradient of up to 15% across the image.
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    slope = rng.uniform(-0.15, 0.15, size=2)
    light = 1.0 + slope[0] * (gy / max(h - 1, 1) - 0.5) + slope[1] * (gx / max(w - 1, 1) - 0.5)
    img = (paper[None, None, :] * (1.0 - cov[..., None]) + ink[None, None, :] * cov[..., None]) * light[..., None]
    if rng.random() < 0.4:  # sensor / paper noise
        img = img + rng.normal(0.0, rng.uniform(0.01, 0.05), size=(h, w, 1)).astype(np.float32)
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if not tinted:
        img = img[..., 0]
    return _encode(img, rng)


def _canvas(cov: np.ndarray, rng: np.random.Generator) -> bytes:
    """HTML canvas export: RGB all black, ink only in alpha, background transparent."""
    cov = _blur(cov, rng, chance=0.15)
    h, w = cov.shape
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    if rng.random() < 0.3:  # a coloured brush
        rgba[..., :3] = (rng.uniform(0, 0.5, size=3) * 255).astype(np.uint8)
        rgba[cov <= 0.0, :3] = 0  # background stays transparent black
    rgba[..., 3] = np.clip(cov * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _cutout(cov: np.ndarray, rng: np.random.Generator) -> bytes:
    """Opaque paper with dark ink, surrounded by transparent margins (a pasted scan)."""
    cov = _blur(cov, rng, chance=0.2)
    h, w = cov.shape
    paper = rng.uniform(0.8, 1.0)
    gray = np.clip((paper * (1.0 - cov) + 0.1 * cov) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    alpha = np.zeros((h, w), dtype=np.uint8)
    my, mx = int(h * rng.uniform(0.02, 0.1)) + 1, int(w * rng.uniform(0.02, 0.1)) + 1
    alpha[my:-my, mx:-mx] = 255
    # The ink itself stays opaque even if it reaches the margin.
    alpha = np.maximum(alpha, (cov > 0.05).astype(np.uint8) * 255)
    rgba = np.dstack([gray, gray, gray, alpha])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _dark(cov: np.ndarray, rng: np.random.Generator) -> bytes:
    """Light ink on a dark background (blackboard photo, dark-mode drawing app)."""
    cov = _blur(cov, rng, chance=0.3)
    board = rng.uniform(0.0, 0.3)
    chalk = rng.uniform(0.75, 1.0)
    img = board * (1.0 - cov) + chalk * cov
    if rng.random() < 0.4:
        img = img + rng.normal(0.0, rng.uniform(0.01, 0.04), size=img.shape)
    return _encode(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), rng)


_RENDER = {"paper": _paper, "canvas": _canvas, "cutout": _cutout, "dark": _dark}


def make_upload(
    digit_uint8_28x28: np.ndarray, rng: np.random.Generator, kind: str | None = None, max_scale: float = 10.0
) -> bytes:
    """Render one MNIST digit as a realistic upload (PNG/JPEG/RGBA bytes).

    Deterministic for a given Generator state. `kind` forces one of "paper", "canvas",
    "cutout", "dark"; by default it is drawn with the shares in KINDS. The digit is drawn
    2 to `max_scale` times its MNIST size (small values make small files, for fixtures).
    """
    digit = np.asarray(digit_uint8_28x28)
    if digit.shape != (28, 28) or digit.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (28, 28) MNIST digit, got {digit.dtype} {digit.shape}")
    return _make(digit, rng, kind, max_scale)[1]


def _make(digit: np.ndarray, rng: np.random.Generator, kind: str | None, max_scale: float = 10.0) -> tuple[str, bytes]:
    names = [k for k, _ in KINDS]
    if kind is None:
        kind = names[int(rng.choice(len(KINDS), p=[p for _, p in KINDS]))]
    elif kind not in _RENDER:
        raise ValueError(f"unknown kind {kind!r}; expected one of {names}")
    cov = _place(_ink_map(digit, rng, max_scale), rng)
    return kind, _RENDER[kind](cov, rng)


def make_uploads(x: np.ndarray, seed: int = 0, max_scale: float = 10.0) -> list[bytes]:
    """One upload per digit of x, all from one seeded Generator (same seed, same bytes)."""
    return [data for _, data in make_uploads_with_kinds(x, seed, max_scale)]


def make_uploads_with_kinds(x: np.ndarray, seed: int = 0, max_scale: float = 10.0) -> list[tuple[str, bytes]]:
    """Like make_uploads, with the kind of each upload (for per-kind accuracy)."""
    rng = np.random.default_rng(seed)
    return [_make(np.asarray(d), rng, None, max_scale) for d in x]


def extension(data: bytes) -> str:
    """File extension for encoded bytes (".png" or ".jpg")."""
    return ".jpg" if data[:3] == b"\xff\xd8\xff" else ".png"


def write_folder(out: Path, x: np.ndarray, y: np.ndarray, seed: int = 0, max_scale: float = 10.0) -> list[tuple[str, int]]:
    """Write uploads for (x, y) into out/ with labels.csv (`file,label`)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, data in enumerate(make_uploads(x, seed, max_scale)):
        name = f"{i:05d}{extension(data)}"
        (out / name).write_bytes(data)
        rows.append((name, int(y[i])))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return rows


def first_per_class(y: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of each digit, in label then index order."""
    return np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])


def main(argv: list[str] | None = None) -> int:
    """CLI: write realistic uploads of MNIST test digits into a folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mnist", default=str(MNIST_DIR), help="folder with the t10k IDX files")
    parser.add_argument("--per-class", type=int, default=None, help="first N test digits of each class")
    parser.add_argument("--limit", type=int, default=None, help="first N test digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-scale", type=float, default=10.0, help="largest digit scale (2-10x MNIST size)")
    args = parser.parse_args(argv)
    x, y = load_mnist_test(args.mnist)
    if args.per_class:
        idx = first_per_class(y, args.per_class)
        x, y = x[idx], y[idx]
    elif args.limit:
        x, y = x[: args.limit], y[: args.limit]
    rows = write_folder(args.out, x, y, args.seed, args.max_scale)
    size = sum((args.out / name).stat().st_size for name, _ in rows)
    print(f"wrote {len(rows)} uploads ({size / 1024:.0f} KiB) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
