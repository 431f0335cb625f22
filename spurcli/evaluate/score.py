"""`spurcli score`: how spurious a set of images is, per classifier and across classifiers.

    from spurcli.plugins import load_classifiers
    from spurcli.evaluate.score import score_images, score_spurious_imagenet
    result = score_images("samples/", target="hummingbird", classifiers=["resnet", "clip"],
                          real_dir="val/n01833805", weights={"resnet": "random"})
    result.to_json()              # {"target": {...}, "n_images": .., "classifiers": {..}, ..}
    result.write_csv("rows.csv")  # image,classifier,top1_index,top1_name,target_prob,target_rank
    result.skipped                # ["bad.png: not an image Pillow can read", ...]

    # Load once, score several folders:
    models = load_classifiers(["resnet", "clip"], weights={"resnet": "ckpt.safetensors"})
    a = score_images("run_a/", target=94, classifiers=models)
    b = score_images("run_b/", target=94, classifiers=models)
    # ... or in one pass, with feature extractors' features of each folder (what `compare` does):
    from spurcli.plugins import load_extractors
    from spurcli.evaluate.score import score_folders
    [robust] = load_extractors(["robust-resnet50"])
    a, b = score_folders(["run_a/", "run_b/"], 94, models, extractors=[robust])
    a.features["robust-resnet50"]  # (a.n_images, 2048), rows as a.spurious.images

    # The Spurious ImageNet benchmark (one folder per class/feature + an ImageNet val root):
    sin = score_spurious_imagenet("spurious_imagenet/images", "imagenet/val", ["resnet"])
    sin.to_json()["classifiers"]["resnet"]["mean_roc_auc"]

The images go through `spurcli.evaluate.imagepass` (decoded once for every classifier, sharded over
processes; how and why is told there); the metric definitions live in `spurcli.evaluate.metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spurcli import imagenet
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate import metrics
from spurcli.evaluate.config import ImagePass, ScoreConfig
from spurcli.evaluate.imagepass import PerImage, find_items, protocol_size, score_items
from spurcli.plugins import LoadedModel, load_classifiers, parse_weights
from spurcli.text import rich_text

METRICS = (
    "spurious_rate",
    "top5_rate",
    "mean_target_prob",
    "median_target_prob",
    "roc_auc",
    "average_precision",
    "real_accuracy",
)


# ---------------------------------------------------------------------------------------------
# Metrics and results


def _metrics(
    spurious: PerImage,
    real: PerImage | None,
    c: int,
    k: int,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The seven numbers for classifier row ``c`` and target class ``k``, each followed
    by its 95% interval ``<metric>_ci``: Wilson for the rates, a percentile bootstrap of
    ``bootstrap`` seeded resamples for the others (None with 0; see docs/statistics.md)."""
    probs = spurious.target_prob[c]
    hits, top5 = spurious.top1[c] == k, spurious.target_rank[c] <= 5

    def resampled(samples: list[np.ndarray], statistic: Any) -> list[float] | None:
        return metrics.bootstrap_interval(samples, statistic, resamples=bootstrap, seed=seed)

    out: dict[str, Any] = {
        "spurious_rate": float(np.mean(hits)),
        "spurious_rate_ci": metrics.rate_interval(hits),
        "top5_rate": float(np.mean(top5)),
        "top5_rate_ci": metrics.rate_interval(top5),
        "mean_target_prob": float(np.mean(probs)),
        "mean_target_prob_ci": resampled([probs], np.mean),
        "median_target_prob": float(np.median(probs)),
        "median_target_prob_ci": resampled([probs], np.median),
        "roc_auc": None,
        "roc_auc_ci": None,
        "average_precision": None,
        "average_precision_ci": None,
        "real_accuracy": None,
        "real_accuracy_ci": None,
    }
    if real is not None:
        # Real and scored images resampled each within itself: a stratified bootstrap.
        samples = [real.target_prob[c], probs]
        out["roc_auc"] = metrics.roc_auc_of_sets(*samples)
        out["roc_auc_ci"] = resampled(samples, metrics.roc_auc_of_sets)
        out["average_precision"] = metrics.average_precision_of_sets(*samples)
        out["average_precision_ci"] = resampled(samples, metrics.average_precision_of_sets)
        out["real_accuracy"] = float(np.mean(real.top1[c] == k))
        out["real_accuracy_ci"] = metrics.rate_interval(real.top1[c] == k)
    return out


def uncertainty_json(bootstrap: int, seed: int) -> dict[str, Any]:
    """How the ``_ci`` intervals of a score JSON were made (and how to make them again)."""
    return {
        "confidence": metrics.CONFIDENCE,
        "rates": "Wilson score",
        "bootstrap": {
            "method": "percentile; real and scored images resampled independently",
            "resamples": bootstrap,
            "seed": seed,
        },
    }


def fmt_metric(value: float | None, ci: Sequence[float] | None = None, sep: str = " ") -> str:
    """``0.250``, or with its interval ``0.250 [0.102, 0.495]`` (``sep`` between them); ``-``
    for no value. In a rich table pass it through `plain`: brackets would be read as markup."""
    if value is None:
        return "-"
    return f"{value:.3f}" if ci is None else f"{value:.3f}{sep}[{ci[0]:.3f}, {ci[1]:.3f}]"


def plain(text: str) -> Any:
    """A rich Text that is never markup: "[0.102, 0.495]" and "[lo, hi]" show as they are."""
    from rich.text import Text

    return Text(text)


def _add_columns(table: Any, numbers: Sequence[str]) -> None:
    # Narrow terminals fold cells and headers rather than cutting the metric names off.
    table.add_column("classifier", overflow="fold")
    table.add_column("weights", overflow="fold", max_width=48)
    for name in numbers:
        table.add_column(name, justify="right", overflow="fold", min_width=5)


BOOTSTRAP = 1000  # default resamples of the bootstrap intervals


RANDOM_NOTE = "* random weights: these numbers describe an untrained model, not the classifier"


class _Rows:
    """The per-image output both results share: rows of the scored (not the real) images."""

    spurious: PerImage

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per scored image and classifier (the CSV rows), image-major."""
        return list(self.spurious.iter_rows())

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        self.spurious.write_csv(path)


@dataclass
class ScoreResult(_Rows):
    """Everything `spurcli score` reports for one folder and target class."""

    target: imagenet.ImageNetClass
    models: list[LoadedModel]
    scores: dict[str, dict[str, float | None]]  # classifier -> the seven metrics
    consensus: metrics.Consensus
    spurious: PerImage  # per-image numbers of the scored images S
    real: PerImage | None  # per-image numbers of the real images R (None without --real)
    skipped: list[str]  # "path: reason" for every file that could not be read
    # extractor -> (n_images, D) float32 features of S, rows as `spurious.images`
    # (`score_folders(..., extractors=...)`; empty otherwise)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=lambda: uncertainty_json(0, 0))
    preprocess: str = "model"  # how the classifiers got their pixels (`ScoreConfig.preprocess`)

    @property
    def n_images(self) -> int:
        return len(self.spurious.images)

    @property
    def n_real(self) -> int | None:
        return None if self.real is None else len(self.real.images)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": {"index": self.target.index, "name": self.target.name},
            "n_images": self.n_images,
            "n_real": self.n_real,
            "classifiers": {
                m.name: {
                    "weights": m.weights,
                    "weights_id": m.weights_id,
                    **_protocol_json(m, self.preprocess),
                    **self.scores[m.name],
                }
                for m in self.models
            },
            "consensus": self.consensus.to_json(),
            "uncertainty": self.uncertainty,
            "preprocess": self.preprocess,
        }

    def table(self) -> Any:
        """A rich Table: one row per classifier, the consensus and counts in the caption."""
        from rich.table import Table

        table = Table(title=f"spurcli score: target {self.target.index} {self.target.name}")
        _add_columns(table, METRICS)
        for m in self.models:
            label = rich_text(f"{m.name}*" if m.is_random else m.name)
            row = self.scores[m.name]
            # The interval on a second line: seven one-line cells would not fit a terminal.
            cells = [plain(fmt_metric(row[k], row.get(f"{k}_ci"), "\n")) for k in METRICS]
            table.add_row(label, rich_text(m.weights), *cells)
        c = self.consensus
        resamples = self.uncertainty["bootstrap"]["resamples"]
        lines = [
            f"consensus over {len(self.models)} classifiers: all "
            f"{fmt_metric(c.all, c.all_ci)}, any {fmt_metric(c.any, c.any_ci)}, "
            f"histogram {c.histogram} (images put in the class by 0..{len(self.models)})",
            "[lo, hi]: 95% intervals (rates: Wilson; others: percentile bootstrap, "
            + (
                f"{resamples} resamples, seed {self.uncertainty['bootstrap']['seed']})"
                if resamples
                else "off)"
            ),
            f"{self.n_images} images"
            + (f", {self.n_real} real" if self.n_real is not None else ", no --real")
            + (f", {len(self.skipped)} skipped (unreadable)" if self.skipped else "")
            + (f"; pixels: --preprocess {self.preprocess}" if self.preprocess != "model" else ""),
        ]
        if any(m.is_random for m in self.models):
            lines.append(RANDOM_NOTE)
        table.caption = plain("\n".join(lines))
        return table


def _protocol_json(model: LoadedModel, preprocess: str) -> dict[str, Any]:
    """Under a scoring protocol, the side each classifier was fed at (timm's test size)."""
    size = protocol_size(model, preprocess)
    return {} if size is None else {"protocol_size": size}


def score_images(
    images_dir: str | os.PathLike[str],
    target: str | int,
    classifiers: Sequence[str | LoadedModel],
    *,
    real_dir: str | os.PathLike[str] | None = None,
    weights: dict[str, str] | None = None,
    bootstrap: int = BOOTSTRAP,
    bootstrap_seed: int = 0,
    **settings: Any,
) -> ScoreResult:
    """Score the images below ``images_dir`` for ImageNet class ``target`` (index or name).

    ``classifiers``: names (loaded here, with ``weights``) or models from `load_classifiers`.
    ``real_dir``: real images of the class, the positives of ROC-AUC / average precision.
    ``bootstrap``: resamples of the bootstrap intervals (0: none), drawn from ``bootstrap_seed``.
    ``settings``: how images are fed, any `ScoreConfig` field (``batch_size``, ``device``,
    ``strict``, ``num_workers``, ``image_size``, ``preprocess``).
    """
    return score_folders(
        [images_dir],
        target,
        classifiers,
        ScoreConfig(**settings),
        real_dir=real_dir,
        weights=weights,
        bootstrap=bootstrap,
        bootstrap_seed=bootstrap_seed,
    )[0]


def score_folders(
    folders: Sequence[str | os.PathLike[str]],
    target: str | int,
    classifiers: Sequence[str | LoadedModel],
    options: ImagePass | None = None,
    *,
    real_dir: str | os.PathLike[str] | None = None,
    weights: dict[str, str] | None = None,
    extractors: Sequence[LoadedModel] = (),
    bootstrap: int = BOOTSTRAP,
    bootstrap_seed: int = 0,
) -> list[ScoreResult]:
    """`score_images` of each folder, in one pass: every file (the real images too) is decoded
    and scored once, and ``extractors`` (loaded models) take their features of each folder's
    images from the same batches (`ScoreResult.features`)."""
    options = options or ImagePass()
    options.check()
    if bootstrap < 0:
        raise UsageError(f"bootstrap must be 0 (no bootstrap intervals) or more, not {bootstrap}")
    k = imagenet.resolve_class(target)
    roots = [Path(folder) for folder in folders]
    items = [
        item
        for n, root in enumerate(roots)
        for item in find_items(root, k.index, real=False, folder=n)
    ]
    r_root = None if real_dir is None else Path(real_dir)
    if r_root is not None:
        items += find_items(r_root, k.index, real=True)
    models = load_classifiers(classifiers, weights)
    found = score_items(items, models, options, extractors)
    real = found.column(items, "real").astype(bool)
    real_set = found.per_image.select(real) if r_root is not None else None
    spurious_all = found.per_image.select(~real)
    folder_of = found.column(items, "folder")[~real]
    results = []
    for n, root in enumerate(roots):
        ours = folder_of == n
        skipped = [m for i, m in found.skipped if items[i].real or items[i].folder == n]
        spurious = spurious_all.select(ours)
        if not spurious.images:
            raise SpurcliError(f"no readable images in {root} ({len(skipped)} unreadable)")
        if real_set is not None and not real_set.images:
            raise SpurcliError(f"no readable images in --real {r_root}")
        scores = {
            m.name: _metrics(spurious, real_set, c, k.index, bootstrap, bootstrap_seed)
            for c, m in enumerate(models)
        }
        result = ScoreResult(
            target=k,
            models=list(models),
            scores=scores,
            consensus=metrics.consensus(spurious.top1 == k.index),
            spurious=spurious,
            real=real_set,
            skipped=skipped,
            features={name: values[ours] for name, values in found.features.items()},
            uncertainty=uncertainty_json(bootstrap, bootstrap_seed),
            preprocess=options.preprocess,
        )
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------
# The Spurious ImageNet layout: one folder per class/feature + an ImageNet val root


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
class SpuriousImageNetResult(_Rows):
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
        from spurcli.evaluate.spurious_imagenet import spurious_score_rows

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
        from spurcli.evaluate.spurious_imagenet import write_spurious_score_csv

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
                    **_protocol_json(m, self.preprocess),
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
        _add_columns(summary, numbers)
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
    return _score_spurious_imagenet(root, real_root, classifiers, weights, options)


def _score_spurious_imagenet(
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
            per_class[m.name][k.index] = _metrics(s_k, r_k, c, k.index)
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
    released "Joint SpuriousScore" is the AP; `spurcli.evaluate.metrics.joint_ranking_scores` says why
    this is not a mean over classes), each with a percentile bootstrap ``_ci`` of ``bootstrap``
    resamples, real and spurious images resampled independently (None with 0)."""
    from spurcli.evaluate.spurious_imagenet import spurious_score_joint

    out: dict[str, Any] = spurious_score_joint(
        real.target, real.target_prob[c], spurious.target, spurious.target_prob[c]
    )
    # The real images are those of the spurious images' classes (`_score_spurious_imagenet`
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


def score(
    config: ScoreConfig, images_dir: str | os.PathLike[str]
) -> ScoreResult | SpuriousImageNetResult:
    """`spurcli score`: `score_images` (``layout="folder"``: ``target`` required, ``real``
    optional) or `score_spurious_imagenet` (``"spurious-imagenet"``: ``real`` is the ImageNet val
    root, the target is per folder; its per-class figures carry Wilson intervals only, so
    ``bootstrap`` applies to the folder layout)."""
    weights = parse_weights(config.weights)
    if config.layout == "spurious-imagenet":
        if config.target is not None:
            raise UsageError("--target is not used with --layout spurious-imagenet (per folder)")
        if config.real is None:
            raise UsageError("--layout spurious-imagenet needs --real IMAGENET_VAL_ROOT")
        return _score_spurious_imagenet(
            images_dir, config.real, config.classifiers, weights, config
        )
    if config.layout == "folder":
        if config.target is None:
            raise UsageError("--target CLASS is required (an ImageNet index or name)")
        return score_folders(
            [images_dir],
            config.target,
            config.classifiers,
            config,
            real_dir=config.real,
            weights=weights,
            bootstrap=config.bootstrap,
            bootstrap_seed=config.bootstrap_seed,
        )[0]
    raise UsageError(f"unknown --layout '{config.layout}'; use 'folder' or 'spurious-imagenet'")
