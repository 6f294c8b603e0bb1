"""From uploaded image bytes to the 28x28 float input the digit network expects.

The network was trained on MNIST, so an upload has to be turned into what MNIST looks
like: white ink on black, the digit's bounding box scaled (aspect kept, anti-aliased)
into 20x20, and that placed in a 28x28 field so that its centre of mass sits at the
centre. Real uploads are nothing like that: dark ink on tinted, textured or unevenly lit
paper, any size, off-centre, JPEG-compressed, rotated by EXIF, or canvas exports whose
ink lives only in the alpha channel. This module bridges the two, with numpy and Pillow
only, and refuses what it cannot or must not decode with an `ImageRejected` subclass.

Pipeline (each step is a small function below):

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

Typical uploads (a few hundred pixels a side) take 1-3 ms on one core, about half of it
Pillow's decoding; the cost is bounded for any size because everything after decoding
works on <= 256 px. Small arrays make numpy's per-call overhead the main cost of the
steps, so the helpers avoid the heavier conveniences (np.median, np.pad, ...) where an
exact cheaper equivalent exists (bench/preprocessing_speed.py measures it).
"""

from __future__ import annotations

import functools
import io
import threading
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

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
            return arr[..., 0], arr[..., 1]
        rgba = im if mode in ("RGBA", "RGBa") else im.convert("RGBA")
        pm = rgba.convert("RGBa") if rgba.mode == "RGBA" else rgba
        pm = _reduce(pm)
        arr = np.asarray(pm, dtype=np.float32) / 255.0
        luma = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        return luma, arr[..., 3]

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


def _median(a: np.ndarray):
    """np.median of a finite 1-D float array: same value (up to the sign of a zero) and dtype."""
    return _mean_of_middle(_order_stats(a, _middle(a.size)))


def _order_stats(a: np.ndarray, ks) -> list:
    """The values at sorted positions `ks` of a finite 1-D float array, as a.partition(ks)
    would place them (of equal zeros, either sign may come out; no caller can tell).

    Comparison-based selection (partition) mispredicts a branch on about every other
    comparison of noisy data, which made it the pipeline's largest cost. Counting is
    branch-free: a histogram of each value's sign, exponent and top 3 mantissa bits (in
    float order) finds the bucket holding each position, and only that bucket, a few
    percent of the values, is sorted. Rounding to float32 keeps the order (ties aside),
    so float64 values are bucketed the same way and then sorted exactly. Below ~1500
    values the histogram's fixed cost (~15 us) exceeds the partition's.
    """
    if a.size < 1500:
        # The last position is selected too, as np.median does for its NaN check: without
        # it, numpy's single-kth selection is ~40x slower on arrays full of ties.
        part = a.copy()
        part.partition((*ks, -1))
        return [part[k] for k in ks]
    bits = a.astype(np.float32, copy=False).view(np.int32)
    top = bits >> 20
    # Negative floats order backwards as integers: flip all but the sign bit of theirs.
    top ^= (top >> 11) & 0x7FF
    top += 2048  # -> 0..4095, for bincount
    counts = np.bincount(top)
    ends = np.cumsum(counts)
    buckets = np.searchsorted(ends, ks, side="right")
    out, sorted_members = [], {}
    for k, b in zip(ks, buckets.tolist()):
        if b not in sorted_members:
            sorted_members[b] = np.sort(a[top == b])
        out.append(sorted_members[b][k - int(ends[b] - counts[b])])
    return out


def _middle(n: int) -> tuple[int, ...]:
    """Sorted positions np.median averages for n values: the middle one or two."""
    return (n // 2,) if n % 2 else (n // 2 - 1, n // 2)


def _mean_of_middle(values: list):
    """np.median's last step: the middle value, or the mean of the two (same dtype)."""
    return values[0] if len(values) == 1 else (values[0] + values[1]) / 2


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication: kills pixel noise, not strokes."""
    # Same sums in the same order as blurring an edge-padded copy, without np.pad (whose
    # per-call overhead exceeds the arithmetic on these small images) or its copy.
    v = a * 2.0
    v[1:] += a[:-1]
    v[0] += a[0]
    v[:-1] += a[1:]
    v[-1] += a[-1]
    out = v * 2.0
    out[:, 1:] += v[:, :-1]
    out[:, 0] += v[:, 0]
    out[:, :-1] += v[:, 1:]
    out[:, -1] += v[:, -1]
    out *= 1.0 / 16.0
    return out


def _paper_plane(gray: np.ndarray) -> np.ndarray:
    """Fit the paper level as a plane a + b*x + c*y, from the image border, robustly.

    A plane handles tinted paper and the linear lighting gradient of a phone photo. The
    samples come from the outer band of the image, which is paper even when the digit
    fills most of a tightly cropped upload, and iterative trimming (residuals within 2.5
    robust sigmas) discards the strokes that do touch the border.
    """
    h, w = gray.shape
    rows, cols, design, x_all, y_all = _plane_samples(h, w)
    z = gray[rows, cols].astype(np.float64)
    middle = _order_stats(z, _middle(z.size))
    coef = np.array([_mean_of_middle(middle), 0.0, 0.0])
    # First round, flat plane: design @ coef is exactly coef[0] on every row (1 * a plus
    # signed zeros), and subtracting a constant keeps the order, so the residuals' median
    # comes from z's own middle values without a second selection.
    resid = z - coef[0]
    med = _mean_of_middle([v - coef[0] for v in middle])
    previous = None
    for _ in range(3):
        if previous is not None:
            resid = z - design @ coef
            med = _median(resid)
        dev = np.abs(resid - med)
        sigma = max(1.4826 * float(_median(dev)), 1e-3)
        inliers = dev <= 2.5 * sigma
        # The same inliers as last round give the same fit again: nothing left to do.
        if previous is not None and not (inliers ^ previous).any():
            break
        previous = inliers
        if np.count_nonzero(inliers) < 8:
            break
        sub = design[inliers]
        normal = sub.T @ sub
        if _maybe_singular(normal) and abs(np.linalg.det(normal)) < 1e-9:
            coef = np.array([_median(z[inliers]), 0.0, 0.0])
            break
        coef = np.linalg.solve(normal, sub.T @ z[inliers])
    # Summed in float64 and rounded once to float32 (a float64 temporary and astype beat
    # np.add's casting output loop).
    return np.add((coef[0] + y_all * coef[2])[:, None], (x_all * coef[1])[None, :]).astype(np.float32)


def _maybe_singular(normal: np.ndarray) -> bool:
    """False when the 3x3 normal matrix's determinant is surely far above 1e-9.

    Cofactor expansion in Python floats costs a fraction of np.linalg.det's call. Its
    entries are at most the sample count (<= 2304), so either way of computing the
    determinant errs by well under 1e-3: at >= 1 here, LAPACK's is above 1e-9 too.
    """
    a, b, c, d, e, f, g, h, i = normal.ravel().tolist()
    return abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)) < 1.0


@functools.lru_cache(maxsize=32)
def _plane_samples(h: int, w: int) -> tuple[np.ndarray, ...]:
    """Where `_paper_plane` samples an h x w image, its design matrix (1, x, y), and the
    normalised x of every column and y of every row (for the plane itself).

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


def _half_sigmas(values: np.ndarray) -> tuple[float, float]:
    """Noise sigmas of `values` and of `-values`, each from its side below zero only.

    Ink only ever adds positive values, so the negative half of an ink signal is pure
    paper noise however much of the image the digit covers; its median magnitude is
    0.674 sigma. Both polarities come from one selection over one sample: the values <= 0
    are the lowest `n_neg` of the sorted sample and the values >= 0 the highest `n_pos`
    (zeros count on both sides: a clean synthetic paper has no noise at all).
    """
    flat = _sample(values)
    n = flat.size
    n_neg = int(np.count_nonzero(flat <= 0))
    n_pos = int(np.count_nonzero(flat >= 0))
    # Middle positions of each side. The magnitudes of the negative side, sorted, are
    # that side read backwards: their k-th smallest is -sorted[n_neg - 1 - k].
    neg = [n_neg - 1 - k for k in _middle(n_neg)] if n_neg >= 16 else []
    pos = [n - n_pos + k for k in _middle(n_pos)] if n_pos >= 16 else []
    if not (neg or pos):
        return 0.0, 0.0
    values = _order_stats_with_zeros(flat, neg + pos, n_neg, n_pos)
    sigma_neg = sigma_pos = 0.0
    if neg:
        sigma_neg = float(_mean_of_middle([-v for v in values[: len(neg)]]) / 0.6745)
    if pos:
        sigma_pos = float(_mean_of_middle(values[len(neg) :]) / 0.6745)
    return sigma_neg, sigma_pos


def _half_sigma(values: np.ndarray) -> float:
    """Noise sigma from the values below zero only (the paper side of an ink signal)."""
    # As _half_sigmas, without extracting the negative side (a costly boolean gather).
    flat = _sample(values)
    n_neg = int(np.count_nonzero(flat <= 0))
    if n_neg < 16:
        return 0.0
    n_pos = int(np.count_nonzero(flat >= 0))
    values = _order_stats_with_zeros(flat, [n_neg - 1 - k for k in _middle(n_neg)], n_neg, n_pos)
    return float(_mean_of_middle([-v for v in values]) / 0.6745)


def _order_stats_with_zeros(flat: np.ndarray, ks: list, n_neg: int, n_pos: int) -> list:
    """_order_stats of `flat`, which has n_neg values <= 0 and n_pos >= 0.

    Its zeros fill sorted positions n - n_pos .. n_neg - 1; positions there need no
    selection. That is the common case for a signal with exact zeros (alpha ink,
    synthetic paper), where it would otherwise sort one huge bucket of zeros.
    """
    zero = flat.dtype.type(0)
    others = [k for k in ks if not flat.size - n_pos <= k < n_neg]
    found = dict(zip(others, _order_stats(flat, others))) if others else {}
    return [found.get(k, zero) for k in ks]


def _sample(values: np.ndarray) -> np.ndarray:
    """The flattened values, thinned to ~16k: a sample is plenty for a median."""
    flat = values.ravel()
    return flat[:: max(1, flat.size // 16384)]


def _clip01(a: np.ndarray) -> np.ndarray:
    """np.clip(a, 0, 1) in place (same values; np.clip adds overhead and a copy)."""
    np.maximum(a, 0.0, out=a)
    return np.minimum(a, 1.0, out=a)


def _alpha_is_meaningful(alpha: np.ndarray | None) -> bool:
    """Alpha matters when it really varies (not a constant, fully opaque layer)."""
    return alpha is not None and float(alpha.max() - alpha.min()) > 0.25


def _ink_signal(luma: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Ink strength per pixel, >= 0 where there is ink, ~0 on paper (any polarity).

    Returns (signal, blurred signal, noise sigma of the blurred signal); the last two are
    (None, 0.0) when the signal is the alpha channel. They come for free from the polarity
    decision (the blur is linear and exactly odd), so `_digit_from_signal` reuses them.

    With meaningful alpha and uniformly coloured opaque pixels, the image is a canvas
    export or a cut-out: ink is exactly the alpha (the colour channels may all be black,
    so compositing onto black would lose the digit). With meaningful alpha but varied
    colours (a photo with transparent corners), transparent areas are filled with the
    paper colour of the opaque ones, and the usual paper/ink analysis follows.
    """
    if _alpha_is_meaningful(alpha):
        opaque = alpha > 0.5
        colour = luma[opaque] / alpha[opaque]  # un-premultiplied luma of opaque pixels
        if colour.size == 0:
            return alpha.astype(np.float32), None, 0.0
        typical = float(_median(colour))
        # Ink drawn with one brush has one colour; opaque paper holding a digit has a
        # minority of pixels (the ink) far from its typical colour.
        if float(np.mean(np.abs(colour - typical) > 0.25)) < _ALPHA_INK_OUTLIERS:
            return alpha.astype(np.float32), None, 0.0
        luma = luma + (1.0 - alpha) * typical  # composite onto the paper colour

    residual = luma - _paper_plane(luma)
    blurred = _blur(residual)
    # Whichever side holds no ink gives the clean noise estimate.
    sigma_light, sigma_dark = _half_sigmas(blurred)  # of blurred and of -blurred
    significant = max(4.0 * min(sigma_light, sigma_dark), 0.05)
    negated = -blurred
    excess = negated - significant
    dark = np.maximum(excess, 0.0, out=excess).sum()
    excess = blurred - significant
    light = np.maximum(excess, 0.0, out=excess).sum()
    if residual.dtype != np.float32:  # luma is always float32; without it, no reuse
        return (-residual if dark >= light else residual).astype(np.float32), None, 0.0
    if dark >= light:
        # blur(-residual) == -blur(residual) exactly (up to the sign of exact zeros,
        # which no later comparison or median can tell apart).
        return -residual, negated, sigma_dark
    return residual, blurred, sigma_light


# --------------------------------------------------------------------- components


def _components(mask: np.ndarray):
    """Run-length connected components (8-connectivity) of a boolean mask, numpy only.

    Returns per-run arrays (row, start, end, label) with labels 0..n-1; runs rather
    than pixels keep it fast: a digit is a few runs per row.
    """
    h, w = mask.shape
    # Run edges per row (as np.diff of the zero-framed rows would find them, without its
    # concatenations): in row-major order they alternate start, end (exclusive).
    framed = np.zeros((h, w + 2), dtype=bool)
    framed[:, 1:-1] = mask
    edges = np.flatnonzero(framed[:, 1:] != framed[:, :-1])
    rows, starts = np.divmod(edges[0::2], w + 1)
    ends = edges[1::2] - rows * (w + 1)
    n = rows.size
    if n == 0:
        return rows, starts, ends, np.zeros(0, dtype=np.int64)
    stride = w + 2
    key_start = rows * stride + starts
    key_end = rows * stride + ends
    # Runs of the next row that touch run i (8-connected): start_j <= end_i and
    # end_j >= start_i; they form a contiguous range in the sorted run list.
    lo = np.searchsorted(key_end, (rows + 1) * stride + starts, side="left")
    hi = np.searchsorted(key_start, (rows + 1) * stride + ends, side="right")
    counts = np.maximum(hi - lo, 0)
    src = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    dst = np.repeat(lo, counts) + offsets

    parent = np.arange(n)
    while True:
        while True:  # pointer jumping to roots
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand
        ra, rb = parent[src], parent[dst]
        differ = ra != rb
        if not differ.any():
            break
        # Hook the larger root under the smaller one: no cycles, converges quickly.
        ra, rb = ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
    # Number the roots in increasing order, as np.unique(parent, return_inverse=True)
    # would, without its sort: every entry of `parent` is now a root.
    is_root = parent == np.arange(n)
    labels = (np.cumsum(is_root) - 1)[parent]
    return rows, starts, ends, labels


def _select_digit(ink: np.ndarray, mask: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
    """Bounding box (y0, y1, x0, x1) of the digit and a mask of dropped specks (or None).

    Components with a meaningful share of the ink mass are the digit; light ones are
    kept only when they lie inside the digit's box (broken strokes), so a speck far
    away cannot stretch the box.
    """
    rows, starts, ends, labels = _components(mask)
    if labels.size == 0:
        raise NoDigitFound()
    if not labels.any():
        # One component (the common case): it is the digit, nothing is dropped, and its
        # mass (only ever compared with other components') is not needed.
        return (int(rows.min()), int(rows.max()) + 1, int(starts.min()), int(ends.max())), None
    csum = np.zeros((ink.shape[0], ink.shape[1] + 1), dtype=np.float64)
    np.cumsum(ink * mask, axis=1, dtype=np.float64, out=csum[:, 1:])
    run_mass = csum[rows, ends] - csum[rows, starts]
    count = int(labels.max()) + 1
    mass = np.bincount(labels, weights=run_mass, minlength=count)
    y0 = np.full(count, mask.shape[0])
    y1 = np.zeros(count, dtype=np.int64)
    x0 = np.full(count, mask.shape[1])
    x1 = np.zeros(count, dtype=np.int64)
    np.minimum.at(y0, labels, rows)
    np.maximum.at(y1, labels, rows + 1)
    np.minimum.at(x0, labels, starts)
    np.maximum.at(x1, labels, ends)

    keep = mass >= _KEEP_MASS_FRACTION * mass.max()
    by0, by1 = y0[keep].min(), y1[keep].max()
    bx0, bx1 = x0[keep].min(), x1[keep].max()
    inside = (y0 >= by0) & (y1 <= by1) & (x0 >= bx0) & (x1 <= bx1)
    keep |= inside

    dropped = None
    if not keep.all():
        gone = ~keep[labels]
        paint = np.zeros((mask.shape[0], mask.shape[1] + 1), dtype=np.int32)
        np.add.at(paint, (rows[gone], starts[gone]), 1)
        np.add.at(paint, (rows[gone], ends[gone]), -1)
        dropped = np.cumsum(paint, axis=1)[:, :-1] > 0
        dropped = _dilate(dropped)
    return (int(by0), int(by1), int(bx0), int(bx1)), dropped


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation (covers the anti-aliased fringe of a dropped speck)."""
    # Shifted ORs into slices: the same result as OR-ing views of a zero-padded copy.
    v = mask.copy()
    v[1:] |= mask[:-1]
    v[:-1] |= mask[1:]
    out = v.copy()
    out[:, 1:] |= v[:, :-1]
    out[:, :-1] |= v[:, 1:]
    return out


# ------------------------------------------------------------------- stroke width


def _stroke_width(frame: np.ndarray) -> float:
    """Mean stroke width of a 28x28 digit: 2 x ink area / perimeter of the >0.5 mask."""
    # Mask edges inside, plus mask pixels on the frame's border (edges against the zero
    # surround): the same count as |diff| of the zero-padded mask, in fewer numpy calls.
    mask = frame > 0.5
    perimeter = (
        np.count_nonzero(mask[1:] != mask[:-1])
        + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
        + np.count_nonzero(mask[0])
        + np.count_nonzero(mask[-1])
        + np.count_nonzero(mask[:, 0])
        + np.count_nonzero(mask[:, -1])
    )
    return 2.0 * float(frame.sum()) / max(int(perimeter), 1)


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
    crop = ink[cy0:cy1, cx0:cx1]
    total = float(crop.sum())
    if total <= 1e-6:
        raise NoDigitFound()
    com_y = float((crop.sum(axis=1) * np.arange(cy1 - cy0)).sum() / total)
    com_x = float((crop.sum(axis=0) * np.arange(cx1 - cx0)).sum() / total)
    # Output pixel i covers output coordinates [i, i+1); source pixel j covers [j, j+1).
    # Centre of output pixel 14 (14.5) must fall on the centre of mass (com + 0.5).
    span = _OUT / scale
    by0 = com_y + 0.5 - (_CENTRE + 0.5) / scale
    bx0 = com_x + 0.5 - (_CENTRE + 0.5) / scale
    # Pillow wants the box inside the image: pad the crop with zeros as far as needed.
    pad_top = int(np.ceil(max(0.0, -by0))) + 1
    pad_left = int(np.ceil(max(0.0, -bx0))) + 1
    pad_bottom = int(np.ceil(max(0.0, by0 + span - crop.shape[0]))) + 1
    pad_right = int(np.ceil(max(0.0, bx0 + span - crop.shape[1]))) + 1
    # Zero frame filled by slicing (np.pad's per-call overhead is larger than the copy),
    # handed to Pillow as a buffer and read back the same way (no array-interface trip).
    ch, cw = crop.shape
    padded = np.zeros((pad_top + ch + pad_bottom, pad_left + cw + pad_right), dtype=np.float32)
    padded[pad_top : pad_top + ch, pad_left : pad_left + cw] = crop
    src = Image.frombuffer("F", (padded.shape[1], padded.shape[0]), padded, "raw", "F", 0, 1)
    region = (bx0 + pad_left, by0 + pad_top, bx0 + pad_left + span, by0 + pad_top + span)
    resized = src.resize((_OUT, _OUT), Image.Resampling.LANCZOS, box=region)
    frame = _clip01(np.frombuffer(resized.tobytes(), dtype=np.float32).reshape(_OUT, _OUT).copy())
    peak = float(frame.max())
    if peak <= 1e-6:
        raise NoDigitFound()
    frame /= peak
    frame[frame < 1e-3] = 0.0  # resampling ripples: MNIST's background is exactly 0
    return frame


# --------------------------------------------------------------------------- public


def _digit_from_signal(signal: np.ndarray, blurred: np.ndarray | None = None, sigma: float = 0.0) -> np.ndarray:
    """Ink signal (any size, ink > 0) -> MNIST-like 28x28, or NoDigitFound.

    `blurred` and `sigma` (_blur(signal) and _half_sigma of that) are computed here
    unless the caller already has them.
    """
    if blurred is None:
        blurred = _blur(signal)
        sigma = _half_sigma(blurred)
    peak = float(blurred.max())
    if peak < _MIN_CONTRAST or peak < _NOISE_SIGMAS * sigma:
        raise NoDigitFound()

    mask = blurred > max(_MASK_FRACTION * peak, 4.0 * sigma)
    core = blurred > _CORE_FRACTION * peak
    stroke = signal[core]
    level = float(_median(stroke)) if stroke.size else peak
    level = max(level, peak * _CORE_FRACTION)
    # Pixel noise is ~2.7x the blurred sigma; keep it out of the picture.
    floor = max(_FLOOR_FRACTION * level, 2.5 * _half_sigma(signal))
    ink = signal - floor
    ink /= max(level - floor, 1e-6)
    _clip01(ink)

    box, dropped = _select_digit(ink, mask)
    y0, y1, x0, x1 = box
    extent = max(y1 - y0, x1 - x0)
    if extent < max(_MIN_EXTENT_PX, _MIN_EXTENT_FRACTION * max(signal.shape)):
        raise NoDigitFound()
    if dropped is not None:
        ink[dropped] = 0.0
    frame = _to_mnist_frame(ink, box)
    width = _stroke_width(frame)
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
        width = _stroke_width(frame)
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
