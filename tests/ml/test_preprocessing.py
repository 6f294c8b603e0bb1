"""Tests for app/ml/preprocessing.py: uploads in every shape become MNIST-like input.

Synthetic digits are drawn here with Pillow, so each test knows what the answer must
look like; the MNIST fixtures (tests/fixtures/mnist50) check real handwriting.
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from app.ml import preprocessing as pp
from app.ml.preprocessing import (
    DEFAULT_MAX_PIXELS,
    EmptyUpload,
    ImageRejected,
    ImageTooLarge,
    NoDigitFound,
    NotAnImage,
    preprocess,
    preprocess_many,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mnist50"


# --------------------------------------------------------------------------- helpers


def digit_seven(size: int = 200, box: tuple[float, float, float, float] = (0.3, 0.2, 0.7, 0.8)) -> np.ndarray:
    """A white-on-black "7" (uint8, size x size) inside box = (x0, y0, x1, y1) fractions.

    Asymmetric on purpose, so rotations and flips are detectable.
    """
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    x0, y0, x1, y1 = (v * size for v in box)
    width = max(1, int(round(0.12 * (y1 - y0))))
    draw.line([(x0, y0 + width / 2), (x1, y0 + width / 2)], fill=255, width=width)
    draw.line([(x1, y0 + width / 2), (x0 + 0.35 * (x1 - x0), y1)], fill=255, width=width)
    return np.asarray(im)


def encode(arr_or_im, fmt: str = "PNG", **kw) -> bytes:
    """Encode a numpy array or PIL image to bytes."""
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def on_paper(white_on_black: np.ndarray, paper: int = 235, ink: int = 25) -> np.ndarray:
    """Dark ink on light paper from a white-on-black coverage image."""
    cov = white_on_black.astype(np.float32) / 255.0
    return np.clip(paper * (1 - cov) + ink * cov + 0.5, 0, 255).astype(np.uint8)


def centre_of_mass(x: np.ndarray) -> tuple[float, float]:
    idx = np.arange(x.shape[0])
    total = x.sum()
    return float((x.sum(axis=1) * idx).sum() / total), float((x.sum(axis=0) * idx).sum() / total)


def ink_box(x: np.ndarray, level: float = 0.1) -> tuple[int, int]:
    """Height and width of the box holding pixels above `level`."""
    rows = np.flatnonzero((x > level).any(axis=1))
    cols = np.flatnonzero((x > level).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 28x28 inputs (1.0 = the same picture)."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def png_with_header(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A syntactically valid PNG that *claims* width x height, with a tiny IDAT.

    Decoding it would fail (far too little data), so refusing it with ImageTooLarge
    proves that the size was judged from the header alone.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def seven() -> np.ndarray:
    return digit_seven()


@pytest.fixture(scope="module")
def reference(seven) -> np.ndarray:
    """The preprocessed white-on-black seven that other encodings must reproduce."""
    return preprocess(encode(seven))


# ------------------------------------------------------------------ output contract


def test_output_is_mnist_like(reference):
    assert reference.shape == (28, 28)
    assert reference.dtype == np.float32
    assert reference.min() >= 0.0 and reference.max() <= 1.0
    assert reference.max() == pytest.approx(1.0)
    # MNIST: background exactly 0, the digit's box scaled to 20 px on its longer side
    # (a top-heavy "7" sits low once its centre of mass is centred, so check top/sides).
    assert reference[:3].max() == 0 and reference[:, :3].max() == 0 and reference[:, -3:].max() == 0
    assert 19 <= max(ink_box(reference)) <= 21
    cy, cx = centre_of_mass(reference)
    assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75


def test_dark_on_light_equals_white_on_black(seven, reference):
    dark_on_light = preprocess(encode(on_paper(seven)))
    assert np.abs(dark_on_light - reference).max() < 0.1
    assert similarity(dark_on_light, reference) > 0.99


def test_off_centre_digit_is_centred(reference):
    canvas = np.zeros((300, 400), dtype=np.uint8)
    canvas[0:85, 300:400] = digit_seven(100)[15:]  # ink in the top-right corner
    out = preprocess(encode(on_paper(canvas)))
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75
    assert 19 <= max(ink_box(out)) <= 21
    assert similarity(out, reference) > 0.9


def test_tinted_paper_with_gradient_and_noise(seven, reference):
    rng = np.random.default_rng(1)
    gray = on_paper(seven).astype(np.float32) / 255.0
    light = np.linspace(0.8, 1.05, gray.shape[1])[None, :]  # uneven lighting
    tint = np.array([1.0, 0.92, 0.78])  # yellowish paper
    rgb = gray[..., None] * light[..., None] * tint + rng.normal(0, 0.03, gray.shape + (1,))
    out = preprocess(encode(np.clip(rgb * 255, 0, 255).astype(np.uint8), "JPEG", quality=70))
    assert similarity(out, reference) > 0.9


# ------------------------------------------------------------------------ encodings


def test_rgba_canvas_export_uses_alpha(seven, reference):
    rgba = np.zeros(seven.shape + (4,), dtype=np.uint8)  # transparent black everywhere
    rgba[..., 3] = seven  # black ink: only the alpha channel says where it is
    data = encode(Image.fromarray(rgba, "RGBA"))
    # Flattening onto black (what convert("L") does) would leave nothing to see.
    assert np.asarray(Image.open(io.BytesIO(data)).convert("L")).max() == 0
    out = preprocess(data)
    assert similarity(out, reference) > 0.98


def test_rgba_paper_with_transparent_margin(seven, reference):
    gray = on_paper(seven)
    alpha = np.zeros_like(gray)
    alpha[10:-10, 10:-10] = 255  # opaque paper, transparent frame around it
    out = preprocess(encode(Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA")))
    assert similarity(out, reference) > 0.95


@pytest.mark.parametrize("orientation, stored_as", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied(seven, orientation, stored_as):
    upright = Image.fromarray(on_paper(seven))
    expected = preprocess(encode(upright, "JPEG", quality=90))
    stored = upright.transpose(stored_as)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = preprocess(encode(stored, "JPEG", quality=90, exif=exif.tobytes()))
    assert similarity(out, expected) > 0.97
    # Without the tag the same pixels are a different picture: the tag did the work.
    assert similarity(preprocess(encode(stored, "JPEG", quality=90)), expected) < 0.8


def test_tiny_image():
    tiny = np.zeros((8, 8), dtype=np.uint8)
    tiny[1:7, 4] = 255  # a "1"
    tiny[1, 3] = 160
    out = preprocess(encode(on_paper(tiny)))
    h, w = ink_box(out)
    assert 19 <= h <= 21 and w < h
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75


@pytest.mark.parametrize("size", [(4000, 1), (1, 4000), (3000, 60), (7, 40)])
def test_images_too_thin_to_hold_a_digit_are_refused(size):
    strip = np.full(size[::-1], 235, dtype=np.uint8)
    strip[strip.shape[0] // 2, :] = 25  # a line along it, which the network would name
    strip[:, strip.shape[1] // 2] = 25
    with pytest.raises(NoDigitFound, match="too thin"):
        preprocess(encode(strip))


def test_huge_image(reference):
    big = digit_seven(3000)
    out = preprocess(encode(on_paper(big)))
    assert similarity(out, reference) > 0.95


def stroke_width(x: np.ndarray) -> float:
    """2 x ink area / perimeter of the >0.5 mask: MNIST's median is ~1.9, 1st pct ~1.1."""
    mask = np.pad(x > 0.5, 1).astype(np.int8)
    return 2.0 * float(x.sum()) / (np.abs(np.diff(mask, axis=0)).sum() + np.abs(np.diff(mask, axis=1)).sum())


def test_thin_pen_on_a_big_photo_gets_mnist_stroke_width():
    im = Image.new("L", (1200, 1200), 245)
    ImageDraw.Draw(im).line([(400, 300), (800, 300), (540, 900)], fill=30, width=4)  # 4 px pen
    out = preprocess(encode(im))
    assert 1.5 <= stroke_width(out) <= 2.6
    assert 19 <= max(ink_box(out)) <= 22


def test_normal_strokes_are_not_thickened(reference):
    assert 1.2 <= stroke_width(reference) <= 3.0
    # Same digit, same stroke share of the box, at two sizes: same width.
    assert abs(stroke_width(preprocess(encode(digit_seven(600)))) - stroke_width(reference)) < 0.3


def test_16_bit_png(seven, reference):
    cov = seven.astype(np.float64) / 255.0
    sixteen = np.round(60000 * (1 - cov) + 4000 * cov).astype(np.uint16)
    data = encode(Image.fromarray(sixteen))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    assert similarity(preprocess(data), reference) > 0.98


def test_palette_png_with_transparency(seven, reference):
    pal = Image.fromarray((seven > 127).astype(np.uint8), "P")
    pal.putpalette([255, 255, 255, 0, 0, 0] + [0] * (254 * 3))  # 0: (transparent) white, 1: black ink
    data = encode(pal, transparency=0)
    im = Image.open(io.BytesIO(data))
    assert im.mode == "P" and "transparency" in im.info
    assert similarity(preprocess(data), reference) > 0.95


def test_cmyk_jpeg(seven, reference):
    rgb = Image.fromarray(on_paper(seven)).convert("RGB")
    data = encode(rgb.convert("CMYK"), "JPEG", quality=90)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert similarity(preprocess(data), reference) > 0.97


def test_gif_uses_first_frame(seven, reference):
    first = Image.fromarray(on_paper(seven)).convert("P")
    second = Image.fromarray(on_paper(seven.T.copy())).convert("P")  # a different picture
    buf = io.BytesIO()
    first.save(buf, format="GIF", save_all=True, append_images=[second])
    assert getattr(Image.open(io.BytesIO(buf.getvalue())), "n_frames", 1) == 2
    assert similarity(preprocess(buf.getvalue()), reference) > 0.97


@pytest.mark.parametrize("fmt", ["BMP", "WEBP"])
def test_other_allowed_formats(seven, reference, fmt):
    assert similarity(preprocess(encode(on_paper(seven), fmt)), reference) > 0.97


def test_mode_1_bilevel(seven, reference):
    bilevel = Image.fromarray(on_paper(seven)).convert("1", dither=Image.Dither.NONE)
    assert similarity(preprocess(encode(bilevel)), reference) > 0.95


# ----------------------------------------------------------------------- no digit


@pytest.mark.parametrize("value", [0, 255, 128])
def test_blank_images_have_no_digit(value):
    with pytest.raises(NoDigitFound):
        preprocess(encode(np.full((120, 90), value, dtype=np.uint8)))


def test_fully_transparent_image_has_no_digit():
    with pytest.raises(NoDigitFound):
        preprocess(encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0))))


def noisy_paper(rng: np.random.Generator) -> np.ndarray:
    """Textured paper: a slight gradient, blotches and pixel noise, but no ink."""
    h, w = 240, 320
    base = 0.85 + 0.05 * np.linspace(-1, 1, w)[None, :]
    blotches = np.asarray(Image.fromarray(rng.normal(0, 1, (12, 16)).astype(np.float32), "F").resize((w, h), Image.Resampling.BICUBIC))
    return base + 0.015 * blotches + rng.normal(0, 0.03, (h, w))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_noise_only_paper_has_no_digit(fmt):
    paper = noisy_paper(np.random.default_rng(7))
    with pytest.raises(NoDigitFound):
        preprocess(encode(np.clip(paper * 255, 0, 255).astype(np.uint8), fmt))


def test_same_noisy_paper_with_a_digit_is_found():
    # The counterpart of the test above: the noise level that hides nothing still lets
    # a faint pencil digit through.
    paper = noisy_paper(np.random.default_rng(7))
    cov = digit_seven(240)[:, :].astype(np.float64) / 255.0
    canvas = np.zeros_like(paper)
    canvas[:, 40:280] = cov
    img = paper * (1 - 0.45 * canvas)
    out = preprocess(encode(np.clip(img * 255, 0, 255).astype(np.uint8)))
    assert similarity(out, preprocess(encode(digit_seven(240)))) > 0.9


def test_far_speck_does_not_move_the_box(reference):
    canvas = np.zeros((300, 300), dtype=np.uint8)
    canvas[50:250, 50:250] = digit_seven(200)
    canvas[290:293, 5:8] = 255  # a dust speck in a corner
    out = preprocess(encode(on_paper(canvas)))
    assert similarity(out, reference) > 0.97


# ------------------------------------------------------------------------ refusals


def test_empty_bytes():
    with pytest.raises(EmptyUpload) as info:
        preprocess(b"")
    assert info.value.code == "empty_upload"


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(5000),
        b"digit,label\n7,7\nthis is a text file, not an image\n",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    ],
)
def test_not_an_image(data):
    with pytest.raises(NotAnImage) as info:
        preprocess(data)
    assert info.value.code == "not_an_image"


def test_format_outside_the_allow_list_is_refused(seven):
    tiff = encode(on_paper(seven), "TIFF")
    assert Image.open(io.BytesIO(tiff)).format == "TIFF"  # Pillow itself could read it
    with pytest.raises(NotAnImage):
        preprocess(tiff)


def test_truncated_png(seven):
    data = encode(on_paper(seven))
    with pytest.raises(NotAnImage):
        preprocess(data[: len(data) // 2])


@pytest.mark.parametrize(
    "width, height, max_pixels",
    [
        (8000, 6000, DEFAULT_MAX_PIXELS),  # 48 MP: our header check (40 MP default)
        (20000, 20000, DEFAULT_MAX_PIXELS),  # 400 MP: our header check
        # With our limit lifted, Pillow's own guards must still hold:
        (10000, 10000, 10**10),  # 100 MP: DecompressionBombWarning, turned into an error
        (20000, 20000, 10**10),  # 400 MP: DecompressionBombError
    ],
)
def test_too_many_pixels_refused_from_header(monkeypatch, width, height, max_pixels):
    assert width * height > DEFAULT_MAX_PIXELS
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(ImageTooLarge) as info:
        preprocess(png_with_header(width, height), max_pixels=max_pixels)
    assert info.value.code == "image_too_large"
    assert decoded == []  # refused before a single pixel was decoded


def test_crafted_header_is_otherwise_a_png():
    # The crafted file is a real PNG header: at a small size it gets as far as decoding
    # (and fails there, for want of data), so the refusals above are about size alone.
    data = png_with_header(4000, 3000)
    assert Image.open(io.BytesIO(data)).size == (4000, 3000)
    with pytest.raises(NotAnImage):
        preprocess(data)


def test_max_pixels_argument(seven):
    data = encode(on_paper(seven))  # 200 x 200 = 40,000 pixels
    with pytest.raises(ImageTooLarge):
        preprocess(data, max_pixels=39_999)
    assert preprocess(data, max_pixels=40_000).shape == (28, 28)


def test_rejections_share_a_base_with_codes():
    codes = set()
    for cls in (EmptyUpload, NotAnImage, ImageTooLarge, NoDigitFound):
        assert issubclass(cls, ImageRejected)
        exc = cls()
        assert str(exc) and exc.code == cls.code
        codes.add(cls.code)
    assert codes == {"empty_upload", "not_an_image", "image_too_large", "no_digit_found"}
    assert isinstance(NotAnImage("custom"), ImageRejected) and str(NotAnImage("custom")) == "custom"


# ---------------------------------------------------------------- batch and MNIST


def test_preprocess_many(seven, reference):
    batch = preprocess_many([encode(seven), encode(on_paper(seven))])
    assert batch.shape == (2, 28, 28) and batch.dtype == np.float32
    assert np.abs(batch[0] - reference).max() < 1e-6
    assert preprocess_many([]).shape == (0, 28, 28)
    with pytest.raises(NoDigitFound) as info:
        preprocess_many([encode(seven), encode(np.zeros((20, 20), np.uint8))])
    assert info.value.index == 1 and str(info.value) == str(NoDigitFound())
    with pytest.raises(NoDigitFound) as info:
        preprocess_many([encode(np.zeros((20, 20), np.uint8))], start=40)
    assert info.value.index == 40


# ----------------------------------------------------------------- real MNIST uploads


def load_fixtures() -> tuple[list[bytes], np.ndarray]:
    with open(FIXTURES / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(FIXTURES / r["file"]).read_bytes() for r in rows], np.array([int(r["label"]) for r in rows])


def test_mnist_fixtures_look_like_mnist():
    items, labels = load_fixtures()
    assert len(items) == 50 and np.bincount(labels, minlength=10).tolist() == [5] * 10
    x = preprocess_many(items)
    for out in x:
        cy, cx = centre_of_mass(out)
        assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75
        assert 18 <= max(ink_box(out, level=0.2)) <= 21
    # Ink coverage like MNIST's (mean pixel ~0.13; 0.05-0.3 per digit).
    assert 0.06 < float(x.mean()) < 0.25


@pytest.mark.slow
def test_base_model_reads_the_mnist_fixtures():
    model_path = Path(__file__).resolve().parents[2] / "models" / "base.keras"
    if not model_path.exists():
        pytest.skip("no models/base.keras")
    keras = pytest.importorskip("keras")
    model = keras.saving.load_model(model_path, compile=False)
    items, labels = load_fixtures()
    pred = np.asarray(model(preprocess_many(items), training=False)).argmax(axis=1)
    assert (pred == labels).mean() >= 0.96


# --------------------------------------------------------------- parts and threads


def test_paper_residual_removes_a_tilted_plane_despite_ink_on_the_border():
    h, w = 120, 90
    y, x = np.mgrid[0:h, 0:w]
    paper = (0.8 + 0.1 * (x / (w - 1) - 0.5) - 0.05 * (y / (h - 1) - 0.5)).astype(np.float32)
    gray = paper.copy()
    gray[:, 40:46] = 0.1  # a stroke crossing the whole image, border band included
    residual = pp._paper_residual(gray)
    off_stroke = np.ones((h, w), bool)
    off_stroke[:, 40:46] = False
    # The gradient (0.1 across) is gone to within a few thousandths; the ink (0.7 below
    # the paper) is untouched.
    assert np.abs(residual[off_stroke]).max() < 0.005
    assert np.allclose(residual[:, 40:46], 0.1 - paper[:, 40:46], atol=0.005)


def test_threads_preprocessing_at_once_get_the_serial_results():
    # OpenCV releases the GIL, so request threads really run the pipeline at once.
    from concurrent.futures import ThreadPoolExecutor

    items, _ = load_fixtures()
    expected = preprocess_many(items)
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(preprocess, items))
            assert np.array_equal(np.stack(got), expected)


@pytest.mark.parametrize("threads", [2, 3, 64])
def test_a_batch_split_over_threads_gets_the_serial_results_and_refusal(threads):
    items, _ = load_fixtures()
    assert np.array_equal(preprocess_many(items, threads=threads), preprocess_many(items))
    blank, garbage = encode(np.zeros((20, 20), np.uint8)), b"not an image"
    # Refusals in several runs: the one earliest in the batch is the one reported, as if
    # the batch had been read in order, wherever the runs' boundaries fall.
    for bad in ([3, 40], [40, 3], [0, 49], [25, 26]):
        batch = list(items)
        batch[bad[0]], batch[bad[1]] = blank, garbage
        with pytest.raises(ImageRejected) as info:
            preprocess_many(batch, threads=threads, start=100)
        first = min(bad)
        assert info.value.index == 100 + first
        assert info.value.code == ("no_digit_found" if batch[first] is blank else "not_an_image")


def test_a_batch_split_over_threads_runs_on_the_pool(monkeypatch):
    import threading

    seen = []
    real = pp.preprocess
    monkeypatch.setattr(pp, "preprocess", lambda data, **kw: seen.append(threading.current_thread().name) or real(data, **kw))
    items, _ = load_fixtures()
    preprocess_many(items[:8], threads=2)
    assert seen.count(threading.current_thread().name) == 4  # the caller takes the first run
    assert sum(name.startswith("preprocess") for name in seen) == 4
