"""How do effnet-lite0, -lite1 and -lite2 read the brick world's eight brick-wall references?

    HF_HUB_OFFLINE=1 python examples/effnet_lite_readings.py
    HF_HUB_OFFLINE=1 python examples/effnet_lite_readings.py --classifiers effnet-lite1 --target 807

effnet-lite0 puts every crop in class 807, "solar thermal collector"
(examples/brick_world/README.md), which makes it the brick world's judge. Lite1 and Lite2 are
separately trained networks, so they could judge a brick-world run independently of Lite0 (the
SFSL extractor) only if they read the same crops as 807 too. For each classifier and reference
this prints the top-1 class, p(807) and 807's rank, measured exactly as `spurcli score` measures
them (the same image pass: central square at 384 px, then each model's own eval transform), on
CPU with the bundled weights: no download, a few seconds. The table and what it decides:
docs/reference.md, effnet-lite."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spurcli import console
from spurcli.evaluate.config import ImagePass
from spurcli.evaluate.imagepass import OUTSIDE_1K, find_items, score_items
from spurcli.imagenet import resolve_class
from spurcli.plugins import load_classifiers

REFERENCES = Path(__file__).resolve().parent / "brick_world" / "references"
CLASSIFIERS = ("effnet-lite0", "effnet-lite1", "effnet-lite2")
SOLAR_THERMAL_COLLECTOR = 807


def class_name(index: int) -> str:
    """An ImageNet-1k name; a 21k head's finer classes come back from the pass as -1."""
    return resolve_class(index).name if index >= 0 else OUTSIDE_1K


def row(first: str, cells: list[str], width: int) -> str:
    """One line of the table: a first column, then left-aligned cells of one width."""
    return (f"{first:<18}" + "".join(f"{cell:<{width}}" for cell in cells)).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=Path, default=REFERENCES, help="image folder")
    parser.add_argument("--classifiers", default=",".join(CLASSIFIERS), help="comma-separated")
    parser.add_argument("--target", type=int, default=SOLAR_THERMAL_COLLECTOR, help="class index")
    args = parser.parse_args()

    names = [name.strip() for name in args.classifiers.split(",") if name.strip()]
    console.configure(quiet=True)  # a progress bar would land in the middle of the table
    target = resolve_class(args.target)
    models = load_classifiers(names)
    items = find_items(args.references, target=target.index, real=False)
    found = score_items(items, models, ImagePass(device="cpu", num_workers=0)).per_image

    print(f"top-1 class, p({target.index} {target.name}) and its rank #, as `spurcli score`")
    width = max(len(class_name(int(i))) for i in found.top1.ravel()) + 13
    print(row("image", names, width))
    for column, image in enumerate(found.images):
        cells = [
            f"{class_name(int(found.top1[model, column]))} {found.target_prob[model, column]:.3f}"
            f" #{found.target_rank[model, column]}"
            for model in range(len(names))
        ]
        print(row(image, cells, width))
    hits = (found.top1 == target.index).sum(axis=1)
    means = np.mean(found.target_prob, axis=1)
    pairs = zip(hits, means, strict=True)
    summary = [f"{hit}/{len(found.images)} mean {mean:.3f}" for hit, mean in pairs]
    print(row(f"read as {target.index}", summary, width))


if __name__ == "__main__":
    main()
