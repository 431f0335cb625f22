"""Draws US flags waving on a sky: references for a flag quickstart, made by our own code.

    python examples/flag_world/draw_flags.py runs/flags         # ten flags, seeds 0-9, 128 px
    python examples/flag_world/draw_flags.py runs/flags -n 20 --size 64
    python examples/flag_world/draw_flags.py runs/front --side front   # every pole on the left

Spurious ImageNet's feature for class 557 "flagpole" is a US flag: ImageNet classifiers call a
flag a flagpole whether or not a pole is in view. The flag's design is public domain (a work
of the US government); every pixel here is drawn by this script, so the images need no photo
licence (CC0). Each flag has its own seed: sky, clouds, size, place, wave, light, side and
tilt, so no two images share pixels and held-out references are independent of trained ones.
Drawn at 512 px and scaled down, as a photo would be. How effnet-lite0/1/2 read them: README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128  # saved size
CANVAS = 512  # drawing size, before the scale-down
# The flag's official proportions and colours (Executive Order 10834; colours as usually given).
RED, WHITE, BLUE = (178, 34, 52), (255, 255, 255), (60, 59, 110)
FLY = 1.9  # length / height
SIDES = ("either", "front", "back")  # draw_flag's side: the seed's choice, pole left, pole right
UNION_HEIGHT, UNION_LENGTH, STAR = 7 / 13, 0.76 / 1.9, 0.0616  # as fractions of the height


def flat_flag(height: int) -> np.ndarray:
    """The flag, `height` px high and unwaved, as float RGB in [0, 1]: 13 stripes, 50 stars."""
    length = round(height * FLY)
    rows = np.arange(height)[:, None] * 13 // height
    pixels = np.where((rows % 2 == 0)[..., None], RED, WHITE) * np.ones((1, length, 1))
    union_h, union_l = round(height * UNION_HEIGHT), round(length * UNION_LENGTH)
    pixels[:union_h, :union_l] = BLUE
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    outer = height * STAR / 2
    for row in range(9):  # nine rows of stars, six and five in turn
        for k in range(6 if row % 2 == 0 else 5):
            cx, cy = union_l * (2 * k + 1 + row % 2) / 12, union_h * (row + 1) / 10
            points = []
            for j in range(10):  # the ten corners, outer and inner in turn, from the top
                angle = -np.pi / 2 + j * np.pi / 5
                r = outer if j % 2 == 0 else outer * 0.382
                points.append((cx + r * np.cos(angle), cy + r * np.sin(angle)))
            draw.polygon(points, fill=WHITE)
    return np.asarray(image, dtype=np.float64) / 255


def sky(rng: np.random.Generator) -> np.ndarray:
    """A blue sky, darker at the top, sometimes with soft clouds."""
    top = [rng.uniform(0.25, 0.5), rng.uniform(0.45, 0.7), rng.uniform(0.8, 1.0)]
    bottom = [rng.uniform(0.7, 0.9), rng.uniform(0.8, 0.95), rng.uniform(0.9, 1.0)]
    t = np.linspace(0, 1, CANVAS)[:, None, None]
    canvas = (np.array(top) * (1 - t) + np.array(bottom) * t) * np.ones((CANVAS, CANVAS, 3))
    if rng.random() < 0.6:
        blobs = Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8))
        clouds = np.asarray(blobs.resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)) / 255
        cover = np.clip((clouds - 0.55) * 2.5, 0, 1)[..., None] * rng.uniform(0.3, 0.8)
        canvas = canvas * (1 - cover) + cover
    return canvas


def draw_flag(seed: int, size: int = SIZE, side: str = "either") -> Image.Image:
    """One waving flag on a pole against the sky; everything about it follows from `seed`.

    `side` "front" draws the pole on the left (the union at the hoist, upper left, as the flag is
    usually shown), "back" the other side, "either" lets the seed choose; the rest of the image
    is the seed's whichever side is drawn."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    rng = np.random.default_rng(seed)
    canvas = sky(rng)
    horizon = tuple(int(c * 255) for c in canvas[-1, 0])  # fills the corners the tilt uncovers
    flag = flat_flag(int(CANVAS * rng.uniform(0.38, 0.6)))
    height, length = flag.shape[:2]
    # The wave: each column moves up or down, more so away from the pole, and is lit by its slope.
    amplitude = height * rng.uniform(0.03, 0.09)
    frequency = rng.uniform(1.2, 2.6) * 2 * np.pi / length
    phase = rng.uniform(0, 2 * np.pi)
    x = np.arange(length)
    away = x / length
    shift = amplitude * away * np.sin(frequency * x + phase)
    light = 1 + rng.uniform(0.15, 0.35) * np.cos(frequency * x + phase) * (0.3 + away)
    pole = int(CANVAS * rng.uniform(0.04, 0.2))
    left, top = pole + int(CANVAS * 0.015), int(CANVAS * rng.uniform(0.08, 0.35))
    for column in range(min(length, CANVAS - left)):
        y = (top + np.arange(height) + shift[column]).astype(int)
        inside = (y >= 0) & (y < CANVAS)
        canvas[y[inside], left + column] = np.clip(flag[inside, column] * light[column], 0, 1)
    image = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(3, int(CANVAS * 0.012))
    draw.rectangle(
        [pole, int(CANVAS * rng.uniform(0, 0.06)), pole + width, CANVAS], fill=(200, 200, 205)
    )
    draw.ellipse([pole - width, 0, pole + 2 * width, 3 * width], fill=(215, 190, 90))  # the finial
    seen_from_back = rng.random() < 0.5  # drawn whatever `side` says, so the tilt stays the seed's
    if side == "back" or (side == "either" and seen_from_back):  # pole on the right
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.rotate(rng.uniform(-6, 6), Image.Resampling.BICUBIC, fillcolor=horizon)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def draw_references(out: Path, n: int = 10, size: int = SIZE, side: str = "either") -> list[Path]:
    """us-flag-1.png ... us-flag-<n>.png (seeds 0..n-1) in `out`: the references."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"us-flag-{i + 1}.png" for i in range(n)]
    for seed, path in enumerate(paths):
        draw_flag(seed=seed, size=size, side=side).save(path, optimize=True)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for us-flag-1.png, us-flag-2.png, ...")
    parser.add_argument("-n", type=int, default=10, help="how many (seeds 0..n-1)")
    parser.add_argument("--size", type=int, default=SIZE, help="side in px")
    parser.add_argument(
        "--side", choices=SIDES, default="either", help="front: pole on the left (default: seed's)"
    )
    args = parser.parse_args()
    for path in draw_references(args.out, args.n, args.size, args.side):
        print(path)


if __name__ == "__main__":
    main()
