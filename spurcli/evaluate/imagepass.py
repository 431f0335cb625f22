"""The image pass: every file decoded once, every classifier (extractor, detector) on each batch.

    from spurcli import plugins
    from spurcli.evaluate.config import ImagePass
    from spurcli.evaluate.imagepass import find_items, score_items
    models = plugins.load_classifiers(["resnet"], {"resnet": "random"})
    items = find_items(Path("samples/"), target=94, real=False)
    found = score_items(items, models, ImagePass())
    found.per_image.target_prob      # (classifiers, readable images) p(target) of each image
    found.skipped                    # [(item number, "bad.png: not an image Pillow can read")]

`spurcli.evaluate.score`, `spurcli.evaluate.compare`, `spurcli.evaluate.curate` and the experiment
all feed images to models
through `score_items`, so an image is read, squared and checked the same way wherever it is scored.

How a pass goes, and why:

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
  what else is in its batch, so results do not depend on batch size or on sharding (beyond float
  rounding in the models' batched kernels, ~1e-9 in p; the metrics agree).
- Memory is flat in the number of images: batches stream through, and per image and classifier
  only three numbers are kept (top-1 index, p_target, rank of the target).
- Several processes (`torchrun`/`accelerate launch -m spurcli score ...`) each score a strided
  shard of the files; the per-image numbers are gathered on every process, and the metrics are
  computed from the full set exactly as in a one-process run.
- Scored images S (of one or several folders) and real images R go through one DataLoader in one
  pass (R are the positives of the ROC-AUC/AP, shared by every folder; the extractors skip them);
  the metric definitions live in `spurcli.evaluate.metrics`.
"""

from __future__ import annotations

import csv
import logging
import os
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from spurcli import console, imagenet
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate import metrics
from spurcli.evaluate.config import ImagePass, Preprocessing
from spurcli.evaluate.spurious_imagenet import (
    ACCEPTED_OUTPUTS,
    check_head_has_class,
    head_in1k_top1,
    in21k_index,
    protocol_image,
    released_loader,
)
from spurcli.fileio import atomic_path
from spurcli.images import ImageReadError, find_images, read_image
from spurcli.parallel import Processes
from spurcli.plugins import LoadedModel
from spurcli.preprocess import NormalisedOnly, Preprocessed
from spurcli.text import csv_cell

log = logging.getLogger(__name__)

CSV_COLUMNS = ("image", "classifier", "top1_index", "top1_name", "target_prob", "target_rank")
OUTSIDE_1K = "(not an ImageNet-1k class)"  # the top-1 name of a 21k head's finer classes


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


# What a decoded image is, across the DataLoader's worker boundary: its item number, the uint8
# (3, size, size) square (None if unreadable), the error, and under a scoring protocol
# (`protocol_sizes`) the protocol's uint8 image for each classifier input size.
Decoded = tuple[int, torch.Tensor | None, str | None, dict[int, torch.Tensor]]


class SquareImages(torch.utils.data.Dataset):
    """Decoded images as uint8 (3, size, size) tensors; unreadable files come back as errors.

    ``protocol_sizes`` (with ``real``, one flag per path): also each image as the released
    Spurious ImageNet code feeds it to a model of each of those input sizes
    (`spurcli.evaluate.spurious_imagenet.protocol_image`, from the file, not from the square).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        protocol_sizes: Sequence[int] = (),
        real: Sequence[bool] = (),
    ) -> None:
        self.paths, self.size = list(paths), size
        self.protocol_sizes, self.real = tuple(protocol_sizes), list(real)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        try:
            img = read_image(self.paths[i])
        except ImageReadError as exc:
            return i, None, str(exc), {}
        protocol = {}
        if self.protocol_sizes:
            # From the file as the released loader reads it (no EXIF rotation, alpha dropped,
            # 16-bit clipped), not from `read_image`'s normalised copy.
            try:
                raw = released_loader(self.paths[i])
            except ImageReadError as exc:
                return i, None, str(exc), {}
            for s in self.protocol_sizes:
                pixels = np.asarray(protocol_image(raw, s, real=self.real[i]))
                protocol[s] = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        img = ImageOps.fit(img, (self.size, self.size), Image.Resampling.BICUBIC)
        # uint8 across the worker boundary: 4x less shared memory than float32.
        return i, torch.from_numpy(np.array(img)).permute(2, 0, 1), None, protocol


def _collate(samples: list[Decoded]) -> tuple[Any, ...]:
    good = [(i, x, p) for i, x, _, p in samples if x is not None]
    failed = [(i, err) for i, x, err, _ in samples if x is None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, failed, []
    ids = torch.tensor([i for i, _, _ in good])
    # Protocol images keep their own shapes (a non-square spurious image stays non-square):
    # they are stacked per classifier and shape in the pass, not here.
    return ids, torch.stack([x for _, x, _ in good]), failed, [p for _, _, p in good]


PROTOCOLS = typing.get_args(Preprocessing)  # what `ImagePass.preprocess` may name


def protocol_view(model: LoadedModel) -> Any:
    """``model`` as the Spurious ImageNet protocol feeds it: only its normalisation, then its
    network (the protocol does the resize and crop), or a one-line error if it has none apart."""

    if not isinstance(model.module, Preprocessed):
        raise UsageError(
            f"classifier '{model.name}' (plugin '{model.plugin}') does not expose its "
            "normalisation apart from its resize (it is not a spurcli.preprocess.Preprocessed), "
            "so --preprocess spurious-imagenet cannot feed it; use --preprocess model"
        )
    return NormalisedOnly(model.module)


def protocol_size(model: LoadedModel, preprocess: str) -> int | None:
    """The side ``model`` is fed at under ``preprocess`` (None: its own transform decides)."""
    return protocol_view(model).size if preprocess != "model" else None


def _protocol_forward(
    model: LoadedModel, view: Any, size: int, protocol: list[dict[int, torch.Tensor]], device: Any
) -> np.ndarray:
    """The classifier's logits for the protocol images of a batch, in batch order: images of
    one shape go through together (the released loader needs one shape per batch; a folder
    of mixed shapes is scored image group by image group instead of refused)."""
    shapes = [tuple(p[size].shape) for p in protocol]
    out: np.ndarray | None = None
    for shape in dict.fromkeys(shapes):
        rows = [r for r, s in enumerate(shapes) if s == shape]
        with torch.no_grad():  # outside inference mode: `_forward` checks the version counter
            x = torch.stack([protocol[r][size] for r in rows]).to(device).float().div_(255)
        try:
            with torch.inference_mode():
                logits = _forward(replace(model, module=view), x, "classifier", ACCEPTED_OUTPUTS)
        except (SpurcliError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            if shape[1] == shape[2]:
                raise
            # e.g. a ViT given a non-square image: say why it got one
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SpurcliError(
                f"classifier '{model.name}' failed on a {shape[2]}x{shape[1]} image of "
                f"--preprocess spurious-imagenet ({first}): the released protocol resizes a "
                "spurious image's shorter side without cropping, so a non-square image reaches "
                "the model as it is (the released loader batches the benchmark's images, so "
                "they share one size)"
            ) from exc
        if out is None:
            out = np.zeros((len(protocol), logits.shape[1]), logits.dtype)
        elif logits.shape[1] != out.shape[1]:
            raise SpurcliError(f"classifier '{model.name}' changed its number of outputs")
        out[rows] = logits
    assert out is not None
    return out


def head_numbers(logits: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, ...]:
    """Top-1 (ImageNet-1k index, -1 for a class outside it), p(target) and the target's rank of
    (B, n) logits of an ImageNet-1k head or of an ImageNet-21k one (n in `ACCEPTED_OUTPUTS`).

    As the released Spurious ImageNet code reads a 21k head: the softmax runs over all of its
    outputs, p(target) is read at the target's column (`in21k_index`), and the top-1 is the
    argmax over all of them, so an image put in a 21k-only class is nobody's hit.
    """

    n = logits.shape[1]
    columns = in21k_index(n)[target]
    if (columns < 0).any():
        check_head_has_class(n, int(target[columns < 0][0]))
    top1 = head_in1k_top1(logits)  # a 1000-output head: its argmax
    return top1, metrics.target_prob(logits, columns), metrics.target_rank(logits, columns)


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
    model: LoadedModel, x: torch.Tensor, kind: str, classes: Sequence[int], *args: Any
) -> np.ndarray:
    """``model`` on ``x`` (which the next models see too), its output checked, on the CPU.

    A classifier must return (batch, n) logits with n one of ``classes`` (ImageNet-1k, or an
    ImageNet-21k head: `ACCEPTED_OUTPUTS`), an extractor (``classes`` empty) (batch, dim)
    features, a detector (``kind`` "detector", called with ``args`` = the query) (batch,)
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
    expected = f"({batch}, dim) features"
    if classes:
        heads = " or ".join(str(n) for n in classes)
        expected = f"({batch}, n) ImageNet logits, n = {heads}"
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
        else out.ndim != 2 or out.shape[0] != batch or (classes and out.shape[1] not in classes)
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
    top1: np.ndarray  # (C, N) argmax class (ties: lowest index; -1: outside ImageNet-1k)
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
                    "top1_index": top1,  # -1: a 21k head's class outside ImageNet-1k
                    "top1_name": names[top1] if top1 >= 0 else OUTSIDE_1K,
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
    options: ImagePass,
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

    ``queries``: ImageNet index -> the `spurcli.evaluate.detect.ObjectQuery` detectors get for
    items of that target. ``reducers``: extractor name -> a function of a batch's (b, D)
    features whose (b, ...) result is kept instead of them, so memory stays flat in the number
    of images (e.g. the cosine to the nearest reference image).
    """
    procs = Processes(options.device)
    mine = procs.shard(range(len(items)))
    if procs.world > 1:
        log.info(
            "process %d of %d scores %d of %d files", procs.rank, procs.world, len(mine), len(items)
        )
    if options.preprocess not in PROTOCOLS:
        raise UsageError(
            f"unknown --preprocess '{options.preprocess}'; use {' or '.join(PROTOCOLS)}"
        )
    # Under the Spurious ImageNet protocol the classifiers see the protocol's pixels, each at
    # its own input size, and only their own normalisation; extractors and detectors do not.
    views = [protocol_view(m) for m in models] if options.preprocess != "model" else []
    for model in (*models, *extractors, *detectors):
        model.module.to(procs.device).eval()
    shard = _Shard(items, mine, models, extractors, detectors, views)
    shard.queries, shard.reducers = dict(queries or {}), dict(reducers or {})
    if desc is None:
        n_real = sum(item.real for item in items)
        desc = f"scoring {len(items) - n_real} images" + (f" + {n_real} real" if n_real else "")
    loader = _loader(items, mine, options, sorted({v.size for v in views}), procs)
    for ids, batch, failed, protocol in console.track(loader, desc, total=len(loader)):
        for i, message in failed:
            if options.strict and procs.world == 1:
                raise SpurcliError(f"{message} (--strict: unreadable images are errors)")
            log.warning("skipped %s", message)
            shard.skipped.append((int(shard.index[i]), message))
        if batch is not None:
            shard.score_batch(ids.numpy(), batch, protocol, procs.device)
    return _gathered(shard, procs, options.strict)


def _loader(
    items: Sequence[Item],
    mine: Sequence[int],
    options: ImagePass,
    protocol_sizes: list[int],
    procs: Processes,
) -> torch.utils.data.DataLoader:
    workers = options.num_workers
    if workers is None:
        workers = _default_workers(len(mine), options.batch_size, procs.world, procs.device)
    dataset = SquareImages(
        [items[i].path for i in mine],
        options.image_size,
        protocol_sizes=protocol_sizes,
        real=[items[i].real for i in mine],
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=procs.device.type == "cuda",
    )


class _Shard:
    """This process's share of a pass: the numbers of its items, batch by batch."""

    def __init__(
        self,
        items: Sequence[Item],
        mine: Sequence[int],
        models: Sequence[LoadedModel],
        extractors: Sequence[LoadedModel],
        detectors: Sequence[LoadedModel],
        views: Sequence[Any],
    ) -> None:
        self.items, self.models, self.extractors, self.detectors = (
            items,
            models,
            extractors,
            detectors,
        )
        self.views, self.sizes = views, [v.size for v in views]
        self.queries: dict[int, Any] = {}
        self.reducers: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        n = len(mine)
        self.index = np.asarray(mine, np.int64)
        self.targets = np.array([items[i].target for i in mine], dtype=np.int64)
        self.extracted = np.array([not items[i].real for i in mine], bool)  # what extractors see
        self.top1 = np.zeros((len(models), n), np.int32)
        self.prob = np.zeros((len(models), n), np.float64)
        self.rank = np.zeros((len(models), n), np.int32)
        self.done = np.zeros(n, bool)
        self.features: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in extractors]
        self.presence: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in detectors]
        self.skipped: list[tuple[int, str]] = []

    def score_batch(self, ids: np.ndarray, batch: Any, protocol: Any, device: Any) -> None:
        """Every model on one decoded batch (``ids``: positions in this shard)."""
        seen = self.extracted[ids]
        # Made outside inference mode so the tensors keep a version counter (see `_forward`).
        with torch.no_grad():
            x = batch.to(device, non_blocking=True).float().div_(255)
            some = self.extractors or self.detectors
            x_seen = x if seen.all() or not some else x[torch.from_numpy(seen).to(x.device)]
        t = self.targets[ids]
        protocol_logits = [
            _protocol_forward(model, self.views[c], self.sizes[c], protocol, device)
            for c, model in enumerate(self.models if self.views else ())
        ]
        with torch.inference_mode():
            for c, model in enumerate(self.models):
                if self.views:
                    logits = protocol_logits[c]
                else:
                    logits = _forward(model, x, "classifier", ACCEPTED_OUTPUTS)
                self.top1[c, ids], self.prob[c, ids], self.rank[c, ids] = head_numbers(logits, t)
            for e, extractor in enumerate(self.extractors if seen.any() else ()):
                values = _forward(extractor, x_seen, "feature extractor", ())
                if extractor.name in self.reducers:
                    values = self.reducers[extractor.name](values)
                self.features[e].append((self.index[ids[seen]], values))
            t_seen = t[seen]
            for d, detector in enumerate(self.detectors):
                for k in np.unique(t_seen):  # one query per class; curate has a single class
                    rows = t_seen == k
                    part = x_seen if rows.all() else x_seen[torch.from_numpy(rows).to(x.device)]
                    values = _forward(detector, part, "detector", (), self.queries[int(k)])
                    self.presence[d].append((self.index[ids[seen][rows]], values))
        self.done[ids] = True


def _gathered(shard: _Shard, procs: Processes, strict: bool) -> Pass:
    """Every process gets every process's numbers; then all of them compute the same metrics."""
    done = shard.done
    parts = procs.gather(
        [
            {
                "index": shard.index[done],
                "top1": shard.top1[:, done],
                "prob": shard.prob[:, done],
                "rank": shard.rank[:, done],
                "features": shard.features,
                "presence": shard.presence,
                "skipped": shard.skipped,
            }
        ]
    )
    items = shard.items
    index = np.concatenate([p["index"] for p in parts])
    order = np.argsort(index, kind="stable")
    index = index[order]
    skipped_all = sorted(s for p in parts for s in p["skipped"])
    if strict and skipped_all:
        raise SpurcliError(f"{skipped_all[0][1]} (--strict: unreadable images are errors)")
    per_image = PerImage(
        classifiers=[m.name for m in shard.models],
        images=[items[i].name for i in index],
        target=np.array([items[i].target for i in index], np.int64),
        top1=np.concatenate([p["top1"] for p in parts], axis=1)[:, order],
        target_prob=np.concatenate([p["prob"] for p in parts], axis=1)[:, order],
        target_rank=np.concatenate([p["rank"] for p in parts], axis=1)[:, order],
    )
    found = {
        extractor.name: _in_item_order([c for p in parts for c in p["features"][e]], 2)
        for e, extractor in enumerate(shard.extractors)
    }
    scores = {
        detector.name: _in_item_order([c for p in parts for c in p["presence"][d]], 1)
        for d, detector in enumerate(shard.detectors)
    }
    return Pass(index, per_image, found, skipped_all, scores)


def _in_item_order(chunks: list[tuple[np.ndarray, np.ndarray]], ndim: int) -> np.ndarray:
    """(item numbers, values) chunks of a pass as one array of values in item order."""
    if not chunks:
        return np.zeros((0,) * ndim, np.float32)
    rows = np.concatenate([i for i, _ in chunks])
    values = np.concatenate([v for _, v in chunks])
    return values[np.argsort(rows, kind="stable")]
