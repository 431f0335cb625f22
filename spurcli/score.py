"""`spurcli score`: how spurious a set of images is, per classifier and across classifiers.

    from spurcli.score import load_classifiers, score_images, score_spurious_imagenet
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
    from spurcli import plugins
    from spurcli.score import score_folders
    robust = plugins.extractors().load("robust-resnet50")
    a, b = score_folders(["run_a/", "run_b/"], 94, models, extractors=[robust])
    a.features["robust-resnet50"]  # (a.n_images, 2048), rows as a.spurious.images

    # The Spurious ImageNet benchmark (one folder per class/feature + an ImageNet val root):
    sin = score_spurious_imagenet("spurious_imagenet/images", "imagenet/val", ["resnet"])
    sin.to_json()["classifiers"]["resnet"]["mean_roc_auc"]

How a run goes, and why:

- Every image is read and decoded once, however many classifiers score it: a DataLoader (worker
  processes decode while the main process runs the models; on a CPU with few cores decoding
  stays in the main process, see `_default_workers`) yields uint8 batches, and the classifiers
  (then any feature extractors) are evaluated in turn on the same batch under
  `torch.inference_mode()`; none may change the batch in place.
- A batch tensor needs one size but folders mix sizes, so each image is cut to its central square
  and resized to `image_size` (384) x `image_size`. Classifiers do their own resize/crop and the
  usual eval pre-processing of ImageNet models (timm, CLIP, torchvision: resize the short side,
  crop the centre) never looks outside that square, so they see the same region as from the file.
  384 is above the 224-336 input of common classifiers, so none is fed an up-sampled image; raise
  it for classifiers that take larger inputs. The transform depends on the image alone, never on
  what else is in its batch, so results do not depend on batch size or on sharding.
- Memory is flat in the number of images: batches stream through, and per image and classifier
  only three numbers are kept (top-1 index, p_target, rank of the target).
- Several processes (`torchrun`/`accelerate launch -m spurcli score ...`) each score a strided
  shard of the files; the per-image numbers are gathered on every process, and the metrics are
  computed from the full set exactly as in a one-process run.
- Scored images S (of one or several folders) and real images R go through one DataLoader in one
  pass (R are the positives of the ROC-AUC/AP, shared by every folder; the extractors skip them);
  the metric definitions live in `spurcli.metrics`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from spurcli import console, imagenet, metrics, plugins
from spurcli.config import ScoreConfig, check_bootstrap
from spurcli.errors import SpurcliError, UsageError
from spurcli.fileio import atomic_path
from spurcli.images import ImageReadError, find_images, read_image
from spurcli.parallel import Processes
from spurcli.plugins import LoadedModel
from spurcli.text import csv_cell, rich_text
from spurcli.weights import weights_option

log = logging.getLogger(__name__)

CSV_COLUMNS = ("image", "classifier", "top1_index", "top1_name", "target_prob", "target_rank")
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
# Loading classifiers


def parse_weights(pairs: Sequence[str], option: str = "--weights") -> dict[str, str]:
    """``["resnet=ckpt.pt", "clip=random"]`` (the repeatable ``--weights NAME=PATH``, or
    another ``option`` of that format such as ``--extractor-weights``) -> dict."""
    weights: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"{option} expects NAME=PATH (or NAME=random), got '{pair}'")
        if name.strip() in weights:
            raise UsageError(f"{option} given twice for '{name.strip()}'")
        weights[name.strip()] = path.strip()
    return weights


def load_classifiers(
    names: Sequence[str | LoadedModel], weights: dict[str, str] | None = None
) -> list[LoadedModel]:
    """Classifiers by name (see `load_models`); at least one is required."""
    if not names:
        raise UsageError("--classifiers is required, e.g. --classifiers resnet,vit,clip")
    registry = plugins.classifiers()
    return load_models(registry, names, weights, option="--weights", noun="classifiers")


def load_models(
    registry: plugins.Registry,
    names: Sequence[str | LoadedModel],
    weights: dict[str, str] | None,
    *,
    option: str,
    noun: str,
) -> list[LoadedModel]:
    """Resolve every name first (an unknown one fails before anything heavy loads), then load.

    ``weights`` (given by ``option`` on the command line) maps a name to a local file or
    ``"random"``; others get their plugin's default. Already loaded models pass through unchanged.
    """
    weights = dict(weights or {})
    wanted = [n if isinstance(n, str) else n.name for n in names]
    duplicates = sorted({n for n in wanted if wanted.count(n) > 1})
    if duplicates:
        raise UsageError(f"{noun} listed twice: {', '.join(duplicates)}")
    unused = [n for n in weights if n not in wanted]
    if unused:
        raise UsageError(
            f"{option} given for {', '.join(unused)}, which is not among the {noun} "
            f"({', '.join(wanted) or 'none'})"
        )
    for name in names:
        if isinstance(name, str):
            registry.resolve(name)
        elif name.name in weights:
            raise UsageError(f"'{name.name}' is already loaded; its weights are fixed")
    with weights_option(option):
        return [registry.load(n, weights.get(n)) if isinstance(n, str) else n for n in names]


# ---------------------------------------------------------------------------------------------
# The pass: decode once, every classifier (and extractor) on each batch, three numbers per image


@dataclass(frozen=True)
class Item:
    path: Path
    name: str  # what the CSV calls it: the path relative to the folder given, '/'-separated
    target: int  # the ImageNet class whose probability and rank are recorded for this image
    real: bool  # True: a real image of the class (a positive for ROC-AUC/AP)
    folder: int = 0  # which of the folders scored in one pass (`score_folders`) it is from


def find_items(
    root: Path, target: int, *, real: bool, base: Path | None = None, folder: int = 0
) -> list[Item]:
    """The images below ``root`` (see `find_images`) as items scored for class ``target``,
    named relative to ``base`` (default: ``root``)."""
    paths = find_images(root)
    base = base or (root if root.is_dir() else root.parent)
    return [Item(p, p.relative_to(base).as_posix(), target, real, folder) for p in paths]


class SquareImages(torch.utils.data.Dataset):
    """Decoded images as uint8 (3, size, size) tensors; unreadable files come back as errors."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            img = read_image(self.paths[i])
        except ImageReadError as exc:
            return i, None, str(exc)
        img = ImageOps.fit(img, (self.size, self.size), Image.Resampling.BICUBIC)
        # uint8 across the worker boundary: 4x less shared memory than float32.
        return i, torch.from_numpy(np.array(img)).permute(2, 0, 1), None


def _collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[Any, ...]:
    good = [(i, x) for i, x, _ in samples if x is not None]
    failed = [(i, err) for i, x, err in samples if x is None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, failed
    return torch.tensor([i for i, _ in good]), torch.stack([x for _, x in good]), failed


def _default_workers(n_items: int, batch_size: int, world: int, device: torch.device) -> int:
    """Decoding processes per scoring process when --workers is not given."""
    if n_items <= batch_size:
        return 0  # a single batch: starting a worker process costs more than it saves
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = max(1, (cpus or 1) // world)  # this process's share of the machine
    if device.type != "cpu":
        return max(1, min(8, cpus - 1))  # the GPU computes; keep it fed with every spare core
    # On CPU the models already use every core through torch's threads, and one worker decodes
    # faster than CPU models score; on 2 cores a worker only competes with them (measured by
    # benchmarks/bench_score.py: decoding in the main process was faster there).
    return 1 if cpus >= 4 else 0


def _forward(
    model: LoadedModel, x: torch.Tensor, kind: str, classes: int | None, *args: Any
) -> np.ndarray:
    """``model`` on ``x`` (which the next models see too), its output checked, on the CPU.

    A classifier must return (batch, ``classes``) logits, an extractor (``classes`` None) (batch,
    dim) features, a detector (``kind`` "detector", called with ``args`` = the query) (batch,)
    presence scores in [0, 1]; any other output, NaN/inf, or a change to the shared input is a
    plugin bug, named as such.
    """
    where = f"{kind} '{model.name}' (plugin '{model.plugin}')"
    version = x._version
    out = model.module(x, *args)
    if x._version != version:
        raise SpurcliError(
            f"{where} modified its input in place, which would corrupt the other {kind}s' "
            "inputs: a bug in the plugin (copy the tensor before changing it)"
        )
    batch = x.shape[0]
    detector = kind == "detector"
    expected = f"({batch}, {classes}) ImageNet logits" if classes else f"({batch}, dim) features"
    if detector:
        expected = f"({batch},) presence scores in [0, 1]"
    if not isinstance(out, torch.Tensor):
        raise SpurcliError(
            f"{where} returned {type(out).__name__}, not a tensor of {expected}: "
            "a bug in the plugin"
        )
    wrong_shape = (
        out.ndim != 1 or out.shape[0] != batch
        if detector
        else out.ndim != 2 or out.shape[0] != batch or (classes and out.shape[1] != classes)
    )
    if wrong_shape:
        raise SpurcliError(
            f"{where} returned shape {tuple(out.shape)} for a batch of {batch} images; "
            f"expected {expected}: a bug in the plugin"
        )
    # float64 logits keep softmax probabilities of unlikely classes distinct (ranks, AUC ties).
    values = out.detach().to("cpu", torch.float64 if classes else torch.float32).numpy()
    if not np.isfinite(values).all():
        raise SpurcliError(f"{where} returned NaN or infinite values: a bug in the plugin")
    if detector and ((values < 0) | (values > 1)).any():
        raise SpurcliError(f"{where} returned scores outside [0, 1]: a bug in the plugin")
    return values


@dataclass
class PerImage:
    """Per image and classifier: what the CSV holds. Arrays are (classifiers, images)."""

    classifiers: list[str]
    images: list[str]  # paths relative to the folder that was given, '/'-separated
    target: np.ndarray  # (N,) the ImageNet index scored for each image
    top1: np.ndarray  # (C, N) argmax class (ties: lowest index)
    target_prob: np.ndarray  # (C, N) softmax probability of the target class
    target_rank: np.ndarray  # (C, N) 1-based rank of the target (1 <=> top-1)

    def select(self, mask: np.ndarray) -> PerImage:
        images = [p for p, keep in zip(self.images, mask, strict=True) if keep]
        return PerImage(
            self.classifiers,
            images,
            self.target[mask],
            self.top1[:, mask],
            self.target_prob[:, mask],
            self.target_rank[:, mask],
        )

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], target: int) -> PerImage:
        """The inverse of `iter_rows` (e.g. a saved score CSV, rows typed), every image scored
        for ``target``; classifiers and images in the order they first appear."""
        classifiers = list(dict.fromkeys(r["classifier"] for r in rows))
        images = list(dict.fromkeys(r["image"] for r in rows))
        at = {(r["classifier"], r["image"]): r for r in rows}
        if len(at) != len(classifiers) * len(images):
            raise SpurcliError("score rows do not hold every classifier for every image")

        def column(key: str, dtype: Any) -> np.ndarray:
            return np.array([[at[c, i][key] for i in images] for c in classifiers], dtype)

        return cls(
            classifiers,
            images,
            np.full(len(images), target, np.int64),
            column("top1_index", np.int64),
            column("target_prob", np.float64),
            column("target_rank", np.int64),
        )

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        names = imagenet.class_names()
        for i, image in enumerate(self.images):
            for c, classifier in enumerate(self.classifiers):
                top1 = int(self.top1[c, i])
                yield {
                    "image": image,
                    "classifier": classifier,
                    "top1_index": top1,
                    "top1_name": names[top1],
                    "target_prob": float(self.target_prob[c, i]),
                    "target_rank": int(self.target_rank[c, i]),
                }

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in self.iter_rows():  # names are data: "=cmd|..." must not run in Excel
                writer.writerow({k: csv_cell(v) for k, v in row.items()})


@dataclass
class Pass:
    """What `score_items` found, for the readable items in item order."""

    index: np.ndarray  # (N,) item numbers of the readable items, ascending
    per_image: PerImage  # the classifiers' numbers of those items
    # extractor name -> (M, D) float32 features of the readable items that are not real, in
    # item order: the rows of `per_image.select(~real)` (the extractors skip the real images).
    features: dict[str, np.ndarray]
    skipped: list[tuple[int, str]]  # (item number, "path: reason") of the unreadable items
    # detector name -> (M,) float32 presence scores, rows as `features` (not-real items)
    presence: dict[str, np.ndarray] = field(default_factory=dict)

    def column(self, items: Sequence[Item], key: str) -> np.ndarray:
        """An `Item` field of every readable item (e.g. ``"real"``), as an array."""
        return np.array([getattr(items[i], key) for i in self.index])


def score_items(
    items: Sequence[Item],
    models: Sequence[LoadedModel],
    options: ScoreConfig,
    extractors: Sequence[LoadedModel] = (),
    desc: str | None = None,
    *,
    detectors: Sequence[LoadedModel] = (),
    queries: Mapping[int, Any] | None = None,
    reducers: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
) -> Pass:
    """Score every item with every classifier and take every extractor's features (and every
    detector's presence scores) of the items that are not real, in one pass: each file is
    decoded once for all of them. Runs sharded when launched as a group.

    ``queries``: ImageNet index -> the `spurcli.detect.ObjectQuery` detectors get for items of
    that target. ``reducers``: extractor name -> a function of a batch's (b, D) features whose
    (b, ...) result is kept instead of them, so memory stays flat in the number of images
    (e.g. the cosine to the nearest reference image).
    """
    queries, reducers = dict(queries or {}), dict(reducers or {})
    procs = Processes(options.device)
    mine = procs.shard(range(len(items)))
    if procs.world > 1:
        log.info(
            "process %d of %d scores %d of %d files", procs.rank, procs.world, len(mine), len(items)
        )
    for model in (*models, *extractors, *detectors):
        model.module.to(procs.device).eval()
    workers = options.num_workers
    if workers is None:
        workers = _default_workers(len(mine), options.batch_size, procs.world, procs.device)
    loader = torch.utils.data.DataLoader(
        SquareImages([items[i].path for i in mine], options.image_size),
        batch_size=options.batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=procs.device.type == "cuda",
    )
    n_models, n_mine = len(models), len(mine)
    targets = np.array([items[i].target for i in mine], dtype=np.int64)
    extracted = np.array([not items[i].real for i in mine], bool)  # what the extractors see
    top1 = np.zeros((n_models, n_mine), np.int32)
    prob = np.zeros((n_models, n_mine), np.float64)
    rank = np.zeros((n_models, n_mine), np.int32)
    done = np.zeros(n_mine, bool)
    mine_index = np.asarray(mine, np.int64)
    features: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in extractors]
    presence: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in detectors]
    skipped: list[tuple[int, str]] = []
    if desc is None:
        n_real = sum(item.real for item in items)
        desc = f"scoring {len(items) - n_real} images" + (f" + {n_real} real" if n_real else "")
    for ids, batch, failed in console.track(loader, desc, total=len(loader)):
        for i, message in failed:
            if options.strict and procs.world == 1:
                raise SpurcliError(f"{message} (--strict: unreadable images are errors)")
            log.warning("skipped %s", message)
            skipped.append((int(mine_index[i]), message))
        if batch is None:
            continue
        ids = ids.numpy()
        seen = extracted[ids]
        # Made outside inference mode so the tensors keep a version counter (see `_forward`).
        with torch.no_grad():
            x = batch.to(procs.device, non_blocking=True).float().div_(255)
            some = extractors or detectors
            x_seen = x if seen.all() or not some else x[torch.from_numpy(seen).to(x.device)]
        with torch.inference_mode():
            t = targets[ids]
            for c, model in enumerate(models):
                logits = _forward(model, x, "classifier", imagenet.NUM_CLASSES)
                top1[c, ids] = logits.argmax(axis=1)
                prob[c, ids] = metrics.target_prob(logits, t)
                rank[c, ids] = metrics.target_rank(logits, t)
            for e, extractor in enumerate(extractors if seen.any() else ()):
                values = _forward(extractor, x_seen, "feature extractor", None)
                if extractor.name in reducers:
                    values = reducers[extractor.name](values)
                features[e].append((mine_index[ids[seen]], values))
            t_seen = t[seen]
            for d, detector in enumerate(detectors):
                for k in np.unique(t_seen):  # one query per class; curate has a single class
                    rows = t_seen == k
                    part = x_seen if rows.all() else x_seen[torch.from_numpy(rows).to(x.device)]
                    values = _forward(detector, part, "detector", None, queries[int(k)])
                    presence[d].append((mine_index[ids[seen][rows]], values))
        done[ids] = True

    # Every process gets every process's numbers; then all of them compute the same metrics.
    parts = procs.gather(
        [
            {
                "index": mine_index[done],
                "top1": top1[:, done],
                "prob": prob[:, done],
                "rank": rank[:, done],
                "features": features,
                "presence": presence,
                "skipped": skipped,
            }
        ]
    )
    index = np.concatenate([p["index"] for p in parts])
    order = np.argsort(index, kind="stable")
    index = index[order]
    skipped_all = sorted(s for p in parts for s in p["skipped"])
    if options.strict and skipped_all:
        raise SpurcliError(f"{skipped_all[0][1]} (--strict: unreadable images are errors)")
    per_image = PerImage(
        classifiers=[m.name for m in models],
        images=[items[i].name for i in index],
        target=np.array([items[i].target for i in index], np.int64),
        top1=np.concatenate([p["top1"] for p in parts], axis=1)[:, order],
        target_prob=np.concatenate([p["prob"] for p in parts], axis=1)[:, order],
        target_rank=np.concatenate([p["rank"] for p in parts], axis=1)[:, order],
    )
    found = {
        extractor.name: _in_item_order([c for p in parts for c in p["features"][e]], 2)
        for e, extractor in enumerate(extractors)
    }
    scores = {
        detector.name: _in_item_order([c for p in parts for c in p["presence"][d]], 1)
        for d, detector in enumerate(detectors)
    }
    return Pass(index, per_image, found, skipped_all, scores)


def _in_item_order(chunks: list[tuple[np.ndarray, np.ndarray]], ndim: int) -> np.ndarray:
    """(item numbers, values) chunks of a pass as one array of values in item order."""
    if not chunks:
        return np.zeros((0,) * ndim, np.float32)
    rows = np.concatenate([i for i, _ in chunks])
    values = np.concatenate([v for _, v in chunks])
    return values[np.argsort(rows, kind="stable")]


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
    """The issue's seven numbers for classifier row ``c`` and target class ``k``, each followed
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
                m.name: {"weights": m.weights, "weights_id": m.weights_id, **self.scores[m.name]}
                for m in self.models
            },
            "consensus": self.consensus.to_json(),
            "uncertainty": self.uncertainty,
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
            + (f", {len(self.skipped)} skipped (unreadable)" if self.skipped else ""),
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
    batch_size: int = ScoreConfig.batch_size,
    device: str | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    image_size: int = ScoreConfig.image_size,
    bootstrap: int = BOOTSTRAP,
    bootstrap_seed: int = 0,
) -> ScoreResult:
    """Score the images below ``images_dir`` for ImageNet class ``target`` (index or name).

    ``classifiers``: names (loaded here, with ``weights``) or models from `load_classifiers`.
    ``real_dir``: real images of the class, the positives of ROC-AUC / average precision.
    ``bootstrap``: resamples of the bootstrap intervals (0: none), drawn from ``bootstrap_seed``.
    """
    options = ScoreConfig(
        batch_size=batch_size,
        device=device,
        strict=strict,
        num_workers=num_workers,
        image_size=image_size,
    )
    return score_folders(
        [images_dir],
        target,
        classifiers,
        options,
        real_dir=real_dir,
        weights=weights,
        bootstrap=bootstrap,
        bootstrap_seed=bootstrap_seed,
    )[0]


def score_folders(
    folders: Sequence[str | os.PathLike[str]],
    target: str | int,
    classifiers: Sequence[str | LoadedModel],
    options: ScoreConfig | None = None,
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
    options = options or ScoreConfig()
    options.check()
    check_bootstrap(bootstrap)
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
    """Per-class ROC-AUC / AP (R_k positives vs S_k negatives on p_k) and their class means."""

    classes: list[imagenet.ImageNetClass]
    models: list[LoadedModel]
    per_class: dict[str, dict[int, dict[str, float | None]]]  # classifier -> class -> metrics
    spurious: PerImage
    real: PerImage
    skipped: list[str]

    def means(self, name: str) -> dict[str, float]:
        rows = self.per_class[name].values()
        keys = ("roc_auc", "average_precision", "spurious_rate", "real_accuracy")
        return {f"mean_{key}": float(np.mean([r[key] for r in rows])) for key in keys}

    def to_json(self) -> dict[str, Any]:
        n_s = np.bincount(self.spurious.target, minlength=imagenet.NUM_CLASSES)
        n_r = np.bincount(self.real.target, minlength=imagenet.NUM_CLASSES)
        return {
            "layout": "spurious-imagenet",
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
        _add_columns(summary, ("mean_roc_auc", "mean_average_precision", "mean_spurious_rate"))
        for m in self.models:
            means = self.means(m.name)
            label = f"{m.name}*" if m.is_random else m.name
            summary.add_row(
                label,
                m.weights,
                fmt_metric(means["mean_roc_auc"]),
                fmt_metric(means["mean_average_precision"]),
                fmt_metric(means["mean_spurious_rate"]),
            )
        notes = [f"{len(self.spurious.images)} images, {len(self.real.images)} real"]
        if self.skipped:
            notes.append(f"{len(self.skipped)} skipped (unreadable)")
        summary.caption = ", ".join(notes)
        if any(m.is_random for m in self.models):
            summary.caption += "\n" + RANDOM_NOTE
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
    batch_size: int = ScoreConfig.batch_size,
    device: str | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    image_size: int = ScoreConfig.image_size,
) -> SpuriousImageNetResult:
    """The Spurious ImageNet benchmark for any classifier: ``root`` holds one folder per
    class/feature, ``real_root`` an ImageNet val split with one folder per WordNet id."""
    options = ScoreConfig(
        batch_size=batch_size,
        device=device,
        strict=strict,
        num_workers=num_workers,
        image_size=image_size,
    )
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
    return SpuriousImageNetResult(classes, list(models), per_class, spurious, real_set, skipped)


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
