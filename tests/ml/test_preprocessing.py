"""Preprocessing of real-world uploads into MNIST-style 28x28 inputs."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.ml.preprocessing import (
    EmptyUpload,
    ImageTooLarge,
    NoDigitFound,
    NotAnImage,
    from_mnist_uint8,
    preprocess,
    preprocess_many,
)


def encode(image, fmt="PNG", **kw):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def seven(size=200, offset=(0, 0), ink=0, paper=255, mode="L", width=14):
    """A hand-drawn-looking 7 (dark ink on light paper by default)."""
    image = Image.new(mode, (size, size), paper)
    draw = ImageDraw.Draw(image)
    ox, oy = offset
    s = size / 200
    draw.line([(60 * s + ox, 50 * s + oy), (140 * s + ox, 50 * s + oy), (90 * s + ox, 160 * s + oy)],
              fill=ink, width=max(1, int(width * s)))
    return image


def centre_of_mass(x):
    ys, xs = np.indices(x.shape)
    return (ys * x).sum() / x.sum(), (xs * x).sum() / x.sum()


def test_output_is_mnist_shaped_and_centred():
    x = preprocess(encode(seven()))
    assert x.shape == (28, 28) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    cy, cx = centre_of_mass(x)
    assert abs(cy - 14) < 1.5 and abs(cx - 14) < 1.5
    rows, cols = np.nonzero(x > 0.05)
    assert rows.max() - rows.min() <= 21 and cols.max() - cols.min() <= 21
    assert x[0].max() == 0 and x[:, 0].max() == 0  # a clear border, as in MNIST


def test_polarity_does_not_matter():
    dark_on_light = preprocess(encode(seven(ink=0, paper=255)))
    light_on_dark = preprocess(encode(seven(ink=255, paper=0)))
    assert np.abs(dark_on_light - light_on_dark).mean() < 0.02


def test_off_centre_digit_on_a_big_canvas_is_recentred():
    centred = preprocess(encode(seven(size=200)))
    big = Image.new("L", (900, 700), 250)
    big.paste(seven(size=200, paper=250), (620, 40))
    moved = preprocess(encode(big))
    cy, cx = centre_of_mass(moved)
    assert abs(cy - 14) < 1.5 and abs(cx - 14) < 1.5
    assert np.abs(centred - moved).mean() < 0.05


def test_canvas_export_with_ink_only_in_alpha():
    alpha = seven(ink=255, paper=0)  # opaque where drawn
    rgba = Image.new("RGBA", alpha.size, (0, 0, 0, 0))
    rgba.putalpha(alpha)
    x = preprocess(encode(rgba))
    assert np.abs(x - preprocess(encode(seven()))).mean() < 0.03


def test_exif_rotation_is_applied():
    upright = seven(size=240).convert("RGB")
    rotated = upright.rotate(90, expand=True)  # as the sensor stored it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    x = preprocess(encode(rotated, "JPEG", quality=95, exif=exif))
    assert np.abs(x - preprocess(encode(upright, "JPEG", quality=95))).mean() < 0.03


@pytest.mark.parametrize("convert", [
    lambda im: im.convert("P"),
    lambda im: im.convert("CMYK"),
    lambda im: im.convert("RGB"),
    lambda im: im.convert("1"),
    lambda im: Image.fromarray((np.asarray(im, dtype=np.uint16) * 257)),  # 16-bit
])
def test_modes(convert):
    image = convert(seven())
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    x = preprocess(encode(image, fmt))
    assert np.abs(x - preprocess(encode(seven()))).mean() < 0.05


def test_palette_with_transparency_gif_bmp_webp():
    base = preprocess(encode(seven()))
    for fmt in ("GIF", "BMP", "WEBP"):
        assert np.abs(preprocess(encode(seven().convert("RGB"), fmt)) - base).mean() < 0.05, fmt
    p = seven().convert("P")
    p.info["transparency"] = 255
    assert preprocess(encode(p, transparency=p.getpixel((0, 0)))).max() > 0.5


def test_tiny_and_huge_images():
    tiny = preprocess(encode(seven(size=10, width=2)))
    assert tiny.max() > 0.3
    huge = preprocess(encode(seven(size=3000)))
    assert np.abs(huge - preprocess(encode(seven()))).mean() < 0.05


@pytest.mark.parametrize("image", [
    Image.new("L", (300, 300), 255),
    Image.new("L", (300, 300), 0),
    Image.fromarray(np.random.default_rng(0).normal(235, 4, (300, 300)).clip(0, 255).astype(np.uint8)),
], ids=["white", "black", "paper-noise"])
def test_no_ink_is_no_digit(image):
    with pytest.raises(NoDigitFound):
        preprocess(encode(image))


def test_refusals():
    with pytest.raises(EmptyUpload):
        preprocess(b"")
    with pytest.raises(NotAnImage):
        preprocess(b"just some text, not a picture")
    with pytest.raises(NotAnImage):
        preprocess(encode(seven())[:60])  # truncated
    tiff = encode(seven(), "TIFF")
    with pytest.raises(NotAnImage):
        preprocess(tiff)  # decoders outside the allowed list are refused


def png_header_only(width, height):
    """A PNG that claims a huge size: only the header is valid, so decoding it would fail."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(ImageTooLarge):
        preprocess(png_header_only(20000, 20000))
    with pytest.raises(ImageTooLarge):
        preprocess(encode(seven(size=400)), max_pixels=100_000)


def test_mnist_arrays_and_many(replay_digits):
    x, _ = replay_digits
    as_float = from_mnist_uint8(x[:3])
    assert as_float.dtype == np.float32 and as_float.shape == (3, 28, 28) and as_float.max() <= 1.0
    many = preprocess_many([encode(seven()), encode(seven(size=300))])
    assert many.shape == (2, 28, 28)
