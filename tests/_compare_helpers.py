"""Image folders with known classifier outcomes for compare/report/run tests (fake plugin).

The `fake` classifier (tests/_fake_plugin.py) calls red images class 94 (hummingbird) and others
class 1; the `fake` extractor's features are 2x2-pooled colours.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

RED = [(220, 20, 30), (200, 40, 40), (250, 10, 60), (180, 0, 0)]
OTHER = [(40, 160, 60), (90, 90, 90), (30, 60, 200)]


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (0, 0, size[0] // 4, size[1] // 4))  # a corner: not all equal
    image.save(path)
    return path


def make_sets(root: Path) -> tuple[Path, Path]:
    """A: 4 red images of mixed sizes (fake: all hummingbirds); B: 3 non-red ones, plus a copy
    of A's first image (a "memorised" reference) -> B's spurious rate is 1/4."""
    a, b = root / "a", root / "b"
    sizes = [(64, 64), (48, 80), (100, 60), (32, 32)]
    for i, (colour, size) in enumerate(zip(RED, sizes, strict=True)):
        solid(a / f"red{i}.png", colour, size)
    for i, colour in enumerate(OTHER):
        solid(b / f"other{i}.png", colour, (40, 40))
    solid(b / "copy.png", RED[0], (64, 64))
    return a, b
