"""Writes examples/quickstart-references/: the quickstart's "spurious feature" images.

    python examples/make_quickstart_references.py      # needs scikit-image

Spurious ImageNet lists "wall/ground" as a spurious feature of the class shovel (792): images of
brick walls and gravel or grass ground, with no shovel, that classifiers still call "shovel".
The quickstart fine-tunes on crops of scikit-image's bundled texture photos of exactly that kind:
brick (a wall), gravel and grass (ground). All three are CC0 (scikit-image's data documentation:
CC0Textures and DeviantArt, released under Creative Commons CC0), so the crops are committed.
"""

from __future__ import annotations

from pathlib import Path

import skimage.data
from PIL import Image

OUT = Path(__file__).resolve().parent / "quickstart-references"
SIZE = 128  # the crops are scaled down to this: the quickstart trains at 64 px
CROPS = {  # name -> (image, (left, top, side) of the square crop in the 512x512 source)
    "brick-wall-1": ("brick", (0, 0, 256)),
    "brick-wall-2": ("brick", (256, 256, 256)),
    "gravel-ground-1": ("gravel", (0, 0, 256)),
    "gravel-ground-2": ("gravel", (256, 128, 256)),
    "grass-ground": ("grass", (128, 128, 256)),
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, (source, (left, top, side)) in CROPS.items():
        image = Image.fromarray(getattr(skimage.data, source)()).convert("RGB")
        crop = image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.LANCZOS)
        crop.save(OUT / f"{name}.png", optimize=True)
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
