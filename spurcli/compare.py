"""`spurcli compare`: two image sets side by side, by classifier scores and in feature spaces.

    from spurcli.compare import compare
    result = compare("samples/generated", "refs/", target="hummingbird",
                     classifiers=["resnet", "clip"], extractors=["robust-resnet50"])
    result.to_json()    # {"a": <score json>, "b": <score json>, "similarity": {"robust-resnet50":
                        #   {"mean_cosine", "frechet", "nn_cosine_mean", "nn_cosine_max", ...}}}
    from spurcli.report import write_report
    write_report("report.html", [result.report_data()])     # the HTML report

    spurcli compare samples/ refs/ --target 94 --classifiers resnet,clip \
        --extractors robust-resnet50 --report report.html --json compare.json

Scores come from `spurcli.score` (same numbers as `spurcli score` on each folder): one pass over
both folders (and the real images) decodes every image once, and the classifiers and the feature
extractors run on the same batches. Similarity, per feature extractor (a plugin's penultimate
features):

- ``mean_cosine``: the mean cosine similarity over all pairs (a in A, b in B); it equals the dot
  product of the two sets' mean unit vectors, so it costs O(N), not O(N^2).
- ``frechet`` (shown as ``frechet_<extractor>``): the Fréchet distance between Gaussians fitted
  to the two feature sets, ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))``: FID's formula
  in another feature space, so not called FID. The trace of the matrix square root is computed as
  ``sum sqrt(eig(C_a^(1/2) C_b C_a^(1/2)))`` (symmetric PSD, `eigh`, negative rounding clipped),
  which needs no eps and is exact also for singular covariances. But with fewer images than
  dimensions (n <= dim, the usual case for a few dozen images) the covariances are rank-deficient
  sample estimates: the number is biased upwards and comparable only between set pairs of the
  same sizes; the JSON's ``frechet_note`` says so whenever it applies.
- ``nn_cosine_mean`` / ``nn_cosine_max``: for each image of A, the cosine to its nearest
  neighbour in B; with B = the training references, values near 1 flag memorised copies (the
  report shows the closest pairs).

Unreadable images are skipped (and named) like in `score`; images of any size are fine (each is
cut to its central square, as `score` does, before the extractor resizes it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spurcli.errors import SpurcliError, UsageError

log = logging.getLogger(__name__)

SIMILARITY_KEYS = ("mean_cosine", "frechet", "nn_cosine_mean", "nn_cosine_max")
NN_CHUNK = 1024  # rows of A per similarity block: memory stays O(chunk * |B|)


@dataclass
class CompareConfig:
    """`compare` settings; also the ``[compare]`` table of a `spurcli run` config."""

    target: int | str | None = None  # the ImageNet class (index or name)
    classifiers: list[str] = field(default_factory=list)  # plugin names
    weights: list[str] = field(default_factory=list)  # NAME=PATH or NAME=random, per classifier
    extractors: list[str] = field(default_factory=lambda: ["robust-resnet50"])  # feature spaces
    extractor_weights: list[str] = field(default_factory=list)  # NAME=PATH or NAME=random
    real: Path | None = None  # real images of the class: ROC-AUC / AP in both score tables
    batch_size: int = 32  # images per forward pass
    device: str | None = None  # None: the accelerate default
    strict: bool = False  # unreadable image: error instead of a warning
    report_images: int = 48  # images per set shown in the report's grids (all are scored)


@dataclass
class Features:
    """One extractor's features of one image set."""

    names: list[str]  # image paths relative to the set's folder
    values: np.ndarray  # (N, D) float32

    def save(self, path: str | os.PathLike[str]) -> None:
        from spurcli.fileio import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, names=np.array(self.names), values=self.values)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Features:
        with np.load(path) as data:
            return cls([str(n) for n in data["names"]], data["values"])


# ---------------------------------------------------------------------------------- the math


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of cos(a_i, b_j) over all pairs = <mean of unit a, mean of unit b>."""
    return float(unit(a).mean(axis=0) @ unit(b).mean(axis=0))


def nearest_neighbours(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the index of its most cosine-similar row of ``b``, and the cosine."""
    ua, ub = unit(a), unit(b)
    index = np.empty(len(ua), np.int64)
    cosine = np.empty(len(ua), np.float64)
    for start in range(0, len(ua), NN_CHUNK):
        sims = ua[start : start + NN_CHUNK] @ ub.T
        index[start : start + NN_CHUNK] = sims.argmax(axis=1)
        cosine[start : start + NN_CHUNK] = sims.max(axis=1)
    return index, cosine


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b`` (see docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    mu = a.mean(axis=0) - b.mean(axis=0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ca, cb = np.atleast_2d(ca), np.atleast_2d(cb)
    root_a = _psd_sqrt(ca)
    middle = root_a @ cb @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)  # symmetric up to rounding
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    distance = mu @ mu + np.trace(ca) + np.trace(cb) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))  # >= 0 in exact arithmetic


def similarity(a: Features, b: Features) -> dict[str, Any]:
    """The four similarity numbers of A vs B in one feature space, and each A image's neighbour."""
    n_a, n_b, dim = len(a.names), len(b.names), a.values.shape[1]
    index, cosine = nearest_neighbours(a.values, b.values)
    frechet: float | None = None
    note = None
    if min(n_a, n_b) < 2:
        note = "needs at least 2 images per set"
    else:
        frechet = frechet_distance(a.values, b.values)
        if min(n_a, n_b) <= dim:
            note = (
                f"fewer images than dimensions ({n_a} and {n_b} vs {dim}): singular sample "
                "covariances, a high-variance estimate biased upwards; compare only between "
                "pairs of sets of the same sizes"
            )
    return {
        "mean_cosine": mean_cosine(a.values, b.values),
        "frechet": frechet,
        "nn_cosine_mean": float(cosine.mean()),
        "nn_cosine_max": float(cosine.max()),
        "n_a": n_a,
        "n_b": n_b,
        "dim": int(dim),
        "frechet_note": note,
        "nearest": [
            {"image": name, "neighbour": b.names[j], "cosine": float(c)}
            for name, j, c in zip(a.names, index, cosine, strict=True)
        ],
    }


# ------------------------------------------------------------------------------- features


def extract_features(
    root: str | os.PathLike[str],
    extractor: Any,
    *,
    batch_size: int = 32,
    device: str | None = None,
    image_size: int | None = None,
    strict: bool = False,
) -> Features:
    """``extractor``'s (a `LoadedModel`) features of every image below ``root``.

    The pass is `spurcli.score`'s (`score_items`, with no classifiers), so an image is decoded
    and squared exactly as the classifiers see it. Sharded over the processes of a
    torchrun/accelerate group.
    """
    from spurcli.score import ScoreOptions, find_items, score_items

    size = image_size or ScoreOptions.image_size
    options = ScoreOptions(batch_size=batch_size, device=device, strict=strict, image_size=size)
    options.check()
    root = Path(root)
    items = find_items(root, 0, real=False)  # the target class is unused: no classifiers
    desc = f"features ({extractor.name}) of {root}"
    found = score_items(items, [], options, [extractor], desc=desc)
    if not len(found.index):
        raise SpurcliError(f"no readable images in {root}")
    return Features(found.per_image.images, found.features[extractor.name])


def load_extractors(names: Sequence[str], weights: dict[str, str] | None = None) -> list[Any]:
    """Feature extractors by name (see `spurcli.score.load_models`); none is fine."""
    from spurcli import plugins
    from spurcli.score import load_models

    return load_models(
        plugins.extractors(), names, weights, option="--extractor-weights", noun="extractors"
    )


# -------------------------------------------------------------------------------- compare


@dataclass
class CompareResult:
    """Both sets' scores (as `ScoreResult.to_json()` + per-image rows) and their similarity.

    Plain data only, so a `spurcli run` can save it and render the report again later.
    """

    a: dict[str, Any]  # score JSON of A
    b: dict[str, Any]
    rows_a: list[dict[str, Any]]  # per image and classifier: image, classifier, top1_name, ...
    rows_b: list[dict[str, Any]]
    similarity: dict[str, dict[str, Any]]  # extractor -> similarity()
    dir_a: str
    dir_b: str
    label_a: str = "A"
    label_b: str = "B"
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The documented JSON: scores of both sets and the similarity per extractor."""
        return {
            "a": self.a,
            "b": self.b,
            "similarity": {
                name: {k: v for k, v in sim.items() if k != "nearest"}
                for name, sim in self.similarity.items()
            },
        }

    def report_data(self) -> dict[str, Any]:
        """Everything the HTML report shows (JSON-ready; `from_report_data` reads it back)."""
        return {
            **self.to_json(),
            "similarity": self.similarity,
            "rows": {"a": self.rows_a, "b": self.rows_b},
            "dirs": {"a": self.dir_a, "b": self.dir_b},
            "labels": {"a": self.label_a, "b": self.label_b},
            "skipped": self.skipped,
        }

    @classmethod
    def from_report_data(cls, data: dict[str, Any]) -> CompareResult:
        return cls(
            a=data["a"],
            b=data["b"],
            rows_a=data["rows"]["a"],
            rows_b=data["rows"]["b"],
            similarity=data["similarity"],
            dir_a=data["dirs"]["a"],
            dir_b=data["dirs"]["b"],
            label_a=data["labels"]["a"],
            label_b=data["labels"]["b"],
            skipped=data.get("skipped", []),
        )

    def tables(self) -> list[Any]:
        """Rich tables: the score metrics side by side, then the similarity numbers."""
        from rich.table import Table

        from spurcli.score import METRICS, RANDOM_NOTE, fmt_metric

        target = self.a["target"]
        la, lb = self.label_a, self.label_b
        scores = Table(title=f"spurcli compare: target {target['index']} {target['name']}")
        for column in ("classifier", "metric", la, lb, f"{la} - {lb}"):
            scores.add_column(
                column, justify="left" if column in ("classifier", "metric") else "right"
            )
        for name, a in self.a["classifiers"].items():
            b = self.b["classifiers"][name]
            label = f"{name}*" if a["weights"] == "random" else name
            for i, metric in enumerate(METRICS):
                va, vb = a[metric], b[metric]
                delta = None if va is None or vb is None else va - vb
                scores.add_row(
                    label if i == 0 else "",
                    metric,
                    fmt_metric(va),
                    fmt_metric(vb),
                    fmt_metric(delta),
                )
            scores.add_section()
        ca, cb = self.a["consensus"], self.b["consensus"]
        scores.caption = (
            f"{la}: {self.a['n_images']} images ({self.dir_a}), consensus all {ca['all']:.3f} "
            f"any {ca['any']:.3f}; {lb}: {self.b['n_images']} images ({self.dir_b}), "
            f"consensus all {cb['all']:.3f} any {cb['any']:.3f}"
        )
        if any(a["weights"] == "random" for a in self.a["classifiers"].values()):
            scores.caption += "\n" + RANDOM_NOTE
        out = [scores]
        if self.similarity:
            sims = Table(title=f"similarity of {la} to {lb} in feature spaces")
            for column in ("extractor", "mean_cosine", "Fréchet distance", "nn_cosine_mean"):
                sims.add_column(column, justify="left" if column == "extractor" else "right")
            sims.add_column("nn_cosine_max", justify="right")
            notes = []
            for name, sim in self.similarity.items():
                sims.add_row(
                    name,
                    fmt_metric(sim["mean_cosine"]),
                    f"frechet_{name} = {fmt_metric(sim['frechet'])}",
                    fmt_metric(sim["nn_cosine_mean"]),
                    fmt_metric(sim["nn_cosine_max"]),
                )
                if sim.get("frechet_note"):
                    notes.append(f"frechet_{name}: {sim['frechet_note']}")
            sims.caption = "\n".join(notes) or None
            out.append(sims)
        return out


def compare(
    dir_a: str | os.PathLike[str],
    dir_b: str | os.PathLike[str],
    config: CompareConfig,
    *,
    labels: tuple[str, str] = ("A", "B"),
) -> CompareResult:
    """Score both folders with the same classifiers and compare them in each feature space.

    One pass over both folders (and the real images) serves the classifiers and extractors.
    """
    from spurcli import imagenet
    from spurcli.images import find_images
    from spurcli.score import ScoreOptions, load_classifiers, parse_weights, score_folders

    if config.target is None:
        raise UsageError("--target CLASS is required (an ImageNet index or name)")
    imagenet.resolve_class(config.target)  # "did you mean" before anything slow
    for folder in (dir_a, dir_b):
        find_images(folder)  # missing or empty set: one line now, not after loading models
    options = ScoreOptions(batch_size=config.batch_size, device=config.device, strict=config.strict)
    options.check()
    models = load_classifiers(config.classifiers, parse_weights(config.weights))
    extractor_weights = parse_weights(config.extractor_weights, "--extractor-weights")
    extractors = load_extractors(config.extractors, extractor_weights)
    scored = score_folders(
        [dir_a, dir_b], config.target, models, options, real_dir=config.real, extractors=extractors
    )
    sims = {
        e.name: similarity(*(Features(s.spurious.images, s.features[e.name]) for s in scored))
        for e in extractors
    }
    return CompareResult(
        a=scored[0].to_json(),
        b=scored[1].to_json(),
        rows_a=scored[0].rows,
        rows_b=scored[1].rows,
        similarity=sims,
        dir_a=str(dir_a),
        dir_b=str(dir_b),
        label_a=labels[0],
        label_b=labels[1],
        skipped=[*scored[0].skipped, *scored[1].skipped],
    )
