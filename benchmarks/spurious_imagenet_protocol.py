"""How much the Spurious ImageNet protocol (`--preprocess spurious-imagenet`) changes the numbers.

    HF_HUB_OFFLINE=1 python benchmarks/spurious_imagenet_protocol.py [--out DIR]

Builds a small Spurious ImageNet tree from scikit-image's CC0 photos (offline): class 807 "solar
thermal collector" with brick-wall crops as its spurious images (effnet-lite0 really puts brick
walls there) and coffee/chelsea as its "val" images, class 94 "hummingbird" with grass crops and
rocket/astronaut. A stand-in for the real data (which needs ImageNet val), so the figures show
the size of the protocol's effect on real classifiers, not benchmark results. It scores the tree
with each classifier under both protocols (`model`: each model's own eval transform on spurcli's
384-px centre square; `spurious-imagenet`: the released code's bicubic resize, 256/224 crop for
val, shorter side only for spurious images, then the model's normalisation) and prints, per
classifier and its weights, the mean and joint AP of both (the joint AP with its bootstrap
interval), the set sizes, and the mean / largest change of p_k per image.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSIFIERS = ["effnet-lite0", "timm:test_resnet", "timm:test_vit", "timm:test_efficientnet"]
RANDOM = {"timm:test_resnet", "timm:test_vit", "timm:test_efficientnet"}


def build_tree(root: Path) -> tuple[Path, Path]:
    import skimage.data

    from spurcli import imagenet

    sin, val = root / "sin", root / "val"
    # Square crops of different sizes, as the protocol expects (it does not crop them; the
    # released loader batches them, so they share one shape there).
    crops = {
        807: ("brick", [(0, 0, 300, 300), (100, 50, 400, 350), (12, 12, 512, 512)]),
        94: ("grass", [(0, 0, 256, 256), (100, 100, 400, 400), (0, 0, 512, 512)]),
    }
    photos = {807: ("coffee", "chelsea"), 94: ("rocket", "astronaut")}
    for k, (name, boxes) in crops.items():
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        folder = sin / f"class_spurious_{k}_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, box in enumerate(boxes):
            photo.crop(box).save(folder / f"{i}.png")
        wnid = imagenet.imagenet_classes()[k].wnid
        (val / wnid).mkdir(parents=True, exist_ok=True)
        for photo_name in photos[k]:
            Image.fromarray(getattr(skimage.data, photo_name)()).convert("RGB").save(
                val / wnid / f"{photo_name}.png"
            )
    return sin, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the tree here (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spurcli.evaluate.config import ScoreConfig
    from spurcli.evaluate.score import fmt_metric, score
    from spurcli.plugins import load_classifiers

    root = args.out or Path(tempfile.mkdtemp(prefix="sin-protocol-"))
    sin, val = build_tree(root)
    weights = {name: "random" for name in CLASSIFIERS if name in RANDOM}
    models = load_classifiers(CLASSIFIERS, weights)
    results = {}
    for preprocess in ("model", "spurious-imagenet"):
        cfg = ScoreConfig(
            classifiers=[], layout="spurious-imagenet", real=val, preprocess=preprocess
        )
        cfg.classifiers = models  # type: ignore[assignment]  # loaded once for both protocols
        results[preprocess] = score(cfg, sin)
    own, released = results["model"], results["spurious-imagenet"]
    n_s, n_r = len(own.spurious.images), len(own.real.images)
    print(f"Spurious ImageNet protocol vs each model's own transform ({root})")
    print(
        f"{n_s} spurious + {n_r} val images, {len(own.classes)} classes; columns: model -> "
        "spurious-imagenet; joint AP with its 95% percentile bootstrap interval (1000 "
        "resamples); mean AP / ROC-AUC: means over the classes (no interval); dp: change of "
        "p_k per image"
    )
    print(
        f"{'classifier':<24} {'weights':<40} {'mean AP':>15} {'joint AP [95% CI]':>44} "
        f"{'mean AUC':>15} {'mean |dp|':>10} {'max |dp|':>9}"
    )
    for c, m in enumerate(models):
        a, b = own.means(m.name), released.means(m.name)
        dp = np.abs(
            np.r_[own.real.target_prob[c], own.spurious.target_prob[c]]
            - np.r_[released.real.target_prob[c], released.spurious.target_prob[c]]
        )
        label = m.name + ("*" if m.is_random else "")
        joint = " -> ".join(
            fmt_metric(r["joint_average_precision"], r["joint_average_precision_ci"])
            for r in (a, b)
        )
        mean_ap = f"{a['mean_average_precision']:.3f} -> {b['mean_average_precision']:.3f}"
        mean_auc = f"{a['mean_roc_auc']:.3f} -> {b['mean_roc_auc']:.3f}"
        print(
            f"{label:<24} {m.weights:<40} {mean_ap:>15} {joint:>44} {mean_auc:>15} "
            f"{dp.mean():>10.2e} {dp.max():>9.2e}"
        )
    print("* random weights (timm test_* architectures): shows the mechanics, not a classifier")


if __name__ == "__main__":
    main()
