"""The preprocessing's per-pixel loops, compiled with numba.

Written as numpy expressions, the preprocessing made some three hundred numpy calls per
upload, and on images of a few hundred pixels a side each call's dispatch cost more
than its arithmetic: about 0.7 of the 1 ms an upload took. Here each step is one
compiled pass over the pixels. The kernels release the GIL, so request threads
preprocess in parallel too.

They compute what the numpy expressions computed, in the same precision: float32 stays
float32 (constants are cast, as numpy casts a Python scalar to the array's dtype), and
medians are exact order statistics. Only sums may round differently (numpy sums in
pairs, these in float64), which decides nothing but exact ties.

Compiled on first use and cached beside this file (`cache=True`): the first process of
a checkout spends 10-15 s compiling (`make install` does it), later ones load the
machine code in about 0.2 s; `preprocessing.warm_up()` does that as a serving process
starts, not in a request. Editing this file invalidates the cache.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_jit = njit(cache=True, nogil=True)

F32 = np.float32
_HALF = F32(0.5)
_TWO = F32(2.0)
_SIXTEENTH = F32(1.0 / 16.0)
_MAD_TO_SIGMA = F32(0.6745)  # median |x| of a normal sample, in sigmas (float32, as numpy divided)
_SAMPLE = 4096  # a median over more values than this uses an evenly thinned sample


# ------------------------------------------------------------------------ selection


@_jit
def _kth(buf, k):
    """The k-th smallest value of `buf` (0-based), reordering it so that buf[:k] <= buf[k].

    Hoare-partition quickselect with a median-of-three pivot: linear on average, and
    runs of equal values (paper is often exactly 0 or 1) split evenly instead of
    degrading it.
    """
    lo = 0
    hi = buf.size - 1
    while lo < hi:
        a = buf[lo]
        b = buf[(lo + hi) >> 1]
        c = buf[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i = lo
        j = hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                t = buf[i]
                buf[i] = buf[j]
                buf[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return buf[k]


@_jit
def median(buf):
    """np.median of a non-empty 1-D array, in its dtype; reorders `buf`."""
    n = buf.size
    lower, upper = _kth_pair(buf, n // 2)
    if n % 2:
        return upper
    half = np.empty(1, dtype=buf.dtype)
    half[0] = 0.5
    return (lower + upper) * half[0]


@_jit
def _kth_pair(buf, k):
    """The (k-1)-th and k-th smallest values of `buf` (the first is the k-th when k is 0),
    by selection; reorders `buf`."""
    upper = _kth(buf, k)
    lower = upper
    for i in range(k):  # after _kth, the values before position k are the smaller
        lower = buf[i] if i == 0 else max(lower, buf[i])
    return lower, upper


@_jit
def median32(buf):
    """np.median of a non-empty 1-D float32 array; reorders `buf`."""
    n = buf.size
    lower, upper = _middle_pair(buf, n // 2)
    return upper if n % 2 else (lower + upper) * _HALF


@_jit
def _median_with_zeros(positive, zeros):
    """median32 of `positive` (values > 0) joined by `zeros` zeros, without the zeros.

    A clean synthetic paper or an alpha signal is mostly exact zeros; they hold the
    lowest positions, so only the positions above them need selecting.
    """
    total = positive.size + zeros
    k = total // 2
    zero = F32(0.0)
    if k < zeros:  # both middle values are zeros
        return zero
    lower, upper = _middle_pair(positive, k - zeros)
    if total % 2:
        return upper
    if k == zeros:  # the lower middle is the last zero
        lower = zero
    return (lower + upper) * _HALF


@_jit
def _middle_pair(buf, k):
    """The (k-1)-th and k-th smallest values of a float32 `buf` (the first is the k-th
    when k is 0); reorders `buf`.

    Comparison-based selection mispredicts a branch on about every other comparison of
    noisy data. Counting does not: a histogram of each value's sign, exponent and top 3
    mantissa bits (taken in float order) finds the bucket holding position k, and only
    that bucket, a few percent of the values, goes through selection.
    """
    n = buf.size
    if n < 2048:  # below this the histogram's fixed cost exceeds the selection's
        return _kth_pair(buf, k)
    bits = buf.view(np.int32)
    counts = np.zeros(4096, dtype=np.int64)
    for i in range(n):
        counts[_bucket(bits[i])] += 1
    bucket = 0
    before = 0
    while before + counts[bucket] <= k:
        before += counts[bucket]
        bucket += 1
    members = np.empty(counts[bucket], dtype=buf.dtype)
    m = 0
    for i in range(n):
        if _bucket(bits[i]) == bucket:
            members[m] = buf[i]
            m += 1
    local = k - before
    upper = _kth(members, local)
    lower = upper
    if local > 0:  # the (k-1)-th is the largest of those before, in this bucket
        lower = members[0]
        for i in range(1, local):
            lower = max(lower, members[i])
    elif k > 0:  # ... or in the buckets below
        found = False
        for i in range(n):
            if _bucket(bits[i]) < bucket and (not found or buf[i] > lower):
                lower = buf[i]
                found = True
    return lower, upper


@_jit
def _bucket(bits):
    """Histogram bucket (0..4095) of a float32's bits, in the floats' order."""
    # Negative floats order backwards as integers: flip all but the sign bit of theirs.
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key >> 20) + 2048


@_jit
def _sample_step(size):
    """Stride of the evenly thinned sample a noise estimate is taken from."""
    return max(1, size // _SAMPLE)


@_jit
def _half_sigmas(values):
    """Noise sigmas of `values` and of `-values`, each from its own side at or below zero
    (the values <= 0, and the values >= 0 negated).

    Ink only ever adds positive values, so the negative half of an ink signal is pure
    paper noise however much of the image the digit covers; its median magnitude is
    0.6745 sigma. Zeros count on both sides (a clean synthetic paper has no noise at
    all); a side of fewer than 16 values gives 0.
    """
    return half_sigma(values), _side_sigma(*_below_zero(values, F32(-1.0)))


@_jit
def half_sigma(values):
    """Noise sigma from the values at or below zero only (the paper side of an ink signal)."""
    return _side_sigma(*_below_zero(values, F32(1.0)))


@_jit
def _below_zero(values, sign):
    """(magnitudes of the sampled sign*values below zero, how many sampled ones are zero).

    Branch-free (write always, advance by the comparison): the sign of noise is a coin
    toss, which a branch would mispredict half the time.
    """
    flat = values.ravel()
    step = _sample_step(flat.size)
    magnitudes = np.empty((flat.size + step - 1) // step, dtype=flat.dtype)
    n = 0
    zeros = 0
    for i in range(0, flat.size, step):
        v = flat[i] * sign
        magnitudes[n] = -v
        n += v < 0
        zeros += v == 0
    return magnitudes[:n], zeros


@_jit
def _side_sigma(magnitudes, zeros):
    """Sigma from the median magnitude of one side of zero (0 when it has < 16 values)."""
    if magnitudes.size + zeros < 16:
        return 0.0
    return float(_median_with_zeros(magnitudes, zeros) / _MAD_TO_SIGMA)


# ------------------------------------------------------------------- decoding, blur


# Byte value / 255 in float32, as numpy's `uint8_array / 255.0` gives it.
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


@_jit
def premultiplied_luma(rgba, premultiply):
    """Luma premultiplied by alpha, and alpha, in [0, 1], of an (h, w, 4) uint8 image.

    With `premultiply` the colour is premultiplied here, exactly as Pillow's RGBA ->
    RGBa conversion does it (in one pass instead of two); otherwise it already is.
    """
    h, w, _ = rgba.shape
    luma = np.empty((h, w), dtype=F32)
    alpha = np.empty((h, w), dtype=F32)
    kr, kg, kb = F32(0.299), F32(0.587), F32(0.114)
    for y in range(h):
        for x in range(w):
            r = np.int32(rgba[y, x, 0])
            g = np.int32(rgba[y, x, 1])
            b = np.int32(rgba[y, x, 2])
            a = np.int32(rgba[y, x, 3])
            if premultiply:
                r = _muldiv255(r, a)
                g = _muldiv255(g, a)
                b = _muldiv255(b, a)
            luma[y, x] = _UNIT[r] * kr + _UNIT[g] * kg + _UNIT[b] * kb
            alpha[y, x] = _UNIT[a]
    return luma, alpha


@_jit
def _muldiv255(value, alpha):
    """round(value * alpha / 255) in integers, as Pillow premultiplies."""
    t = value * alpha + 128
    return ((t >> 8) + t) >> 8


@_jit
def blur(a):
    """Separable [1, 2, 1] / 4 blur with edge replication: kills pixel noise, not strokes."""
    h, w = a.shape
    v = np.empty_like(a)
    for y in range(h):
        up = max(y - 1, 0)
        down = min(y + 1, h - 1)
        for x in range(w):
            v[y, x] = a[y, x] * _TWO + a[up, x] + a[down, x]
    out = np.empty_like(a)
    for y in range(h):
        for x in range(w):
            left = max(x - 1, 0)
            right = min(x + 1, w - 1)
            out[y, x] = (v[y, x] * _TWO + v[y, left] + v[y, right]) * _SIXTEENTH
    return out


# ------------------------------------------------------------------------ paper plane


@_jit
def _solve3(m, rhs):
    """Solve the 3x3 system m @ c = rhs by Gaussian elimination with partial pivoting."""
    a = m.copy()
    b = rhs.copy()
    for col in range(3):
        pivot = col
        for row in range(col + 1, 3):
            if abs(a[row, col]) > abs(a[pivot, col]):
                pivot = row
        if pivot != col:
            for k in range(3):
                t = a[col, k]
                a[col, k] = a[pivot, k]
                a[pivot, k] = t
            t = b[col]
            b[col] = b[pivot]
            b[pivot] = t
        for row in range(col + 1, 3):
            f = a[row, col] / a[col, col]
            for k in range(col, 3):
                a[row, k] -= f * a[col, k]
            b[row] -= f * b[col]
    c = np.empty(3)
    for row in range(2, -1, -1):
        s = b[row]
        for k in range(row + 1, 3):
            s -= a[row, k] * c[k]
        c[row] = s / a[row, row]
    return c


@_jit
def _det3(m):
    return (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
            - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))


@_jit
def paper_residual(gray, rows, cols, design, x_all, y_all):
    """`gray` minus the paper level, fitted as a plane a + b*x + c*y from samples, robustly.

    A plane handles tinted paper and the linear lighting gradient of a phone photo. The
    samples (`rows`, `cols`, with `design` rows (1, x, y)) lie in the outer band of the
    image, which is paper even when the digit fills most of a tightly cropped upload;
    iterative trimming (residuals within 2.5 robust sigmas) discards the strokes that do
    touch the border.
    """
    n = rows.size
    z = np.empty(n)
    for i in range(n):
        z[i] = gray[rows[i], cols[i]]
    coef = np.zeros(3)
    coef[0] = median(z.copy())
    resid = np.empty(n)
    dev = np.empty(n)
    inliers = np.zeros(n, dtype=np.bool_)
    previous = np.zeros(n, dtype=np.bool_)
    for round_ in range(3):
        for i in range(n):
            resid[i] = z[i] - (design[i, 0] * coef[0] + design[i, 1] * coef[1] + design[i, 2] * coef[2])
        med = median(resid.copy())
        for i in range(n):
            dev[i] = abs(resid[i] - med)
        sigma = max(1.4826 * median(dev.copy()), 1e-3)
        count = 0
        same = True
        for i in range(n):
            inliers[i] = dev[i] <= 2.5 * sigma
            count += inliers[i]
            same = same and inliers[i] == previous[i]
        # The same inliers as last round give the same fit again: nothing left to do.
        if round_ > 0 and same:
            break
        previous[:] = inliers
        if count < 8:
            break
        normal = np.zeros((3, 3))
        rhs = np.zeros(3)
        for i in range(n):
            if inliers[i]:
                for p in range(3):
                    rhs[p] += design[i, p] * z[i]
                    for q in range(3):
                        normal[p, q] += design[i, p] * design[i, q]
        if abs(_det3(normal)) < 1e-9:  # all inliers on a line: a flat level
            kept = np.empty(count)
            k = 0
            for i in range(n):
                if inliers[i]:
                    kept[k] = z[i]
                    k += 1
            coef[:] = 0.0
            coef[0] = median(kept)
            break
        coef = _solve3(normal, rhs)
    h, w = gray.shape
    out = np.empty((h, w), dtype=F32)
    for y in range(h):
        level_y = coef[0] + y_all[y] * coef[2]
        for x in range(w):
            out[y, x] = gray[y, x] - F32(level_y + x_all[x] * coef[1])
    return out


@_jit
def ink_polarity(residual, blurred):
    """(signal, blurred signal, its noise sigma): ink made positive, whichever it was.

    The side of the paper level with more significant mass is ink: dark ink on light
    paper makes the residual negative, light ink on a dark board positive. Each side's
    noise comes from the other side, which holds no ink.
    """
    sigma_light, sigma_dark = _half_sigmas(blurred)  # noise of blurred, of -blurred
    significant = F32(max(4.0 * min(sigma_light, sigma_dark), 0.05))
    dark = 0.0
    light = 0.0
    flat = blurred.ravel()
    zero = F32(0.0)
    for i in range(flat.size):
        v = flat[i]
        dark += max(-v - significant, zero)
        light += max(v - significant, zero)
    if dark >= light:
        return -residual, -blurred, sigma_dark
    return residual, blurred, sigma_light


# ------------------------------------------------------------------------- the digit

NO_DIGIT = 1  # status of isolate_digit when there is no usable ink


@_jit
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@_jit
def _label(mask):
    """Connected components (8-connectivity) of a boolean mask, in one pass.

    Returns (labels, number, n): `labels` holds a provisional label per mask pixel (-1
    elsewhere) and number[label] its component, 0..n-1 in order of each component's
    first pixel (row-major). Reading labels through `number` saves a relabelling pass.
    """
    h, w = mask.shape
    parent = np.empty(h * w, dtype=np.int32)
    labels = np.empty((h, w), dtype=np.int32)
    roots = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                labels[y, x] = -1
                continue
            label = -1
            for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
                ny = y + dy
                nx = x + dx
                if ny < 0 or nx < 0 or nx >= w:
                    continue
                other = labels[ny, nx]
                if other < 0:
                    continue
                other = _find(parent, other)
                if label < 0:
                    label = other
                elif other != label:
                    # Hook the larger root under the smaller: no cycles.
                    if other < label:
                        parent[label] = other
                        label = other
                    else:
                        parent[other] = label
            if label < 0:
                label = roots
                parent[label] = label
                roots += 1
            labels[y, x] = label
    # Number the roots 0..n-1 in order of first appearance (a root is its smallest label).
    number = np.empty(roots, dtype=np.int32)
    n = 0
    for r in range(roots):
        root = _find(parent, r)
        if root == r:
            number[r] = n
            n += 1
        else:
            number[r] = number[root]
    return labels, number, n


@_jit
def isolate_digit(signal, blurred, sigma, min_contrast, noise_sigmas, mask_fraction, core_fraction,
                  floor_fraction, keep_mass_fraction, min_extent_px, min_extent_fraction):
    """Ink signal (ink > 0) -> (status, ink in [0, 1] with specks removed, digit box).

    The ink is stretched so the stroke core is 1 and the paper 0 (the floor is above
    the paper noise). Connected components of the thresholded blurred ink with a
    meaningful share of the ink mass are the digit; light ones are kept only inside the
    digit's box (broken strokes), so a speck far away cannot stretch the box, and the
    dropped ones are erased with their anti-aliased fringe. Status NO_DIGIT: too faint,
    noise only, or too small to be a digit. The box is (y0, y1, x0, x1), ends exclusive.
    """
    h, w = signal.shape
    box = (0, 0, 0, 0)
    peak32 = blurred.max()
    peak = float(peak32)
    if peak < min_contrast or peak < noise_sigmas * sigma:
        return NO_DIGIT, np.empty((0, 0), dtype=F32), box
    mask_level = F32(max(mask_fraction * peak, 4.0 * sigma))
    core_level = F32(core_fraction * peak)
    stroke = np.empty(signal.size, dtype=signal.dtype)
    n_stroke = 0
    mask = np.empty((h, w), dtype=np.bool_)
    inked = np.empty(signal.size, dtype=np.int64)  # flat indices of the mask's pixels
    n_inked = 0
    for y in range(h):
        for x in range(w):
            b = blurred[y, x]
            mask[y, x] = b > mask_level
            if b > mask_level:
                inked[n_inked] = y * w + x
                n_inked += 1
            if b > core_level:  # not always inside the mask: 4 sigma may exceed it
                stroke[n_stroke] = signal[y, x]
                n_stroke += 1
    level = float(median32(stroke[:n_stroke])) if n_stroke else peak
    level = max(level, peak * core_fraction)
    # Pixel noise is ~2.7x the blurred sigma; keep it out of the picture.
    floor = max(floor_fraction * level, 2.5 * half_sigma(signal))
    floor32 = F32(floor)
    scale32 = F32(max(level - floor, 1e-6))

    ink = np.empty((h, w), dtype=F32)
    for y in range(h):  # every pixel, without branches (the box is not known yet)
        for x in range(w):
            ink[y, x] = min(max((signal[y, x] - floor32) / scale32, F32(0.0)), F32(1.0))
    labels, number, n = _label(mask)
    if n == 0:
        return NO_DIGIT, ink, box
    mass = np.zeros(n)
    y0 = np.full(n, h, dtype=np.int64)
    y1 = np.zeros(n, dtype=np.int64)
    x0 = np.full(n, w, dtype=np.int64)
    x1 = np.zeros(n, dtype=np.int64)
    for i in range(n_inked):
        y, x = divmod(inked[i], w)
        c = number[labels[y, x]]
        mass[c] += ink[y, x]
        y0[c] = min(y0[c], y)
        y1[c] = max(y1[c], y + 1)
        x0[c] = min(x0[c], x)
        x1[c] = max(x1[c], x + 1)
    keep = mass >= keep_mass_fraction * mass.max()
    by0, by1, bx0, bx1 = h, 0, w, 0
    for c in range(n):
        if keep[c]:
            by0 = min(by0, y0[c])
            by1 = max(by1, y1[c])
            bx0 = min(bx0, x0[c])
            bx1 = max(bx1, x1[c])
    dropped_any = False
    for c in range(n):
        keep[c] = keep[c] or (y0[c] >= by0 and y1[c] <= by1 and x0[c] >= bx0 and x1[c] <= bx1)
        dropped_any = dropped_any or not keep[c]
    box = (by0, by1, bx0, bx1)
    extent = max(by1 - by0, bx1 - bx0)
    if extent < max(min_extent_px, min_extent_fraction * max(h, w)):
        return NO_DIGIT, ink, box
    if dropped_any:
        # Erase each dropped speck with a 3x3 dilation (its anti-aliased fringe).
        erase = np.zeros((h, w), dtype=np.bool_)
        for y in range(h):
            for x in range(w):
                c = labels[y, x]
                if c >= 0 and not keep[number[c]]:
                    for yy in range(max(y - 1, 0), min(y + 2, h)):
                        for xx in range(max(x - 1, 0), min(x + 2, w)):
                            erase[yy, xx] = True
        for y in range(h):
            for x in range(w):
                if erase[y, x]:
                    ink[y, x] = 0.0
    return 0, ink, box


@_jit
def centre_of_mass(ink, y0, y1, x0, x1):
    """(total ink, centre of mass row, column) of ink[y0:y1, x0:x1], in crop coordinates."""
    total = 0.0
    moment_y = 0.0
    moment_x = 0.0
    for y in range(y0, y1):
        row = 0.0
        for x in range(x0, x1):
            v = float(ink[y, x])
            row += v
            moment_x += v * (x - x0)
        total += row
        moment_y += row * (y - y0)
    if total <= 0.0:
        return total, 0.0, 0.0
    return total, moment_y / total, moment_x / total


@_jit
def padded_crop(ink, y0, y1, x0, x1, top, left, bottom, right):
    """ink[y0:y1, x0:x1] inside a zero frame of the given widths (a new float32 array)."""
    out = np.zeros((top + (y1 - y0) + bottom, left + (x1 - x0) + right), dtype=F32)
    for y in range(y0, y1):
        for x in range(x0, x1):
            out[top + y - y0, left + x - x0] = ink[y, x]
    return out


@_jit
def _lanczos(x):
    """Pillow's Lanczos-3 window: sinc(x) * sinc(x / 3) on [-3, 3)."""
    if not (-3.0 <= x < 3.0):
        return 0.0
    return _sinc(x) * _sinc(x / 3.0)


@_jit
def _sinc(x):
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@_jit
def _lanczos_weights(in_size, in0, in1, out_size):
    """Per output pixel: first source pixel, tap count, normalised weights (Pillow's
    precompute_coeffs for the Lanczos filter, step for step)."""
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    first = np.empty(out_size, dtype=np.int64)
    count = np.empty(out_size, dtype=np.int64)
    weights = np.zeros((out_size, ksize))
    for xx in range(out_size):
        center = in0 + (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        total = 0.0
        for x in range(xmax):
            w = _lanczos((x + xmin - center + 0.5) * ss)
            weights[xx, x] = w
            total += w
        if total != 0.0:
            for x in range(xmax):
                weights[xx, x] /= total
        first[xx] = xmin
        count[xx] = max(xmax, 0)
    return first, count, weights


@_jit
def lanczos_resample(src, x0, y0, x1, y1, out_size):
    """The region (x0, y0)-(x1, y1) of a float32 image resampled to out_size x out_size
    with a Lanczos-3 filter that widens when shrinking (anti-aliased), computed as
    Pillow's `Image.resize(..., LANCZOS, box=...)` computes it for mode "F": the box
    corners in float32, weights and sums in float64, a horizontal pass over the rows the
    vertical pass needs, then the vertical pass."""
    h, w = src.shape
    xfirst, xcount, xweights = _lanczos_weights(w, float(F32(x0)), float(F32(x1)), out_size)
    yfirst, ycount, yweights = _lanczos_weights(h, float(F32(y0)), float(F32(y1)), out_size)
    row0 = yfirst[0]
    rows = yfirst[out_size - 1] + ycount[out_size - 1] - row0
    temp = np.empty((rows, out_size), dtype=F32)
    for r in range(rows):
        for xx in range(out_size):
            acc = 0.0
            for k in range(xcount[xx]):
                acc += src[row0 + r, xfirst[xx] + k] * xweights[xx, k]
            temp[r, xx] = acc
    out = np.empty((out_size, out_size), dtype=F32)
    for yy in range(out_size):
        for xx in range(out_size):
            acc = 0.0
            for k in range(ycount[yy]):
                acc += temp[yfirst[yy] - row0 + k, xx] * yweights[yy, k]
            out[yy, xx] = acc
    return out


@_jit
def normalised_frame(resampled):
    """(frame, peak): the resampled digit clipped to [0, 1] and scaled so its peak is 1.

    Values under 1e-3 of the peak are resampling ripples and become exactly 0, as
    MNIST's background is. The frame is all zeros when the peak is not positive.
    """
    h, w = resampled.shape
    frame = np.empty((h, w), dtype=F32)
    peak = F32(0.0)
    for y in range(h):
        for x in range(w):
            v = min(max(resampled[y, x], F32(0.0)), F32(1.0))
            frame[y, x] = v
            peak = max(peak, v)
    if peak <= 0:
        return frame, float(peak)
    ripple = F32(1e-3)
    for y in range(h):
        for x in range(w):
            v = frame[y, x] / peak
            frame[y, x] = v if v >= ripple else F32(0.0)
    return frame, float(peak)


@_jit
def stroke_width(frame):
    """Mean stroke width of a digit frame: 2 x ink area / perimeter of its > 0.5 mask."""
    h, w = frame.shape
    area = 0.0
    perimeter = 0
    for y in range(h):
        for x in range(w):
            area += frame[y, x]
            inside = frame[y, x] > 0.5
            # Edges against the pixel above and to the left, and against the zero
            # surround on the last row and column.
            up = frame[y - 1, x] > 0.5 if y > 0 else False
            left = frame[y, x - 1] > 0.5 if x > 0 else False
            perimeter += (inside != up) + (inside != left)
            if inside and y == h - 1:
                perimeter += 1
            if inside and x == w - 1:
                perimeter += 1
    return 2.0 * area / max(perimeter, 1)


@_jit
def alpha_colour(luma, alpha):
    """(number of opaque pixels, their typical colour, share of them far from it).

    `luma` is premultiplied by `alpha`; the colour of an opaque pixel is luma / alpha.
    Ink drawn with one brush has one colour; opaque paper holding a digit has a minority
    of pixels (the ink) far from its typical colour.
    """
    colour = np.empty(luma.size, dtype=luma.dtype)
    n = 0
    for y in range(luma.shape[0]):
        for x in range(luma.shape[1]):
            if alpha[y, x] > 0.5:
                colour[n] = luma[y, x] / alpha[y, x]
                n += 1
    if n == 0:
        return 0, 0.0, 0.0
    typical = median32(colour[:n])
    far = 0
    for i in range(n):
        far += abs(colour[i] - typical) > 0.25
    return n, float(typical), far / n
