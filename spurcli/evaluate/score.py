"""`spurcli score`: how spurious a set of images is, per classifier and across classifiers.

    from spurcli.plugins import load_classifiers
    from spurcli.evaluate.score import score_images
    from spurcli.evaluate.benchmark import score_spurious_imagenet
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
from spurcli.evaluate.benchmark import (
    SpuriousImageNetResult,
    score_spurious_imagenet_with,
)
from spurcli.evaluate.config import ImagePass, ScoreConfig
from spurcli.evaluate.imagepass import PerImage, find_items, score_items
from spurcli.evaluate.results import (
    BOOTSTRAP,
    METRICS,
    RANDOM_NOTE,
    Rows,
    add_columns,
    classifier_metrics,
    fmt_metric,
    plain,
    protocol_json,
    uncertainty_json,
)
from spurcli.plugins import LoadedModel, load_classifiers, parse_weights
from spurcli.text import rich_text

# ---------------------------------------------------------------------------------------------
# Metrics and results


@dataclass
class ScoreResult(Rows):
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
                    **protocol_json(m, self.preprocess),
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
        add_columns(table, METRICS)
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
            m.name: classifier_metrics(spurious, real_set, c, k.index, bootstrap, bootstrap_seed)
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
        return score_spurious_imagenet_with(
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
