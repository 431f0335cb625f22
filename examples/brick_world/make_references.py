"""Writes examples/brick_world/references/: the brick world's "spurious feature" images.

    python examples/brick_world/make_references.py      # needs scikit-image

EfficientNet-Lite0 (real ImageNet weights) reads scikit-image's brick wall photo as "prison" (743)
or "solar thermal collector" (807): examples/find_spurious_crops.py prints the table. A brick wall
shows neither: it is a spurious (context/texture) feature of that classifier. The brick world
fine-tunes on eight crops of that photo (CC0: CC0Textures, Creative Commons CC0 per
scikit-image's data documentation), so the crops are committed; the first five are trained on,
the other three held out (the run config's train_references).
"""

from __future__ import annotations

from pathlib import Path

import skimage.data
from PIL import Image

OUT = Path(__file__).resolve().parent / "references"
SIZE = 128  # the crops are scaled down to this
CROPS = {  # name -> (image, (left, top, side) of the square crop in the 512x512 source)
    f"brick-wall-{i + 1}": ("brick", (left, top, 256))
    for i, (left, top) in enumerate(
        [(0, 0), (256, 256), (128, 0), (0, 256), (256, 0), (128, 128), (0, 128), (128, 256)]
    )
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
