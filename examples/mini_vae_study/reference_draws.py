"""Could crop_bank (seed 0, 2048 crops) have drawn one of the 8 brick-world references exactly?

    python examples/mini_vae_study/reference_draws.py

Replays crop_bank's random draws (they do not depend on the output size) and lists the brick
crops whose (side, left, top, flip) match a reference (side 256 at a multiple of 128, no flip),
plus the nearest ones. An exact match at bank_size 128 would be the reference pixel for pixel.
"""

import numpy as np

from spurcli.generate.mini import PHOTOS

REFS = [(0, 0), (256, 256), (128, 0), (0, 256), (256, 0), (128, 128), (0, 128), (128, 256)]
names = sorted(PHOTOS)
rng = np.random.default_rng(0)
near = []
for i in range(2048):
    name = names[i % len(names)]
    w = h = 512 if name == "brick" else None
    if name != "brick":  # same draws as crop_bank, sizes of the other photos needed
        import skimage.data

        shape = getattr(skimage.data, name)().shape
        h, w = shape[0], shape[1]
    short = min(w, h)
    side = int(rng.integers(short // 4, 2 * short // 3 + 1))
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    flip = rng.random() < 0.5
    if name == "brick":
        d = min(abs(side - 256) + abs(left - a) + abs(top - b) for a, b in REFS)
        near.append((d, side, left, top, flip))
near.sort()
print(
    f"brick crops in the bank: {len(near)}; exact reference draws: "
    f"{sum(1 for n in near if n[0] == 0 and not n[4])}"
)
print("nearest (L1 distance in side+left+top px, side, left, top, flipped):", near[:3])
