"""Loading MNIST arrays (.npz, IDX plain and gzipped) and labelled image folders."""

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from app.ml.datasets import (
    DatasetError,
    as_float_images,
    is_image_folder,
    load_labelled,
    load_mnist,
    read_idx,
    read_image_folder,
    stratified_sample,
)


def write_idx(path, array, compress):
    """An IDX file of unsigned bytes, as MNIST ships them."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    assert raw[:4] == (b"\x00\x00\x08\x03" if array.ndim == 3 else b"\x00\x00\x08\x01")  # MNIST's magic
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def digits(ml_digits):
    x, y = ml_digits
    return x[:30], y[:30]


def test_npz_file_and_folder(tmp_path, digits):
    x, y = digits
    np.savez_compressed(tmp_path / "train.npz", x=x, y=y)
    for source in (tmp_path / "train.npz", tmp_path):
        got_x, got_y = load_mnist(source)
        assert got_x.dtype == np.uint8 and got_y.dtype == np.uint8
        assert np.array_equal(got_x, x) and np.array_equal(got_y, y)


def test_npz_of_floats_in_unit_range_round_trips(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "f.npz", x=x / 255.0, y=y.astype(np.int64))
    got_x, _ = load_mnist(tmp_path / "f.npz")
    assert np.array_equal(got_x, x)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_pair_plain_and_gzipped(tmp_path, digits, compress):
    x, y = digits
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", x, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", y, compress)
    for source in (tmp_path, tmp_path / f"t10k-images-idx3-ubyte{suffix}"):
        got_x, got_y = load_mnist(source)
        assert np.array_equal(got_x, x) and np.array_equal(got_y, y)
    assert read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}").shape == (30,)


def test_training_folder_with_test_files_resolves_to_training_set(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "train-10k.npz", x=x[:20], y=y[:20])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x[20:], True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[20:], True)
    assert len(load_mnist(tmp_path)[1]) == 20
    assert len(load_mnist(tmp_path, split="train")[1]) == 20
    assert np.array_equal(load_mnist(tmp_path, split="test")[0], x[20:])


def test_load_labelled_for_evaluation_picks_the_test_files(tmp_path, digits):
    x, y = digits
    np.savez_compressed(tmp_path / "train-10k.npz", x=x[:20], y=y[:20])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x[20:], True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[20:], True)
    train_x, train_y = load_labelled(tmp_path)
    test_x, test_y = load_labelled(tmp_path, for_evaluation=True)
    assert np.array_equal(train_y, y[:20]) and np.allclose(train_x * 255.0, x[:20], atol=1e-3)
    assert np.array_equal(test_y, y[20:]) and np.allclose(test_x * 255.0, x[20:], atol=1e-3)
    assert test_x.dtype == np.float32 and test_x.max() <= 1.0


def test_for_evaluation_without_test_files_uses_what_is_there(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "train.npz", x=x, y=y)
    got_x, got_y = load_labelled(tmp_path, for_evaluation=True)
    assert np.array_equal(got_y, y) and got_x.shape == (30, 28, 28)


def test_unknown_split_is_refused(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "train.npz", x=x, y=y)
    with pytest.raises(DatasetError, match="split"):
        load_mnist(tmp_path, split="validation")
    with pytest.raises(DatasetError, match="test"):
        load_mnist(tmp_path, split="test")  # a folder without test files has no test split


def test_ambiguous_folder_is_refused(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    with pytest.raises(DatasetError, match="several"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("case", ["count_mismatch", "bad_magic", "truncated", "missing_labels",
                                  "bad_labels", "no_such_path", "npz_without_y"])
def test_broken_mnist_files_raise_clear_errors(tmp_path, digits, case):
    x, y = digits
    images = tmp_path / "train-images-idx3-ubyte"
    write_idx(images, x, False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y, False)
    target = images
    if case == "count_mismatch":
        write_idx(tmp_path / "train-labels-idx1-ubyte", y[:-1], False)
    elif case == "bad_magic":
        images.write_bytes(b"\x01\x02" + images.read_bytes()[2:])
    elif case == "truncated":
        images.write_bytes(images.read_bytes()[:-5])
    elif case == "missing_labels":
        (tmp_path / "train-labels-idx1-ubyte").unlink()
    elif case == "bad_labels":
        write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(len(y), 12), False)
    elif case == "no_such_path":
        target = tmp_path / "nothing.npz"
    elif case == "npz_without_y":
        target = tmp_path / "only-x.npz"
        np.savez(target, x=x)
    with pytest.raises(DatasetError):
        load_mnist(target)


def png(digit):
    """A 28x28 MNIST digit as a client would send it: dark ink on light paper, scaled up."""
    image = Image.fromarray(255 - digit).resize((84, 84), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path, digits):
    x, y = digits
    folder = tmp_path / "uploads"
    folder.mkdir()
    rows = ["file,label"]
    for i in range(6):
        (folder / f"{i:03d}.png").write_bytes(png(x[i]))
        rows.append(f"{i:03d}.png,{y[i]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder, y[:6]


def test_image_folder_raw_and_preprocessed(image_folder):
    folder, labels = image_folder
    assert is_image_folder(folder)
    names, blobs, got = read_image_folder(folder)
    assert names == [f"{i:03d}.png" for i in range(6)] and len(blobs) == 6 and all(b.startswith(b"\x89PNG") for b in blobs)
    assert np.array_equal(got, labels)
    x, y = load_labelled(folder)
    assert x.shape == (6, 28, 28) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # white ink on black
    assert np.array_equal(y, labels)


def test_image_folder_errors_name_the_file(image_folder):
    folder, _ = image_folder
    (folder / "002.png").write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match="002.png"):
        load_labelled(folder)
    (folder / "002.png").unlink()
    with pytest.raises(DatasetError, match="002.png"):
        read_image_folder(folder)


@pytest.mark.parametrize("csv_text, message", [
    ("file,label\n000.png,10\n", "label 10 is not 0..9"),
    ("file,label\n000.png,x\n", "label 'x' is not 0..9"),
    ("file,label\n000.png,-1\n", "label -1 is not 0..9"),
    ("file,label\n000.png,\n", "is not 0..9"),
    ("file,label\n000.png,1\n001.png,1.5\n", r"labels.csv:3: label '1.5'"),  # names the line
    ("name,digit\n000.png,1\n", "header"),
    ("file,label\n../000.png,1\n", "bad file name"),
    ("file,label\n", "no rows"),
], ids=["ten", "letter", "negative", "empty", "fraction-on-line-3", "header", "path", "no-rows"])
def test_bad_labels_csv(image_folder, csv_text, message):
    folder, _ = image_folder
    (folder / "labels.csv").write_text(csv_text)
    with pytest.raises(DatasetError, match=message):
        read_image_folder(folder)
    with pytest.raises(DatasetError, match=message):
        load_labelled(folder)


def test_load_labelled_on_mnist_arrays_scales_to_unit_floats(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "d.npz", x=x, y=y)
    fx, fy = load_labelled(tmp_path / "d.npz")
    assert fx.dtype == np.float32 and np.allclose(fx * 255.0, x, atol=1e-3)
    assert np.array_equal(fy, y)


def test_image_folder_of_real_uploads():
    """The shipped fixture: 50 realistic uploads of MNIST test digits with labels.csv."""
    from support import FIXTURES

    folder = FIXTURES / "mnist50"
    _, blobs, labels = read_image_folder(folder)
    assert len(blobs) == 50 and np.array_equal(np.bincount(labels, minlength=10), [5] * 10)
    x, y = load_labelled(folder)
    assert x.shape == (50, 28, 28) and x.dtype == np.float32 and np.array_equal(y, labels)
    assert (x.reshape(50, -1).max(axis=1) > 0.9).all()  # every upload yielded a digit


def test_as_float_images_scales_uint8_and_keeps_floats():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    fx = as_float_images(x)
    assert fx.dtype == np.float32 and fx[0, 0, 0] == 0.0 and fx[0, -1, -1] == 1.0
    assert np.array_equal(fx, x.astype(np.float32) / np.float32(255.0))
    already = np.full((2, 28, 28), 0.5, np.float32)
    assert as_float_images(already) is already
    assert as_float_images(already.astype(np.float64)).dtype == np.float32


def test_stratified_sample_takes_each_class_by_count():
    y = np.array([0] * 10 + [1] * 3 + [2] * 6)
    idx = stratified_sample(y, 4, np.random.default_rng(0))
    assert len(set(idx.tolist())) == len(idx) == 4 + 3 + 4  # class 1 has only 3
    assert np.bincount(y[idx]).tolist() == [4, 3, 4]
    idx = stratified_sample(y, [1, 0, 6], np.random.default_rng(0))  # one count per label
    assert np.bincount(y[idx], minlength=3).tolist() == [1, 0, 6]
    again = stratified_sample(y, [1, 0, 6], np.random.default_rng(0))
    assert np.array_equal(idx, again)
    assert len(stratified_sample(np.array([], np.int64), 3, np.random.default_rng(0))) == 0
