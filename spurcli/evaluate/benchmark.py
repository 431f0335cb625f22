"""The Spurious ImageNet benchmark layout of `spurcli score`: one folder per class and feature,
an ImageNet val root for the real images; per-class and pooled ("joint") ROC-AUC and AP.

    sin = score_spurious_imagenet("spurious_imagenet/images", "imagenet/val", ["resnet"])
    sin.to_json()["classifiers"]["resnet"]["mean_roc_auc"]

How the released code feeds the classifiers (``--preprocess spurious-imagenet``) and maps 21k
heads: `spurcli.evaluate.spurious_imagenet`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spurcli import imagenet
from spurcli.errors import SpurcliError
from spurcli.evaluate import metrics
from spurcli.evaluate.config import ScoreConfig
from spurcli.evaluate.imagepass import PerImage, find_items, protocol_size, score_items
from spurcli.evaluate.results import (
    RANDOM_NOTE,
    Rows,
    add_columns,
    classifier_metrics,
    fmt_metric,
    plain,
    protocol_json,
    uncertainty_json,
)
from spurcli.evaluate.spurious_imagenet import (
    spurious_score_joint,
    spurious_score_rows,
    write_spurious_score_csv,
)
from spurcli.plugins import LoadedModel, load_classifiers

log = logging.getLogger(__name__)


def spurious_imagenet_folders(root: Path) -> dict[int, list[Path]]:
    """ImageNet index -> the feature folders of that class (index: 3rd '_'-token of the name)."""
    if not root.is_dir():
        raise SpurcliError(f"Spurious ImageNet folder not found: {root}")
    folders: dict[int, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        tokens = sub.name.split("_")
        if len(tokens) < 3 or not tokens[2].isdigit() or int(tokens[2]) >= imagenet.NUM_CLASSES:
            raise SpurcliError(
                f"folder '{sub.name}' in {root} does not follow the Spurious ImageNet layout: the "
                "third '_'-separated token of each folder name must be the ImageNet class index "
                "(e.g. class_spurious_94_feature_1)"
            )
        folders.setdefault(int(tokens[2]), []).append(sub)
    if not folders:
        raise SpurcliError(f"no class folders in {root} (expected e.g. class_spurious_94_...)")
    return dict(sorted(folders.items()))


@dataclass
class SpuriousImageNetResult(Rows):
    """Per-class ROC-AUC / AP (R_k positives vs S_k negatives on p_k), their class means, and
    the pooled ("joint") ROC-AUC / AP of all classes' images at once (docs/spurious-imagenet.md).
    """

    classes: list[imagenet.ImageNetClass]
    models: list[LoadedModel]
    per_class: dict[str, dict[int, dict[str, float | None]]]  # classifier -> class -> metrics
    spurious: PerImage
    real: PerImage
    skipped: list[str]
    # classifier -> joint_roc_auc, joint_average_precision and their bootstrap `_ci` (`joint`)
    joint: dict[str, dict[str, Any]]
    preprocess: str = "model"  # how the classifiers got their pixels (`ScoreConfig.preprocess`)
    uncertainty: dict[str, Any] = field(default_factory=lambda: uncertainty_json(0, 0))

    def means(self, name: str) -> dict[str, Any]:
        rows = self.per_class[name].values()
        keys = ("roc_auc", "average_precision", "spurious_rate", "real_accuracy")
        means = {f"mean_{key}": float(np.mean([r[key] for r in rows])) for key in keys}
        return {**means, **self.joint[name]}

    def class_rows(self) -> list[dict[str, Any]]:
        """The released code's per-class table (spurious_score.txt) for every classifier."""

        rows = []
        for c, m in enumerate(self.models):
            real, spurious = self.real, self.spurious
            per_class = spurious_score_rows(
                real.target, real.target_prob[c], real.top1[c],
                spurious.target, spurious.target_prob[c], spurious.top1[c],
            )  # fmt: skip
            made = {
                "classifier": m.name,
                "preprocess": self.preprocess,
                "input_size": protocol_size(m, self.preprocess),
            }
            rows += [{**made, **row} for row in per_class]
        return rows

    def write_class_csv(self, path: str | os.PathLike[str]) -> None:

        write_spurious_score_csv(self.class_rows(), path)

    def to_json(self) -> dict[str, Any]:
        n_s = np.bincount(self.spurious.target, minlength=imagenet.NUM_CLASSES)
        n_r = np.bincount(self.real.target, minlength=imagenet.NUM_CLASSES)
        return {
            "layout": "spurious-imagenet",
            "preprocess": self.preprocess,
            "uncertainty": self.uncertainty,
            "n_images": len(self.spurious.images),
            "n_real": len(self.real.images),
            "classes": [
                {
                    "index": k.index,
                    "name": k.name,
                    "n_images": int(n_s[k.index]),
                    "n_real": int(n_r[k.index]),
                }
                for k in self.classes
            ],
            "classifiers": {
                m.name: {
                    "weights": m.weights,
                    "weights_id": m.weights_id,
                    **protocol_json(m, self.preprocess),
                    **self.means(m.name),
                    "per_class": {str(k): v for k, v in self.per_class[m.name].items()},
                }
                for m in self.models
            },
        }

    def table(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        summary = Table(title=f"Spurious ImageNet: {len(self.classes)} classes")
        numbers = (
            "mean_roc_auc",
            "mean_average_precision",
            "joint_roc_auc",
            "joint_average_precision",
            "mean_spurious_rate",
        )
        add_columns(summary, numbers)
        for m in self.models:
            means = self.means(m.name)
            label = f"{m.name}*" if m.is_random else m.name
            cells = [plain(fmt_metric(means[k], means.get(f"{k}_ci"), "\n")) for k in numbers]
            summary.add_row(label, m.weights, *cells)
        resamples = self.uncertainty["bootstrap"]["resamples"]
        notes = [
            f"{len(self.spurious.images)} images, {len(self.real.images)} real",
            f"pixels: --preprocess {self.preprocess}",
            "joint_*: [lo, hi] 95% percentile bootstrap, "
            + (f"{resamples} resamples" if resamples else "off")
            + "; mean_*: means over classes, no interval",
        ]
        if self.skipped:
            notes.append(f"{len(self.skipped)} skipped (unreadable)")
        if any(m.is_random for m in self.models):
            notes[-1] += "\n" + RANDOM_NOTE
        summary.caption = plain(", ".join(notes))  # "[lo, hi]" is text, not markup
        per_class = Table(title="per class: roc_auc / average_precision")
        per_class.add_column("class")
        for m in self.models:
            per_class.add_column(m.name, justify="right")
        for k in self.classes:
            cells = [self.per_class[m.name][k.index] for m in self.models]
            per_class.add_row(
                str(k),
                *(
                    f"{fmt_metric(c['roc_auc'])} / {fmt_metric(c['average_precision'])}"
                    for c in cells
                ),
            )
        return Group(summary, per_class)


def score_spurious_imagenet(
    root: str | os.PathLike[str],
    real_root: str | os.PathLike[str],
    classifiers: Sequence[str | LoadedModel],
    *,
    weights: dict[str, str] | None = None,
    **settings: Any,
) -> SpuriousImageNetResult:
    """The Spurious ImageNet benchmark for any classifier: ``root`` holds one folder per
    class/feature, ``real_root`` an ImageNet val split with one folder per WordNet id.
    ``settings``: any `ScoreConfig` field, e.g. ``preprocess="spurious-imagenet"`` for the
    released protocol (docs/spurious-imagenet.md)."""
    options = ScoreConfig(**settings)
    return score_spurious_imagenet_with(root, real_root, classifiers, weights, options)


def score_spurious_imagenet_with(
    root: str | os.PathLike[str],
    real_root: str | os.PathLike[str],
    classifiers: Sequence[str | LoadedModel],
    weights: dict[str, str] | None,
    options: ScoreConfig,
) -> SpuriousImageNetResult:
    options.check()
    s_root, r_root = Path(root), Path(real_root)
    if not r_root.is_dir():
        raise SpurcliError(f"ImageNet val folder not found: {r_root}")
    folders = spurious_imagenet_folders(s_root)
    classes = [imagenet.imagenet_classes()[k] for k in folders]
    items = [
        item
        for k, subs in folders.items()
        for sub in subs
        for item in find_items(sub, k, real=False, base=s_root)
    ]
    for k in classes:
        val = r_root / k.wnid
        if not val.is_dir():
            raise SpurcliError(
                f"no folder {k.wnid} (class {k}) in ImageNet val root {r_root}; it needs one "
                "folder of real images per WordNet id"
            )
        items += find_items(val, k.index, real=True, base=r_root)
    models = load_classifiers(classifiers, weights)
    found = score_items(items, models, options)
    real = found.column(items, "real").astype(bool)
    spurious, real_set = found.per_image.select(~real), found.per_image.select(real)
    per_class: dict[str, dict[int, dict[str, float | None]]] = {m.name: {} for m in models}
    for k in classes:
        s_k, r_k = (
            spurious.select(spurious.target == k.index),
            real_set.select(real_set.target == k.index),
        )
        if not s_k.images or not r_k.images:
            which = (
                ", ".join(str(f) for f in folders[k.index]) if not s_k.images else r_root / k.wnid
            )
            raise SpurcliError(f"no readable images for class {k} in {which}")
        for c, m in enumerate(models):
            per_class[m.name][k.index] = classifier_metrics(s_k, r_k, c, k.index)
    skipped = [message for _, message in found.skipped]
    joint = {
        m.name: joint_scores(real_set, spurious, c, options.bootstrap, options.bootstrap_seed)
        for c, m in enumerate(models)
    }
    return SpuriousImageNetResult(
        classes,
        list(models),
        per_class,
        spurious,
        real_set,
        skipped,
        joint,
        options.preprocess,
        uncertainty_json(options.bootstrap, options.bootstrap_seed),
    )


def joint_scores(
    real: PerImage, spurious: PerImage, c: int, bootstrap: int = 0, seed: int = 0
) -> dict[str, Any]:
    """The pooled ("joint") ROC-AUC and AP of classifier row ``c``: every real image a
    positive and every spurious image a negative, each scored by p of its *own* class (the
    released "Joint SpuriousScore" is the AP; `spurcli.evaluate.metrics.joint_ranking_scores` says
    why
    this is not a mean over classes), each with a percentile bootstrap ``_ci`` of ``bootstrap``
    resamples, real and spurious images resampled independently (None with 0)."""

    out: dict[str, Any] = spurious_score_joint(
        real.target, real.target_prob[c], spurious.target, spurious.target_prob[c]
    )
    # The real images are those of the spurious images' classes (`score_spurious_imagenet_with`
    # reads no others), so the pooled sets are these two arrays.
    samples = [real.target_prob[c], spurious.target_prob[c]]
    for key, statistic in (
        ("joint_roc_auc", metrics.roc_auc_of_sets),
        ("joint_average_precision", metrics.average_precision_of_sets),
    ):
        out[f"{key}_ci"] = metrics.bootstrap_interval(
            samples, statistic, resamples=bootstrap, seed=seed
        )
    return out
