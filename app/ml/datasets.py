"""Reading labelled digit data from disk: MNIST arrays (.npz or IDX) and image folders.

Everything here returns plain numpy arrays so that training, evaluation, the CLI and the
tests share one loader and one set of error messages.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from pathlib import Path

import numpy as np

IMAGE_SIZE = 28
LABELS_CSV = "labels.csv"

# IDX "magic": two zero bytes, a type code (0x08 = unsigned byte), the number of dims.
_IDX_UBYTE = 0x08
_TEST_NAME = re.compile(r"(^|[^a-z])(t10k|test)", re.IGNORECASE)


class DatasetError(ValueError):
    """A data file or folder that cannot be used for training or evaluation."""


# --------------------------------------------------------------------------- arrays


def as_float_images(x) -> np.ndarray:
    """Network input: uint8 pixels scaled to float32 in [0, 1]; floats (already scaled) as float32."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)


def stratified_sample(y, per_class, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random members of each class of ``y`` (all of a smaller
    class), class by class in label order. ``per_class`` is one count for every class or
    one count per label of ``np.unique(y)``."""
    y = np.asarray(y)
    labels = np.unique(y)
    counts = np.broadcast_to(per_class, labels.shape)
    picks = [rng.permutation(np.flatnonzero(y == label))[: int(k)] for label, k in zip(labels, counts)]
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- the model folder

REPLAY_FILE = "replay.npz"


def load_replay(model_dir):
    """The model folder's ``replay.npz`` as ``(x, y, holdout)``: the replay digits retraining
    mixes with feedback, and ``(x_holdout, y_holdout)``, digits no model trained on (the
    gate's forgetting check, calibration, the drift reference), or None in folders shipped
    before they existed. Pixels stay uint8."""
    with np.load(Path(model_dir) / REPLAY_FILE) as replay:
        holdout = (replay["x_holdout"], replay["y_holdout"]) if "x_holdout" in replay.files else None
        return replay["x"], replay["y"], holdout


# --------------------------------------------------------------------------- MNIST arrays


def load_mnist(path, *, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST-format digits so that every caller gets (x uint8 [n,28,28], y uint8 [n]).

    `path` may be an `.npz` file with `x` and `y`, an IDX images file (its labels file is
    found by name), or a directory holding one `.npz` or one IDX images/labels pair
    (gzipped or not). In a directory, `split="test"` keeps only files named like
    `t10k*`/`*test*` and `split="train"` only the others; with no split, a directory that
    holds both a training set and test files resolves to the training set, so the official
    test set is never picked up for training by accident. Anything else ambiguous raises.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    if p.is_dir():
        return _load_mnist_dir(p, split)
    if p.suffix == ".npz":
        return _load_npz(p)
    if "idx3" in p.name:
        return _load_idx_pair(p, _labels_for(p))
    raise DatasetError(f"{p}: expected an .npz file, an IDX images file or a directory")


def _is_test_name(name: str) -> bool:
    return bool(_TEST_NAME.search(name))


def _load_mnist_dir(d: Path, split: str | None) -> tuple[np.ndarray, np.ndarray]:
    if split not in (None, "train", "test"):
        raise DatasetError(f"split must be None, 'train' or 'test', not {split!r}")
    files = sorted(f for f in d.iterdir()
                   if f.is_file() and (split is None or _is_test_name(f.name) == (split == "test")))
    npz = [f for f in files if f.suffix == ".npz"]
    images = [f for f in files if "images" in f.name and "idx3" in f.name]
    candidates = [(f, None) for f in npz] + [(f, _labels_for(f)) for f in images]
    if not candidates:
        what = f" for split {split!r}" if split else ""
        raise DatasetError(f"{d}: no .npz or IDX images file{what}")
    if len(candidates) > 1 and split is None:
        # A training folder often also holds the official test files: prefer the others.
        train_only = [c for c in candidates if not _is_test_name(c[0].name)]
        if len(train_only) == 1:
            candidates = train_only
    if len(candidates) > 1:
        names = ", ".join(f.name for f, _ in candidates)
        raise DatasetError(
            f"{d}: several data sets ({names}); pass one file or split='train'/'test'"
        )
    f, labels = candidates[0]
    return _load_npz(f) if labels is None else _load_idx_pair(f, labels)


def _load_npz(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise DatasetError(f"{p}: .npz needs arrays 'x' and 'y' (has {data.files})")
            x, y = data["x"], data["y"]
    except DatasetError:
        raise
    except Exception as exc:  # zipfile/np errors: say which file
        raise DatasetError(f"{p}: unreadable .npz ({exc})") from exc
    return check_arrays(_to_uint8(x, p), y, p)


def _to_uint8(x: np.ndarray, where) -> np.ndarray:
    """Accept uint8 pixels, or floats in [0, 1] (stored as value/255), as uint8."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1.0 + 1e-6):
            raise DatasetError(f"{where}: float pixels must lie in [0, 1]")
        return np.round(x * 255.0).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DatasetError(f"{where}: integer pixels must lie in [0, 255]")
        return x.astype(np.uint8)
    raise DatasetError(f"{where}: unsupported pixel dtype {x.dtype}")


def check_arrays(x: np.ndarray, y: np.ndarray, where) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 28, 28]`` (a trailing channel axis is dropped) and as many integer labels
    0..9, else a ``DatasetError`` naming ``where``; returns them contiguous, labels uint8."""
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"{where}: images must be [n, 28, 28], got {x.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{where}: {len(x)} images but labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DatasetError(f"{where}: labels must be integers 0..9")
    return np.ascontiguousarray(x), y.astype(np.uint8)


def _labels_for(images: Path) -> Path:
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    labels = images.with_name(name)
    if not labels.exists():
        raise DatasetError(f"{images}: labels file {name} not found beside it")
    return labels


def _read_maybe_gzip(p: Path) -> bytes:
    with open(p, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{p}: corrupt gzip ({exc})") from exc
    return raw


def read_idx(p) -> np.ndarray:
    """Parse one IDX file (plain or gzip) of unsigned bytes into an array of its shape."""
    p = Path(p)
    raw = _read_maybe_gzip(p)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{p}: not an IDX file")
    if raw[2] != _IDX_UBYTE:
        raise DatasetError(f"{p}: only unsigned-byte IDX files are supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{p}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - header != count:
        raise DatasetError(f"{p}: IDX body has {len(raw) - header} bytes, header says {count}")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(shape)


def _load_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    return check_arrays(read_idx(images).copy(), read_idx(labels).copy(), images)


# --------------------------------------------------------------------------- image folders


def _read_labels_csv(folder: Path) -> list[tuple[str, int]]:
    csv_path = folder / LABELS_CSV
    if not csv_path.is_file():
        raise DatasetError(f"{folder}: no {LABELS_CSV}")
    rows: list[tuple[str, int]] = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{csv_path}: header must be 'file,label'")
        for line, row in enumerate(reader, start=2):
            name = (row["file"] or "").strip()
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise DatasetError(f"{csv_path}:{line}: label {row['label']!r} is not 0..9")
            if not 0 <= label <= 9:
                raise DatasetError(f"{csv_path}:{line}: label {label} is not 0..9")
            if not name or os.path.basename(name) != name:
                raise DatasetError(f"{csv_path}:{line}: bad file name {name!r}")
            rows.append((name, label))
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    return rows


def read_image_folder(path) -> tuple[list[str], list[bytes], np.ndarray]:
    """Read a folder of uploads with `labels.csv` (`file,label`) as file names, raw bytes and
    labels, so the exact bytes a client would send can go through the serving preprocessing."""
    folder = Path(path)
    rows = _read_labels_csv(folder)
    names, blobs = [], []
    for name, _ in rows:
        f = folder / name
        if not f.is_file():
            raise DatasetError(f"{folder}: {name} is listed in {LABELS_CSV} but missing")
        names.append(name)
        blobs.append(f.read_bytes())
    return names, blobs, np.array([label for _, label in rows], dtype=np.uint8)


def is_image_folder(path) -> bool:
    """True for a directory that carries a `labels.csv` (the image-folder layout)."""
    p = Path(path)
    return p.is_dir() and (p / LABELS_CSV).is_file()


# --------------------------------------------------------------------------- either kind


def load_labelled(path, *, for_evaluation: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load either layout as network-ready (x float32 (n,28,28) in [0,1], y uint8), so
    training and evaluation accept MNIST files and real uploads alike.

    ``for_evaluation=True`` picks a directory's test files (``t10k*``) when it has any,
    so evaluating on a folder that holds both sets measures on the held-out one."""
    from app.ml import preprocessing  # imported here: it pulls in Pillow only when needed

    if is_image_folder(path):
        names, blobs, labels = read_image_folder(path)
        out = np.empty((len(blobs), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        for i, (name, blob) in enumerate(zip(names, blobs)):
            try:
                out[i] = preprocessing.preprocess(blob)
            except preprocessing.ImageRejected as exc:
                raise DatasetError(f"{Path(path) / name}: {exc}") from exc
        return out, labels
    split = None
    if for_evaluation and Path(path).is_dir() and any(_is_test_name(f.name) for f in Path(path).iterdir()):
        split = "test"
    x, y = load_mnist(path, split=split)
    return as_float_images(x), y
