"""From uploaded image bytes to the 28x28 float input the digit network expects.

The network was trained on MNIST, so an upload has to be turned into what MNIST looks
like: white ink on black, the digit's bounding box scaled (aspect kept, anti-aliased)
into 20x20, and that placed in a 28x28 field so that its centre of mass sits at the
centre. Real uploads are nothing like that: dark ink on tinted, textured or unevenly lit
paper, any size, off-centre, JPEG-compressed, rotated by EXIF, or canvas exports whose
ink lives only in the alpha channel. This module bridges the two and refuses what it
cannot or must not decode with an `ImageRejected` subclass. Pillow decodes; the
per-pixel steps are compiled loops in `app.ml.kernels`; this module decides what runs.

Pipeline:

1. decode safely: restricted formats, pixel count checked from the header before any
   pixel is decoded, decompression bombs refused, EXIF orientation applied, large
   images reduced early (JPEG DCT scaling, then box reduction) to a bounded working size;
2. ink signal: meaningful alpha decides ink directly (canvas exports); otherwise the
   paper level is fitted as a robust plane (handles tint and lighting gradients) and the
   ink polarity (dark on light or light on dark) is decided from which side of the paper
   has more significant mass;
3. noise: the paper noise is estimated from the paper side of the signal only (ink
   cannot reach it); blank or noise-only images are refused; the ink is stretched so
   the stroke core is 1 and the paper 0;
4. specks: connected components of the thresholded, lightly blurred ink; far-away
   specks that would inflate the bounding box are dropped;
5. MNIST geometry: bounding box into 20x20 (anti-aliased), centre of mass to (14, 14);
   strokes far thinner than MNIST's (a fine pen on a big photo) are thickened.

A realistic upload (a few hundred pixels a side) takes 0.4-1.5 ms on one core, half of
it or more in Pillow's decoding; the cost is bounded for any size because everything
after decoding works on <= 256 px (bench/preprocessing_speed.py measures it).
"""

from __future__ import annotations

import functools
import io
import math
import threading
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

from app.ml import kernels

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ALLOWED_FORMATS",
    "ImageRejected",
    "EmptyUpload",
    "NotAnImage",
    "ImageTooLarge",
    "NoDigitFound",
    "preprocess",
    "preprocess_many",
    "from_mnist_uint8",
    "warm_up",
]

# 40 megapixels covers every phone camera in common use (48 MP sensors bin to 12 MP by
# default) while bounding the decode cost: an 8-bit RGBA image this size is 160 MB in
# memory for a moment. It is also below Pillow's own bomb threshold (~89 MP), so our
# explicit header check is the one that normally fires.
DEFAULT_MAX_PIXELS = 40_000_000

# Decoders Pillow may use. Everything else (TIFF, PSD, EPS, ICO, ...) is refused before
# any decoder-specific code runs.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")

# Longest side of the working image. The output digit is 20 px, so 256 still gives a
# digit that fills a fifth of a photo ~50 px (a tenth: ~25 px, still above 20), and it
# keeps every step after decoding cheap whatever the upload's size.
_WORK_MAX_SIDE = 256

# MNIST geometry.
_OUT = 28
_BOX = 20
_CENTRE = 14.0  # mean centre of mass of MNIST digits, in pixel-index coordinates

# Ink detection constants (signal units are fractions of full scale, 0..1).
_MIN_CONTRAST = 0.10  # weakest ink peak accepted at all (after a light blur)
_NOISE_SIGMAS = 6.0  # ink peak must stand this many blurred-noise sigmas above paper
_MASK_FRACTION = 0.30  # mask threshold as a fraction of the ink peak
_CORE_FRACTION = 0.50  # pixels above this fraction of the peak define the stroke level
_FLOOR_FRACTION = 0.15  # ink below this fraction of the stroke level is paper
_KEEP_MASS_FRACTION = 0.05  # components lighter than this (vs the heaviest) are specks
_MIN_EXTENT_FRACTION = 0.03  # the digit must span >= 3% of the image's longer side
_MIN_EXTENT_PX = 3
# Stroke width in output pixels, estimated as 2 * ink area / mask perimeter (MNIST:
# 1st percentile 1.06, median 1.94). A thin pen on a big photo or a 1 px canvas brush
# lands far below MNIST's range; such strokes are thickened towards the median.
_THIN_STROKE = 1.1
_TARGET_STROKE = 1.9
_ALPHA_INK_OUTLIERS = 0.01  # opaque pixels off the typical colour, above which alpha is not ink


class ImageRejected(Exception):
    """Base of every refusal of an upload; `code` is stable, the message is for humans."""

    code = "image_rejected"
    http_status = 400  # a hint for the web layer, which owns the final mapping
    message = "The upload was rejected."

    def __init__(self, message: str | None = None):
        super().__init__(message or self.message)

    @property
    def detail(self) -> str:
        """The human-readable message (same as str(exc))."""
        return str(self)


class EmptyUpload(ImageRejected):
    """The upload had no bytes at all."""

    code = "empty_upload"
    http_status = 400
    message = "The uploaded file is empty."


class NotAnImage(ImageRejected):
    """The bytes are not a decodable image in one of the allowed formats."""

    code = "not_an_image"
    http_status = 415
    message = "The upload is not a supported image (PNG, JPEG, GIF, BMP or WEBP)."


class ImageTooLarge(ImageRejected):
    """The image has more pixels than allowed (checked before decoding), or is a bomb."""

    code = "image_too_large"
    http_status = 413
    message = "The image has too many pixels."


class NoDigitFound(ImageRejected):
    """The image decoded fine but holds no ink that could be a digit (blank or noise)."""

    code = "no_digit_found"
    http_status = 422
    message = "No digit was found in the image."


# --------------------------------------------------------------------------- decoding

# `warnings.catch_warnings` swaps process-global state; the lock keeps our own
# concurrent uses from restoring each other's filters. It is held only while Pillow
# parses the header (microseconds), not while pixels are decoded.
_WARNINGS_LOCK = threading.Lock()


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only; refuse unknown formats and oversize images before decoding."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"The image is too large to decode safely ({exc}).") from exc
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        raise NotAnImage() from exc
    _check_size(im.size, max_pixels)
    return im


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse empty or oversize dimensions (from the header, so nothing is decoded)."""
    width, height = size
    if width <= 0 or height <= 0:
        raise NotAnImage("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,}."
        )


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the first frame, upright (EXIF), already reduced to the working size."""
    im = _open(data, max_pixels)
    if im.format == "JPEG":
        # DCT scaling: decode at 1/2, 1/4 or 1/8 size directly, never below what the
        # working size needs; RGB JPEGs are decoded straight to luma.
        want = _working_size(im.size)
        im.draft("L" if im.mode == "RGB" and not _has_transparency(im) else None, want)
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"The image is too large to decode safely ({exc}).") from exc
    except MemoryError as exc:
        raise ImageTooLarge("The image is too large to decode.") from exc
    except Exception as exc:  # truncated or corrupt data
        raise NotAnImage("The image data is corrupt or truncated.") from exc
    _check_size(im.size, max_pixels)  # a GIF frame may grow the canvas while loading
    try:
        # exif_transpose copies the whole image when there is nothing to do: ask first.
        if im.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSED_ORIENTATIONS:
            im = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        pass
    return im


# EXIF orientations that ImageOps.exif_transpose acts on (1 is upright).
_TRANSPOSED_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)


def _has_transparency(im: Image.Image) -> bool:
    """True when the image carries an alpha channel or a transparent colour key."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _working_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size an image is reduced to before analysis (longer side <= _WORK_MAX_SIDE)."""
    width, height = size
    factor = max(width, height) / _WORK_MAX_SIDE
    if factor <= 1:
        return width, height
    return max(1, int(width / factor)), max(1, int(height / factor))


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luma in [0, 1] (premultiplied by alpha when there is alpha) and alpha or None.

    Every supported mode ends here; alpha is kept premultiplied so that box reduction
    and compositing commute (no colour of fully transparent pixels leaks in).
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float32)
        top = float(values.max()) if values.size else 0.0
        low = float(values.min()) if values.size else 0.0
        if mode.startswith("I;16"):
            scale, offset = 65535.0, 0.0
        elif low >= 0 and top <= 1.0 and mode == "F":
            scale, offset = 1.0, 0.0
        elif low >= 0 and top <= 255:
            scale, offset = 255.0, 0.0
        elif low >= 0 and top <= 65535:
            scale, offset = 65535.0, 0.0
        else:  # arbitrary range: stretch what is there
            scale, offset = max(top - low, 1e-6), low
        gray = Image.fromarray((values - offset) / scale, mode="F")
        gray = _reduce(gray)
        return np.clip(np.asarray(gray, dtype=np.float32), 0.0, 1.0), None

    if _has_transparency(im):
        if mode in ("LA", "La"):
            pm = im if mode == "La" else im.convert("La")
            pm = _reduce(pm)
            arr = np.asarray(pm, dtype=np.float32) / 255.0
            return arr[..., 0].copy(), arr[..., 1].copy()  # contiguous, as the kernels expect
        rgba = im if mode in ("RGBA", "RGBa") else im.convert("RGBA")
        if rgba.mode == "RGBA" and max(rgba.size) <= _WORK_MAX_SIDE:
            # Nothing to reduce: the kernel premultiplies as it converts (one pass, not two).
            return kernels.premultiplied_luma(np.asarray(rgba), True)
        pm = rgba.convert("RGBa") if rgba.mode == "RGBA" else rgba
        return kernels.premultiplied_luma(np.asarray(_reduce(pm)), False)

    if mode != "L":
        try:
            im = im.convert("L")
        except (ValueError, OSError):
            im = im.convert("RGB").convert("L")
    im = _reduce(im)
    return np.asarray(im, dtype=np.float32) / 255.0, None


def _reduce(im: Image.Image) -> Image.Image:
    """Box-reduce by an integer factor so the longer side is <= the working size."""
    factor = -(-max(im.size) // _WORK_MAX_SIDE)  # ceil
    return im.reduce(factor) if factor > 1 else im


# ------------------------------------------------------------------------ ink signal
# The per-pixel work is in app.ml.kernels (compiled); this module decides what to run.


@functools.lru_cache(maxsize=32)
def _plane_samples(h: int, w: int) -> tuple[np.ndarray, ...]:
    """Where `kernels.paper_residual` samples an h x w image, its design matrix (1, x, y),
    and the normalised x of every column and y of every row (for the plane itself).

    Samples lie on a grid of <= 48 x 48 points, in the outer band of the image, in
    row-major order. They depend on the size only, so they are cached (read-only):
    uploads from one canvas or one camera share a size, and building them is a good
    share of the fit's cost on small images.
    """
    band = max(1, int(round(0.1 * min(h, w))))
    step_y, step_x = -(-h // 48), -(-w // 48)
    ys = np.arange(0, h, step_y)
    xs = np.arange(0, w, step_x)
    ring = ((ys < band) | (ys >= h - band))[:, None] | ((xs < band) | (xs >= w - band))[None, :]
    iy, ix = np.nonzero(ring)
    rows, cols = ys[iy], xs[ix]
    x_all = np.arange(w) / max(w - 1, 1) - 0.5
    y_all = np.arange(h) / max(h - 1, 1) - 0.5
    design = np.empty((rows.size, 3))
    design[:, 0] = 1.0
    design[:, 1] = x_all[cols]
    design[:, 2] = y_all[rows]
    for arr in (rows, cols, design, x_all, y_all):
        arr.flags.writeable = False
    return rows, cols, design, x_all, y_all


def _alpha_is_meaningful(alpha: np.ndarray | None) -> bool:
    """Alpha matters when it really varies (not a constant, fully opaque layer)."""
    return alpha is not None and float(alpha.max() - alpha.min()) > 0.25


def _ink_signal(luma: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Ink strength per pixel, >= 0 where there is ink, ~0 on paper (any polarity).

    Returns (signal, blurred signal, noise sigma of the blurred signal); the last two are
    (None, 0.0) when the signal is the alpha channel. They come for free from the polarity
    decision, so `_digit_from_signal` reuses them.

    With meaningful alpha and uniformly coloured opaque pixels, the image is a canvas
    export or a cut-out: ink is exactly the alpha (the colour channels may all be black,
    so compositing onto black would lose the digit). With meaningful alpha but varied
    colours (a photo with transparent corners), transparent areas are filled with the
    paper colour of the opaque ones, and the usual paper/ink analysis follows.
    """
    # The kernels expect C-ordered float32 planes (their medians read float32 bits); this
    # is a no-op for everything _to_arrays returns.
    luma = np.ascontiguousarray(luma, dtype=np.float32)
    if alpha is not None:
        alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    if _alpha_is_meaningful(alpha):
        opaque, typical, outliers = kernels.alpha_colour(luma, alpha)
        if opaque == 0 or outliers < _ALPHA_INK_OUTLIERS:
            return alpha, None, 0.0
        luma = luma + (1.0 - alpha) * typical  # composite onto the paper colour

    residual = kernels.paper_residual(luma, *_plane_samples(*luma.shape))
    return kernels.ink_polarity(residual, kernels.blur(residual))



# ------------------------------------------------------------------- stroke width


def _thicken(ink: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation by `radius` pixels with an octagon (alternating cross and square)."""
    # Shifted maxima into slices (max is exact and order-free; ink >= 0 matches the zero
    # padding), instead of np.pad plus a stacked np.maximum.reduce per step.
    out = ink
    for step in range(radius):
        if step % 2:  # square: a 3-wide max along each axis in turn covers the diagonals
            grown = _max3(_max3(out, 0), 1)
        else:  # cross
            grown = np.maximum(_max3(out, 0), _max3(out, 1))
        out = grown
    return out


def _max3(a: np.ndarray, axis: int) -> np.ndarray:
    """Max of each pixel and its two neighbours along `axis` (outside counts as 0)."""
    out = a.copy()
    if axis == 0:
        np.maximum(out[1:], a[:-1], out=out[1:])
        np.maximum(out[:-1], a[1:], out=out[:-1])
    else:
        np.maximum(out[:, 1:], a[:, :-1], out=out[:, 1:])
        np.maximum(out[:, :-1], a[:, 1:], out=out[:, :-1])
    return out


# ------------------------------------------------------------------------ geometry


def _to_mnist_frame(ink: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Scale the box into 20x20 (aspect kept, anti-aliased), centre of mass to (14, 14).

    One resampling does both: the 28x28 output window is mapped onto the source so that
    the box's longer side spans 20 output pixels and the ink's centre of mass lands on
    pixel (14, 14) exactly (sub-pixel, so equal inputs give equal outputs). Lanczos on
    the float image anti-aliases like MNIST's own reduction.
    """
    y0, y1, x0, x1 = box
    h, w = ink.shape
    scale = _BOX / max(y1 - y0, x1 - x0)  # output pixels per source pixel
    # One source pixel of margin keeps the anti-aliased fringe the mask cut off;
    # everything further out (other marks, dropped specks) is left behind.
    cy0, cy1 = max(0, y0 - 1), min(h, y1 + 1)
    cx0, cx1 = max(0, x0 - 1), min(w, x1 + 1)
    total, com_y, com_x = kernels.centre_of_mass(ink, cy0, cy1, cx0, cx1)
    if total <= 1e-6:
        raise NoDigitFound()
    # Output pixel i covers output coordinates [i, i+1); source pixel j covers [j, j+1).
    # Centre of output pixel 14 (14.5) must fall on the centre of mass (com + 0.5).
    span = _OUT / scale
    by0 = com_y + 0.5 - (_CENTRE + 0.5) / scale
    bx0 = com_x + 0.5 - (_CENTRE + 0.5) / scale
    # The resampling window must lie inside the image (it is clipped and renormalised
    # at the edges, as Pillow's is): pad the crop with zeros as far as needed.
    ch, cw = cy1 - cy0, cx1 - cx0
    pad_top = math.ceil(max(0.0, -by0)) + 1
    pad_left = math.ceil(max(0.0, -bx0)) + 1
    pad_bottom = math.ceil(max(0.0, by0 + span - ch)) + 1
    pad_right = math.ceil(max(0.0, bx0 + span - cw)) + 1
    padded = kernels.padded_crop(ink, cy0, cy1, cx0, cx1, pad_top, pad_left, pad_bottom, pad_right)
    resized = kernels.lanczos_resample(padded, bx0 + pad_left, by0 + pad_top, bx0 + pad_left + span,
                                       by0 + pad_top + span, _OUT)
    frame, peak = kernels.normalised_frame(resized)
    if peak <= 1e-6:
        raise NoDigitFound()
    return frame


# --------------------------------------------------------------------------- public


def _digit_from_signal(signal: np.ndarray, blurred: np.ndarray | None = None, sigma: float = 0.0) -> np.ndarray:
    """Ink signal (any size, ink > 0) -> MNIST-like 28x28, or NoDigitFound.

    `blurred` and `sigma` (the blurred signal and its noise sigma) are computed here
    unless the caller already has them.
    """
    if blurred is None:
        blurred = kernels.blur(signal)
        sigma = kernels.half_sigma(blurred)
    status, ink, box = kernels.isolate_digit(
        signal, blurred, sigma, _MIN_CONTRAST, _NOISE_SIGMAS, _MASK_FRACTION, _CORE_FRACTION,
        _FLOOR_FRACTION, _KEEP_MASS_FRACTION, _MIN_EXTENT_PX, _MIN_EXTENT_FRACTION)
    if status != 0:
        raise NoDigitFound()
    y0, y1, x0, x1 = box
    extent = max(y1 - y0, x1 - x0)
    frame = _to_mnist_frame(ink, box)
    width = kernels.stroke_width(frame)
    if width >= _THIN_STROKE:
        return frame
    # Too thin for MNIST: dilate in working pixels, re-measure (the estimate is rough,
    # and the box grows with the strokes), at most three rounds.
    h, w = ink.shape
    radius = 0
    for _ in range(3):
        scale = _BOX / extent  # output pixels per working pixel
        radius += max(1, int(np.ceil((_TARGET_STROKE - width) / 2.0 / scale)))
        grown = (max(0, y0 - radius), min(h, y1 + radius), max(0, x0 - radius), min(w, x1 + radius))
        # Only the neighbourhood of the box matters: dilate that part alone.
        ry0, rx0 = max(0, grown[0] - radius - 1), max(0, grown[2] - radius - 1)
        region = ink[ry0 : grown[1] + radius + 1, rx0 : grown[3] + radius + 1]
        local_box = (grown[0] - ry0, grown[1] - ry0, grown[2] - rx0, grown[3] - rx0)
        frame = _to_mnist_frame(_thicken(region, radius), local_box)
        width = kernels.stroke_width(frame)
        extent = max(grown[1] - grown[0], grown[3] - grown[2])
        if width >= 0.9 * _TARGET_STROKE:
            break
    return frame



def preprocess(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Turn uploaded image bytes into the (28, 28) float32 MNIST-style network input.

    White ink on black in [0, 1], digit box scaled into 20x20 and centred by mass, as
    MNIST was made, so that photos, scans and canvas exports look like the training
    data. Raises EmptyUpload, NotAnImage, ImageTooLarge or NoDigitFound (all
    ImageRejected) for what cannot be used; nothing larger than `max_pixels` is decoded.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"preprocess() needs bytes, not {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise EmptyUpload()
    im = _decode(data, max_pixels)
    try:
        luma, alpha = _to_arrays(im)
    except ImageRejected:
        raise
    except MemoryError as exc:
        raise ImageTooLarge("The image is too large to process.") from exc
    except (ValueError, OSError) as exc:
        raise NotAnImage(f"Unsupported image mode {im.mode!r}.") from exc
    finally:
        im.close()
    return _digit_from_signal(*_ink_signal(luma, alpha))


def preprocess_many(items: list[bytes], *, start: int = 0, **kw) -> np.ndarray:
    """Preprocess a batch of uploads into (n, 28, 28) float32; keyword args as `preprocess`.

    The first refused item's ImageRejected is re-raised as it was, with `exc.index` set
    to the item's position in the whole batch (`start` + its position in `items`, for a
    caller that split the batch), so the caller can say which one it was.
    """
    out = np.zeros((len(items), _OUT, _OUT), dtype=np.float32)
    for i, item in enumerate(items):
        try:
            out[i] = preprocess(item, **kw)
        except ImageRejected as exc:
            exc.index = start + i
            raise
    return out


def warm_up() -> None:
    """Preprocess a few tiny synthetic uploads, one per path through the pipeline.

    The compiled kernels are built on first use (seconds, once per checkout, then loaded
    from numba's cache in a fraction of a second); a serving process calls this as it
    starts so that no request pays for it.
    """
    stroke = np.zeros((40, 40), dtype=np.uint8)
    stroke[8:32, 18:23] = 255
    stroke[8:12, 10:30] = 255
    paper = Image.fromarray(255 - stroke)  # dark ink on white paper, L
    canvas = Image.merge("RGBA", (*(Image.new("L", (40, 40), 0),) * 3, Image.fromarray(stroke)))
    cutout = Image.merge("RGBA", (paper, paper, paper, Image.new("L", (40, 40), 255)))
    cutout.paste((0, 0, 0, 0), (0, 0, 40, 4))  # transparent margin on opaque paper
    for im in (paper, canvas, cutout, paper.convert("LA")):
        buffer = io.BytesIO()
        im.save(buffer, format="PNG")
        preprocess(buffer.getvalue())


def from_mnist_uint8(x: np.ndarray) -> np.ndarray:
    """MNIST uint8 digits [n, 28, 28] (or one [28, 28]) -> float32 in [0, 1].

    The same scale and polarity `preprocess` produces (white ink on black, stroke core
    at 1.0, MNIST digits peaking at 255), so stored MNIST data and uploads can be mixed.
    """
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 MNIST data, got {arr.dtype}")
    if arr.shape[-2:] != (_OUT, _OUT) or arr.ndim not in (2, 3):
        raise ValueError(f"expected shape (n, 28, 28) or (28, 28), got {arr.shape}")
    return arr.astype(np.float32) * np.float32(1.0 / 255.0)
