"""From uploaded image bytes to the 28x28 float input the digit network expects.

The network was trained on MNIST: white ink on black, the digit's bounding box scaled
(aspect kept, anti-aliased) into 20x20, its centre of mass at the centre of 28x28.
Uploads are dark ink on tinted or unevenly lit paper, any size, off-centre, JPEG, rotated
by EXIF, or canvas exports whose ink lives only in the alpha channel. Pillow decodes
(safely); OpenCV and numpy do the rest:

1. decode: allowed formats only, pixel count checked from the header, bombs refused,
   EXIF orientation applied, large images reduced early (JPEG draft, box reduction);
2. ink signal: meaningful alpha is the ink (canvas exports); otherwise the paper level is
   a robust plane fitted on the image's border, and the side of it with more significant
   mass is the ink (dark on light or light on dark);
3. noise: estimated from the paper side of the signal (ink cannot reach it); blank or
   noise-only images are refused; the ink is stretched so the stroke core is 1;
4. specks: connected components of the thresholded, blurred ink; light ones outside the
   digit's box are erased, so they cannot stretch it;
5. MNIST geometry: box into 20x20 (INTER_AREA), centre of mass to (14, 14) by a
   sub-pixel shift; strokes far thinner than MNIST's are thickened first.

Refusals are `ImageRejected` subclasses with a stable `code`.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps

# Each serving process already runs several request threads (and gunicorn several
# workers) on few cores: OpenCV's own thread pool per call would only crowd them.
cv2.setNumThreads(1)

__all__ = [
    "DEFAULT_MAX_PIXELS", "ALLOWED_FORMATS", "ImageRejected", "EmptyUpload", "NotAnImage",
    "ImageTooLarge", "NoDigitFound", "preprocess", "preprocess_many",
]

# Every phone camera in common use, and below Pillow's own bomb threshold (~89 MP), so our
# header check is the one that normally fires.
DEFAULT_MAX_PIXELS = 40_000_000
# Decoders Pillow may use; everything else (TIFF, PSD, EPS, ...) is refused unread.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
# Longest side analysed: the digit ends up 20 px, and this bounds the cost for any size.
_WORK_MAX_SIDE = 256
# Shortest side that can hold a digit once reduced to the working size (the 8x8 "1" is
# the smallest legible one): a 4000x1 strip is a line, not a digit the network should name.
_WORK_MIN_SIDE = 8

_OUT, _BOX, _CENTRE = 28, 20, 14.0  # MNIST: 28x28 field, 20 px box, centre of mass at 14

# Ink detection (signal units are fractions of full scale).
_MIN_CONTRAST = 0.10  # weakest blurred ink peak accepted at all
_NOISE_SIGMAS = 6.0  # ... and it must stand this many blurred-noise sigmas above paper
_MASK_FRACTION = 0.30  # mask threshold, as a fraction of the peak
_CORE_FRACTION = 0.50  # pixels above this fraction of the peak give the stroke level
_FLOOR_FRACTION = 0.15  # ink below this fraction of the stroke level is paper
_KEEP_MASS_FRACTION = 0.05  # components lighter than this (vs the heaviest) are specks
_MIN_EXTENT_FRACTION = 0.03  # the digit spans >= 3 % of the image's longer side
_MIN_EXTENT_PX = 3
_ALPHA_INK_OUTLIERS = 0.01  # opaque pixels off the typical colour, above which alpha is not ink
_NOISE_SAMPLE = 4096  # noise is estimated from an evenly thinned sample of this many values
# Stroke width in output pixels (2 * area / perimeter; MNIST: 1st percentile 1.06, median
# 1.94). A fine pen on a big photo lands far below: it is thickened towards the median.
_THIN_STROKE = 1.1
_TARGET_STROKE = 1.9


class ImageRejected(Exception):
    """Base of every refusal of an upload; `code` is stable, the message is for humans."""

    code = "image_rejected"
    message = "The upload was rejected."

    def __init__(self, message: str | None = None):
        super().__init__(message or self.message)


class EmptyUpload(ImageRejected):
    code = "empty_upload"
    message = "The uploaded file is empty."


class NotAnImage(ImageRejected):
    code = "not_an_image"
    message = "The upload is not a supported image (PNG, JPEG, GIF, BMP or WEBP)."


class ImageTooLarge(ImageRejected):
    """More pixels than allowed (judged from the header, before decoding), or a bomb."""

    code = "image_too_large"
    message = "The image has too many pixels."


class NoDigitFound(ImageRejected):
    """Decoded fine, but holds no ink that could be a digit (blank or noise)."""

    code = "no_digit_found"
    message = "No digit was found in the image."


# --------------------------------------------------------------------------- decoding

# catch_warnings swaps process-global state; the lock keeps concurrent header parses from
# restoring each other's filters (held for microseconds, not while pixels decode).
_WARNINGS_LOCK = threading.Lock()
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise NotAnImage("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageTooLarge(f"The image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}.")


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    """The first frame, upright (EXIF), JPEGs already reduced towards the working size."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except _BOMB as exc:
        raise ImageTooLarge(f"The image is too large to decode safely ({exc}).") from exc
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        raise NotAnImage() from exc
    _check_size(im.size, max_pixels)
    if im.format == "JPEG":  # DCT scaling; RGB straight to luma
        im.draft("L" if im.mode == "RGB" else None, _working_size(im.size))
    try:
        im.load()
    except _BOMB + (MemoryError,) as exc:
        raise ImageTooLarge("The image is too large to decode safely.") from exc
    except Exception as exc:  # truncated or corrupt data
        raise NotAnImage("The image data is corrupt or truncated.") from exc
    _check_size(im.size, max_pixels)  # a GIF frame may grow the canvas while loading
    try:
        # exif_transpose copies the image even when upright: ask first.
        if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            im = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        pass
    return im


def _working_size(size: tuple[int, int]) -> tuple[int, int]:
    factor = max(size) / _WORK_MAX_SIDE
    return size if factor <= 1 else (max(1, int(size[0] / factor)), max(1, int(size[1] / factor)))


def _reduce(im: Image.Image) -> Image.Image:
    """Box-reduce by an integer factor so the longer side is <= the working size."""
    factor = -(-max(im.size) // _WORK_MAX_SIDE)
    return im.reduce(factor) if factor > 1 else im


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luma in [0, 1] (premultiplied by alpha, so reduction cannot leak the colour of
    transparent pixels) and alpha, or None."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float32)
        low, top = float(values.min()), float(values.max())
        if im.mode.startswith("I;16"):
            low, span = 0.0, 65535.0
        elif low >= 0 and top <= 1.0 and im.mode == "F":
            span = 1.0
        elif low >= 0 and top <= 65535:
            low, span = 0.0, 255.0 if top <= 255 else 65535.0
        else:  # arbitrary range: stretch what is there
            span = max(top - low, 1e-6)
        gray = np.asarray(_reduce(Image.fromarray((values - low) / span, mode="F")), dtype=np.float32)
        return np.clip(gray, 0.0, 1.0), None
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        if im.mode in ("LA", "La"):
            pixels = np.asarray(_reduce(im.convert("La")))
            return pixels[..., 0] * np.float32(1 / 255), pixels[..., 1] * np.float32(1 / 255)
        rgba = im if im.mode in ("RGBA", "RGBa") else im.convert("RGBA")
        pixels = np.asarray(_reduce(rgba.convert("RGBa") if rgba.mode == "RGBA" else rgba))
        luma = cv2.cvtColor(pixels, cv2.COLOR_RGBA2GRAY)
        return luma * np.float32(1 / 255), pixels[..., 3] * np.float32(1 / 255)
    try:
        gray = im if im.mode == "L" else im.convert("L")
    except (ValueError, OSError):
        gray = im.convert("RGB").convert("L")
    return np.asarray(_reduce(gray)) * np.float32(1 / 255), None


# ------------------------------------------------------------------------ ink signal


def _blur(a: np.ndarray) -> np.ndarray:
    """The [1, 2, 1] / 4 blur (OpenCV's fixed 3-tap Gaussian): kills pixel noise, not strokes."""
    return cv2.GaussianBlur(a, (3, 3), 0, borderType=cv2.BORDER_REPLICATE)


def _median(values: np.ndarray) -> float:
    """The (upper) median: a partition, without np.median's bookkeeping, which costs more
    than the selection itself on the few hundred values it is called on."""
    return float(np.partition(values, values.size // 2)[values.size // 2])


def _sample(values: np.ndarray) -> np.ndarray:
    """An evenly thinned sample of about _NOISE_SAMPLE values, for statistics."""
    return values.ravel()[:: max(1, values.size // _NOISE_SAMPLE)]


def _noise_sigma(sample: np.ndarray) -> float:
    """Noise sigma from the values at or below zero only: the paper side of an ink signal,
    which ink (always positive) cannot reach however much of the image it covers."""
    paper = sample[sample <= 0]
    return -_median(paper) / 0.6745 if paper.size >= 16 else 0.0


def _paper_residual(gray: np.ndarray) -> np.ndarray:
    """`gray` minus the paper level, a plane (tint, lighting gradient) through the medians
    of the image's four border strips (~10 % of each side; paper even when a tightly
    cropped digit fills the middle). On a plane a strip's median is the level at its
    centre; ink that crosses a strip moves a median only once it covers half of it."""
    h, w = gray.shape
    cells = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_LINEAR)
    left, right = _median(cells[:, :3].ravel()), _median(cells[:, -3:].ravel())
    top, bottom = _median(cells[:3].ravel()), _median(cells[-3:].ravel())
    # Opposite strips' centres are 29/32 of the image apart; the level in the middle is
    # their mean.
    centre = (left + right + top + bottom) / 4
    x = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    y = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    level_x = x * np.float32((right - left) * 32 / 29)
    level_y = y * np.float32((bottom - top) * 32 / 29) + np.float32(centre)
    return gray - level_y[:, None] - level_x[None, :]


def _ink_signal(luma: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Ink strength per pixel: > 0 where there is ink, ~0 on paper, whatever the polarity;
    with the signal blurred and the noise sigma of that.

    With meaningful alpha and opaque pixels of one colour (a canvas export, a cut-out),
    the ink is the alpha (the colour may be black on transparent black). Opaque pixels of
    varied colours (a photo with transparent corners) are composited onto their typical
    colour, and analysed as paper with ink.
    """
    if alpha is not None and float(alpha.max() - alpha.min()) > 0.25:
        opaque = alpha > 0.5
        colour = luma[opaque] / alpha[opaque]
        typical = _median(colour) if colour.size else 0.0
        if not colour.size or np.count_nonzero(np.abs(colour - typical) > 0.25) < _ALPHA_INK_OUTLIERS * colour.size:
            blurred = _blur(alpha)
            return alpha, blurred, _noise_sigma(_sample(blurred))
        luma = luma + (1.0 - alpha) * np.float32(typical)
    residual = _paper_residual(luma)
    blurred = _blur(residual)
    # The side of the paper with more mass beyond the noise is the ink (judged on an even
    # sample); each side's noise comes from the other, which holds no ink.
    sample = _sample(blurred)
    sigma_light, sigma_dark = _noise_sigma(sample), _noise_sigma(-sample)
    significant = max(4.0 * min(sigma_light, sigma_dark), 0.05)
    dark = float(np.maximum(-sample - significant, 0).sum())
    light = float(np.maximum(sample - significant, 0).sum())
    return (-residual, -blurred, sigma_dark) if dark >= light else (residual, blurred, sigma_light)


def _isolate_digit(signal: np.ndarray, blurred: np.ndarray, sigma: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Ink signal -> (ink in [0, 1] with specks erased, digit box (y0, y1, x0, x1)).

    Connected components of the thresholded blurred ink with a meaningful share of the
    mass are the digit; light ones are kept only inside its box (broken strokes), the
    others erased with their anti-aliased fringe.
    """
    peak = float(blurred.max())
    if peak < _MIN_CONTRAST or peak < _NOISE_SIGMAS * sigma:
        raise NoDigitFound()
    mask = blurred > max(_MASK_FRACTION * peak, 4.0 * sigma)
    core = signal[blurred > _CORE_FRACTION * peak]
    level = max(_median(core) if core.size else peak, _CORE_FRACTION * peak)
    # Pixel noise is ~2.7x the blurred noise: keep it out of the picture.
    floor = max(_FLOOR_FRACTION * level, 2.5 * _noise_sigma(_sample(signal)))
    ink = np.clip((signal - np.float32(floor)) / np.float32(max(level - floor, 1e-6)), 0.0, 1.0)

    count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if count < 2:
        raise NoDigitFound()
    keep = np.ones(count, bool)  # label 0 is the background
    if count > 2:  # more than one component: which are heavy enough to be the digit?
        mass = np.bincount(labels[mask], weights=ink[mask], minlength=count)
        keep = mass >= _KEEP_MASS_FRACTION * mass[1:].max()
    keep[0] = False
    box = _box(keep[labels] if not keep[1:].all() else mask)
    y0, y1, x0, x1 = box
    if max(y1 - y0, x1 - x0) < max(_MIN_EXTENT_PX, _MIN_EXTENT_FRACTION * max(signal.shape)):
        raise NoDigitFound()
    keep[0] = True
    if not keep.all():
        # Light components with no pixel outside the digit's box stay (broken strokes).
        outside = mask.copy()
        outside[y0:y1, x0:x1] = False
        keep |= np.bincount(labels[outside], minlength=count) == 0
        dropped = (~keep[labels]).view(np.uint8)
        ink[cv2.dilate(dropped, np.ones((3, 3), np.uint8)) > 0] = 0.0
    return ink, box


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), ends exclusive, of a mask's pixels."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return y, y + h, x, x + w


# ------------------------------------------------------------------------ geometry


def _to_mnist_frame(ink: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box scaled so its longer side is 20 px (area-averaged, as MNIST was reduced),
    then shifted so the centre of mass is (14, 14) to the sub-pixel, peak scaled to 1."""
    y0, y1, x0, x1 = box
    scale = _BOX / max(y1 - y0, x1 - x0)
    # One source pixel of margin keeps the fringe the mask cut off; further out (other
    # marks, erased specks) is left behind.
    y0, x0 = max(0, y0 - 1), max(0, x0 - 1)
    crop = ink[y0 : y1 + 1, x0 : x1 + 1]
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    m = cv2.moments(small)
    if m["m00"] <= 1e-6:
        raise NoDigitFound()
    shift = np.float32([[1, 0, _CENTRE - m["m10"] / m["m00"]], [0, 1, _CENTRE - m["m01"] / m["m00"]]])
    frame = cv2.warpAffine(small, shift, (_OUT, _OUT), flags=cv2.INTER_LINEAR)  # stays in [0, 1]
    peak = float(frame.max())
    if peak <= 1e-6:
        raise NoDigitFound()
    frame /= peak
    frame[frame < 1e-3] = 0.0  # MNIST's background is exactly 0
    return frame


def _stroke_width(frame: np.ndarray) -> float:
    """Mean stroke width: 2 x ink area / perimeter of the > 0.5 mask."""
    mask = cv2.copyMakeBorder((frame > 0.5).view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT)
    perimeter = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
    return 2.0 * float(frame.sum()) / max(perimeter, 1)


def _digit(signal: np.ndarray, blurred: np.ndarray, sigma: float) -> np.ndarray:
    """Ink signal (ink > 0) -> MNIST-like 28x28, strokes thickened if far too thin."""
    ink, (y0, y1, x0, x1) = _isolate_digit(signal, blurred, sigma)
    frame = _to_mnist_frame(ink, (y0, y1, x0, x1))
    width, extent, radius = _stroke_width(frame), max(y1 - y0, x1 - x0), 0
    if width >= _THIN_STROKE:
        return frame
    h, w = ink.shape
    for _ in range(3):  # dilate in working pixels and re-measure: the estimate is rough
        radius += max(1, int(np.ceil((_TARGET_STROKE - width) / 2.0 * extent / _BOX)))
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        box = (max(0, y0 - radius), min(h, y1 + radius), max(0, x0 - radius), min(w, x1 + radius))
        frame = _to_mnist_frame(cv2.dilate(ink, disk), box)
        width, extent = _stroke_width(frame), max(box[1] - box[0], box[3] - box[2])
        if width >= 0.9 * _TARGET_STROKE:
            break
    return frame


# --------------------------------------------------------------------------- public


def preprocess(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Uploaded image bytes -> the (28, 28) float32 MNIST-style network input.

    White ink on black in [0, 1], digit box scaled into 20x20 and centred by mass. Raises
    EmptyUpload, NotAnImage, ImageTooLarge or NoDigitFound (all ImageRejected); nothing
    larger than `max_pixels` is decoded.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"preprocess() needs bytes, not {type(data).__name__}")
    if not data:
        raise EmptyUpload()
    im = _decode(bytes(data), max_pixels)
    try:
        luma, alpha = _to_arrays(im)
    except MemoryError as exc:
        raise ImageTooLarge("The image is too large to process.") from exc
    except (ValueError, OSError) as exc:
        raise NotAnImage(f"Unsupported image mode {im.mode!r}.") from exc
    finally:
        im.close()
    if min(luma.shape) < _WORK_MIN_SIDE:
        raise NoDigitFound(f"The image is {luma.shape[1]}x{luma.shape[0]} pixels once reduced: too thin to hold a digit.")
    return _digit(*_ink_signal(luma, alpha))


def preprocess_many(items: list[bytes], *, start: int = 0, threads: int = 1, **kw) -> np.ndarray:
    """A batch of uploads -> (n, 28, 28) float32; keyword args as `preprocess`.

    With `threads` > 1 the batch is split into that many contiguous runs, the calling
    thread taking the first: Pillow's decoders and OpenCV's calls release the GIL, so the
    runs overlap on several cores. The first refused item's ImageRejected is re-raised
    with `exc.index` set to its position in the whole batch (`start` + its position in
    `items`), whichever run found it first.
    """
    out = np.zeros((len(items), _OUT, _OUT), dtype=np.float32)

    def run(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            try:
                out[i] = preprocess(items[i], **kw)
            except ImageRejected as exc:
                exc.index = start + i
                raise

    runs = max(1, min(int(threads), len(items)))
    bounds = [len(items) * k // runs for k in range(runs + 1)]
    others = [_pool(runs - 1).submit(run, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    try:
        run(bounds[0], bounds[1])
    finally:
        # Every run finishes before the batch is answered (the runs write into `out`);
        # an earlier run's refusal wins, as if the batch had been read in order.
        for future in others:
            future.exception()
    for future in others:
        future.result()
    return out


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(size: int) -> ThreadPoolExecutor:
    """This process's pool of `size` threads, made on first use (never inherited by a fork)."""
    key = (os.getpid(), size)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="preprocess")
        return _POOLS[key]
