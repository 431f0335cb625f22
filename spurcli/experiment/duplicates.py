"""Near-duplicate images: the same photo, a resized or re-encoded copy, or a crop sharing pixels.

    from spurcli.experiment.duplicates import Fingerprint, near_duplicate
    a, b = Fingerprint.of(Image.open("a.jpg")), Fingerprint.of(Image.open("b.png"))
    near_duplicate(a, b)     # None, or "same photo (dHash distance 3)" / "crop (NCC 0.97)"

Two checks, numpy, Pillow and scipy only (no `imagehash`):

- **whole image**: a 64-bit difference hash (dHash: the 9x8 greyscale thumbnail, one bit per
  horizontal neighbour pair, "is the left one brighter") within `DHASH_MAX_DISTANCE` bits, *and*
  16x16 colour thumbnails within `THUMB_MAX_MAD` mean absolute difference (0-255). dHash catches
  the same photo resized, re-encoded or slightly re-toned; the colour test keeps two images
  without structure (flat colours, whose dHash is all zeros) apart.
- **crop**: a global hash does not see a crop, so the smaller image is searched in the larger
  one at `WORK_SIDE` px (long side), at `SCALES` relative sizes (1 down to 1/4, steps of 6%, and the
  size it has if it was cut out without resizing),
  by normalised cross-correlation (NCC) of greyscale windows, computed with FFTs. A crop is a
  window with NCC >= `CROP_MIN_NCC` whose colours also match (`THUMB_MAX_MAD`) and whose
  template has structure (standard deviation >= `MIN_STD`). Two crops that overlap without either
  holding the other: each corner quarter of one is searched in the other (native scale, and at
  the other's width), which finds overlaps of at least half of each side.

What is not caught: mirrored or rotated copies, crops smaller than a quarter of the larger
image's width, overlaps of less than half a side, crops that were also strongly recoloured, and
two photos of the same scene taken apart (a feature-space check, like `curate`'s near-copy
filter, is the tool for those).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

DHASH_MAX_DISTANCE = 10  # of 64 bits
THUMB_MAX_MAD = 24.0  # mean absolute difference of 0-255 colour values
WORK_SIDE = 64  # the larger image's long side in the crop search
SCALES = tuple(float(s) for s in np.geomspace(1.0, 0.25, 24))  # crop width / larger width
CROP_MIN_NCC = 0.9
GREY = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma
MIN_STD = 4.0  # of a 0-255 greyscale template: below it, a window has no structure to match


@dataclass(frozen=True)
class Fingerprint:
    """What the checks need of one image."""

    dhash: np.ndarray  # (64,) bool
    thumb: np.ndarray  # (16, 16, 3) float, 0-255
    colour: np.ndarray  # (h, w, 3) float, the long side WORK_SIDE
    size: tuple[int, int]  # the file's (width, height)
    source: Image.Image  # the image, long side at most 4 x WORK_SIDE: what templates come from

    @classmethod
    def of(cls, image: Image.Image) -> Fingerprint:
        rgb = image.convert("RGB")
        grey = np.asarray(rgb.convert("L").resize((9, 8), Image.Resampling.BOX), np.float64)
        thumb = np.asarray(rgb.resize((16, 16), Image.Resampling.BOX), np.float64)
        w, h = rgb.size
        scale = WORK_SIDE / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        colour = np.asarray(rgb.resize(size, Image.Resampling.BOX), np.float64)
        source = rgb.copy()
        source.thumbnail((4 * WORK_SIDE, 4 * WORK_SIDE), Image.Resampling.BOX)
        return cls((grey[:, 1:] > grey[:, :-1]).ravel(), thumb, colour, (w, h), source)

    @property
    def grey(self) -> np.ndarray:
        return self.colour @ GREY


def dhash_distance(a: Fingerprint, b: Fingerprint) -> int:
    return int(np.count_nonzero(a.dhash != b.dhash))


def near_duplicate(a: Fingerprint, b: Fingerprint) -> str | None:
    """Why ``a`` and ``b`` are near-duplicates, or None (see the module docstring)."""
    distance = dhash_distance(a, b)
    mad = float(np.abs(a.thumb - b.thumb).mean())
    if distance <= DHASH_MAX_DISTANCE and mad <= THUMB_MAX_MAD:
        return f"same photo (dHash distance {distance} of 64)"
    for small, big in ((a, b), (b, a)):
        ncc = crop_match(small, big)
        if ncc is not None:
            return f"crop sharing pixels (NCC {ncc:.2f})"
    return None


QUARTERS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5))  # corner windows, half by half


def crop_match(small: Fingerprint, big: Fingerprint) -> float | None:
    """The NCC of ``small`` found in ``big`` if it counts as sharing pixels: ``small`` whole as
    a crop of ``big`` at any of `SCALES` (or its native scale), or one of its corner quarters
    at the native scale or at ``big``'s width (two crops of one photo that overlap by at least
    half of each side)."""
    from scipy.signal import fftconvolve

    grey_big = big.grey
    bh, bw = grey_big.shape
    sw, sh = small.size
    boxes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def found(template_image: Image.Image, tw: int, th: int) -> float | None:
        if tw < 8 or th < 8 or th > bh or tw > bw:
            return None
        template = np.asarray(template_image.resize((tw, th), Image.Resampling.BOX), np.float64)
        grey_t = template @ GREY
        centred = grey_t - grey_t.mean()
        if centred.std() < MIN_STD:
            return None  # no structure to match
        if (th, tw) not in boxes:
            box = np.ones((th, tw))
            boxes[(th, tw)] = (
                fftconvolve(grey_big, box, mode="valid"),
                fftconvolve(grey_big**2, box, mode="valid"),
            )
        s1, s2 = boxes[(th, tw)]
        numerator = fftconvolve(grey_big, centred[::-1, ::-1], mode="valid")
        variance = np.maximum(s2 - s1**2 / (th * tw), 1e-9)
        ncc = numerator / np.sqrt(variance * (centred**2).sum())
        y, x = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        value = float(ncc[y, x])
        if value < CROP_MIN_NCC:
            return None
        window = big.colour[y : y + th, x : x + tw]
        return value if float(np.abs(window - template).mean()) <= THUMB_MAX_MAD else None

    native = small.size[0] / big.size[0]  # a crop that was not resized: its exact scale
    for scale in sorted({*SCALES, native}, reverse=True):
        tw = round(scale * bw)
        value = found(small.source, tw, round(tw * sh / sw))
        if value is not None:
            return value
    src_w, src_h = small.source.size
    for scale in sorted({native, 1.0}, reverse=True):
        tw = round(scale * bw / 2)
        th = round(tw * sh / sw)
        for fx, fy in QUARTERS:
            left, top = round(fx * src_w), round(fy * src_h)
            quarter = small.source.crop((left, top, left + src_w // 2, top + src_h // 2))
            value = found(quarter, tw, th)
            if value is not None:
                return value
    return None
