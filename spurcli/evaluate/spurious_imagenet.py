"""Spurious ImageNet as its released code evaluates it (YanNeu/spurious_imagenet), torch-free.

    import numpy as np
    from PIL import Image
    from spurcli.evaluate.spurious_imagenet import (
        in21k_index, head_in1k_top1, protocol_image, spurious_score_joint,
        spurious_score_rows, write_spurious_score_csv,
    )

    img = Image.new("RGB", (600, 400))
    protocol_image(img, 224, real=True).size    # (224, 224): bicubic to 384x256, centre crop
    protocol_image(img, 224, real=False).size   # (336, 224): bicubic, shorter side 224, no crop

    in21k_index(21843)[94]                      # 1474: hummingbird's column in a BiT-M head
    logits = np.random.default_rng(0).normal(size=(2, 21843))
    head_in1k_top1(logits)                      # 1k index of each argmax, -1 if not a 1k class

    target = np.array([94, 94, 94, 94])         # two real, two spurious images of class 94
    prob = np.array([0.9, 0.4, 0.5, 0.1])       # each image's probability of its own class
    top1 = np.array([94, 12, 94, 3])
    real = np.array([True, True, False, False])
    rows = spurious_score_rows(target[real], prob[real], top1[real],
                               target[~real], prob[~real], top1[~real])
    rows[0]["average_precision"]                # 0.8333...: the released "Spurious AUC"
    spurious_score_joint(target[real], prob[real], target[~real], prob[~real])
    write_spurious_score_csv(rows, "spurious_score.csv")

What the released code does, and so what this module does (file:line in that repository):

- Pixels (dataset/spurious_dataset.py:58-89, utils/datasets/augmentations/imagenet_augmentation
  .py:54-62,71): every file is read as RGB (torchvision's default_loader); an ImageNet val image
  gets a bicubic resize of its shorter side to ``int(256 / 224 * size)`` and a ``size`` x
  ``size`` centre crop, a spurious image only the bicubic resize of its shorter side to
  ``size`` (no crop), then ToTensor (uint8 / 255). The model's mean/std normalisation comes
  after, inside the model (utils/model_normalization.py:19-21). ``size`` is the height of
  timm's ``test_input_size``, else of its ``input_size`` (dataset/spurious_score.py:200-205;
  `protocol_input_size`); the 256/224 ratio and bicubic are used for every model, whatever its
  own crop_pct and interpolation.
- Scores (dataset/spurious_score.py:73-183): softmax over *all* outputs of the head (1000 or
  21k), p_k read at class k's column; per class k, the real images of k are positives and the
  spurious images of k negatives, scored by sklearn's ``average_precision_score`` (the output
  calls it "AUC"; it is AP). The "Mean SpuriousScore" is the mean of those APs; the "Joint
  SpuriousScore" the AP of all classes' images pooled
  (`spurcli.evaluate.metrics.joint_ranking_scores`).
  "Frac ... labeled as": the fraction whose argmax over the whole head is class k.
- 21k heads (dataset/spurious_score.py:34-111): 21843 outputs use Google's ImageNet-21k list,
  21841 the fall11 list; each 1k class's column is the position of its WordNet id in the list
  (`in21k_index`, data: spurcli/data/imagenet21k_index.tsv, made by examples/make_in21k_index.py
  from timm's copies of the same two lists). Any other size is refused.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

from spurcli import imagenet
from spurcli.errors import SpurcliError
from spurcli.evaluate import metrics
from spurcli.fileio import atomic_path
from spurcli.images import ImageReadError
from spurcli.text import csv_cell

# The head sizes the released code scores (dataset/spurious_score.py:96-111): ImageNet-1k,
# Google's ImageNet-21k (BiT-M, ViT orig_in21k, EfficientNetV2 in21k) and fall11 "22k"
# (ConvNeXt fb_in22k, BEiT, Swin in22k). 10450 (ImageNet-21k-P) it raises on, as we do.
ACCEPTED_OUTPUTS: tuple[int, ...] = (1000, 21843, 21841)
_HEAD_NAMES = {1000: "ImageNet-1k", 21843: "ImageNet-21k, Google", 21841: "ImageNet-22k, fall11"}
# The val resize before the crop: 256 for a 224 crop, the same ratio at every input size.
VAL_RESIZE_RATIO = 256 / 224
SPURIOUS_SCORE_COLUMNS = (
    "classifier",
    "preprocess",  # how the classifier got its pixels: model, or the released protocol's
    "input_size",  # the side it was fed at under the protocol (empty: its own transform)
    "index",
    "wnid",
    "class",
    "average_precision",
    "roc_auc",
    "val_mean_prob",
    "spurious_mean_prob",
    "val_frac_labelled",
    "spurious_frac_labelled",
    "n_val",
    "n_spurious",
)

# ---------------------------------------------------------------------------------------------
# Pixels


def protocol_resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(shorter)``: the shorter side becomes
    ``shorter``, the longer ``int(shorter * long / short)`` (truncated, not rounded)."""
    if width <= 0 or height <= 0 or shorter <= 0:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> {shorter}")
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shorter * long / short)  # same operation order as torchvision: exact ints
    return (shorter, new_long) if width <= height else (new_long, shorter)


def protocol_image(img: Image.Image, size: int, real: bool) -> Image.Image:
    """One image as the released code feeds it to a model of input ``size``, before ToTensor.

    ``real=True`` (ImageNet val): bicubic resize of the shorter side to ``int(256/224*size)``,
    then the central ``size`` x ``size`` crop. ``real=False`` (a Spurious ImageNet image):
    bicubic resize of the shorter side to ``size`` and no crop, so a non-square image stays
    non-square (the released loader batches them, so its images must share one shape).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    # The released loader opens every file with .convert("RGB"): grey, palette and RGBA images
    # become RGB first (alpha dropped, not composited), and the resize runs on RGB.
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    # int(256 / 224 * size), not int(size * 256 / 224): the released expression, in its order.
    shorter = int(VAL_RESIZE_RATIO * size) if real else size
    new_size = protocol_resized_size(rgb.width, rgb.height, shorter)
    # torchvision returns the image itself when it already has the size; PIL's resize to the
    # same size is a copy, so the pixels agree either way.
    resized = rgb.resize(new_size, Image.Resampling.BICUBIC)
    if not real:
        return resized
    # torchvision's center_crop: offsets int(round(d / 2.0)), Python's round (half to even, and
    # already an int); the resized shorter side is >= size, so no padding is ever needed.
    left = round((resized.width - size) / 2.0)
    top = round((resized.height - size) / 2.0)
    return resized.crop((left, top, left + size, top + size))


def released_loader(path: str | os.PathLike[str]) -> Image.Image:
    """An image file as torchvision's ``default_loader`` (the released code's) reads it:
    ``Image.open(...).convert("RGB")``, so no EXIF rotation, an alpha channel dropped (not
    composited on white), 16-bit values clipped: unlike `spurcli.images.read_image`, on purpose.
    An unreadable file raises `spurcli.images.ImageReadError`."""

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: not an image Pillow can read ({exc})") from None


def protocol_input_size(default_cfg: Mapping[str, Any]) -> int:
    """The ``size`` the released code evaluates a timm model at: the height of its
    ``test_input_size`` if the config has one, else of ``input_size``, else 224."""
    for key in ("test_input_size", "input_size"):
        if key in default_cfg:
            return int(default_cfg[key][1])  # (channels, height, width); the code takes [1]
    return 224


# ---------------------------------------------------------------------------------------------
# Heads: ImageNet-1k and the two ImageNet-21k layouts


def check_head_outputs(n_outputs: int) -> None:
    """Refuse a head the released code cannot read ImageNet-1k classes from (SpurcliError)."""
    if n_outputs not in ACCEPTED_OUTPUTS:
        accepted = ", ".join(f"{n} ({_HEAD_NAMES[n]})" for n in ACCEPTED_OUTPUTS)
        raise SpurcliError(
            f"a classifier with {n_outputs} outputs has no known ImageNet-1k columns; "
            f"Spurious ImageNet accepts {accepted}"
        )


@functools.cache
def _in21k_table() -> dict[int, np.ndarray]:
    text = resources.files("spurcli").joinpath("data", "imagenet21k_index.tsv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    # The table is in spurcli's class order; a mismatch would silently shift every column.
    if [r["wnid"] for r in rows] != [c.wnid for c in imagenet.imagenet_classes()]:
        raise AssertionError("imagenet21k_index.tsv is not in spurcli's ImageNet-1k order")
    table = {}
    for n in ACCEPTED_OUTPUTS[1:]:
        column = np.array([int(r[f"head_{n}"]) for r in rows], dtype=np.int64)
        column.setflags(write=False)  # cached and shared: no caller may change it
        table[n] = column
    return table


def in21k_index(n_outputs: int) -> np.ndarray:
    """Column of each ImageNet-1k class (spurcli's order) in a head of ``n_outputs``, -1 where
    the head has none (class 850, teddy bear, is in neither 21k list). Read-only int64 (1000,).

    1000 gives the identity. Refuses (SpurcliError) a size not in `ACCEPTED_OUTPUTS`.
    """
    check_head_outputs(n_outputs)
    if n_outputs == imagenet.NUM_CLASSES:
        identity = np.arange(imagenet.NUM_CLASSES, dtype=np.int64)
        identity.setflags(write=False)
        return identity
    return _in21k_table()[n_outputs]


def check_head_has_class(n_outputs: int, class_index: int) -> None:
    """Refuse to score class ``class_index`` with a head that has no column for it."""
    if in21k_index(n_outputs)[class_index] < 0:
        k = imagenet.imagenet_classes()[class_index]
        raise SpurcliError(
            f"class {k} ({k.wnid}) has no output in a {n_outputs}-class ImageNet-21k head"
        )


def _head_logits(logits: Any) -> np.ndarray:
    array = np.asarray(logits)
    if array.ndim != 2:
        raise ValueError(f"expected (batch, outputs) logits, got shape {array.shape}")
    check_head_outputs(array.shape[1])
    return array


def head_in1k_top1(logits: Any) -> np.ndarray:
    """(B, n) logits -> (B,) ImageNet-1k index of each row's argmax over *all* outputs (first
    maximum on ties, like torch.max), -1 when it is a class outside ImageNet-1k.

    The released "Frac ... labeled as" compares this argmax with class k's column, so an image
    a 21k head puts in a finer 21k-only class is not labelled k.
    """
    array = _head_logits(logits)
    index = in21k_index(array.shape[1])
    to_1k = np.full(array.shape[1], -1, dtype=np.int64)
    mapped = index >= 0
    to_1k[index[mapped]] = np.flatnonzero(mapped)
    return to_1k[np.argmax(array, axis=1)]


# ---------------------------------------------------------------------------------------------
# The released per-class table (spurious_score.txt) and its pooled score


def _per_class(target: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(values)[np.asarray(target) == k]


def spurious_score_rows(
    real_target: Sequence[int] | np.ndarray,
    real_prob: Sequence[float] | np.ndarray,
    real_top1: Sequence[int] | np.ndarray,
    spurious_target: Sequence[int] | np.ndarray,
    spurious_prob: Sequence[float] | np.ndarray,
    spurious_top1: Sequence[int] | np.ndarray,
) -> list[dict[str, Any]]:
    """The rows of the released spurious_score.txt, one per class of the spurious images, by
    class index (the released file lists them in set order).

    Per image: ``*_target`` its class k, ``*_prob`` its p_k (softmax over the whole head),
    ``*_top1`` the 1k index of its argmax (`head_in1k_top1`). Real images of classes without
    spurious images are left out, as the released code loads only the matching val classes.
    Per class k: ``average_precision`` (the released "Spurious AUC") and ``roc_auc`` of real
    (positive) vs spurious (negative) images on p_k; the mean p_k of each set ("Validation /
    Spurious Mean Prob"); the fraction of each set whose top-1 is k ("Frac Validation / Spurious
    labeled as"); and the two set sizes.
    """
    arrays = [np.asarray(a) for a in (real_target, real_prob, real_top1)]
    arrays += [np.asarray(a) for a in (spurious_target, spurious_prob, spurious_top1)]
    if len({a.shape for a in arrays[:3]}) != 1 or len({a.shape for a in arrays[3:]}) != 1:
        raise ValueError("target, prob and top1 need one entry per image in each set")
    r_target, r_prob, r_top1, s_target, s_prob, s_top1 = arrays
    classes = imagenet.imagenet_classes()
    rows = []
    for k in sorted({int(t) for t in s_target}):
        r_p, s_p = _per_class(r_target, r_prob, k), _per_class(s_target, s_prob, k)
        if r_p.size == 0:
            raise ValueError(f"class {classes[k]} has spurious images but no real ones")
        rows.append(
            {
                "index": k,
                "wnid": classes[k].wnid,
                # The released table's name: the first WordNet lemma (torchvision's ImageNet
                # classes[k][0]), which repeats for 134/517 "crane"; spurcli's names do not.
                "class": classes[k].lemmas[0],
                "average_precision": metrics.average_precision_of_sets(r_p, s_p),
                "roc_auc": metrics.roc_auc_of_sets(r_p, s_p),
                "val_mean_prob": float(np.mean(r_p)),
                "spurious_mean_prob": float(np.mean(s_p)),
                "val_frac_labelled": float(np.mean(_per_class(r_target, r_top1, k) == k)),
                "spurious_frac_labelled": float(np.mean(_per_class(s_target, s_top1, k) == k)),
                "n_val": int(r_p.size),
                "n_spurious": int(s_p.size),
            }
        )
    return rows


def spurious_score_joint(
    real_target: Sequence[int] | np.ndarray,
    real_prob: Sequence[float] | np.ndarray,
    spurious_target: Sequence[int] | np.ndarray,
    spurious_prob: Sequence[float] | np.ndarray,
) -> dict[str, float]:
    """The pooled ROC-AUC and AP (`spurcli.evaluate.metrics.joint_ranking_scores`) over the
    classes of the
    spurious images, each image scored by the probability of its own class; real images of
    other classes are left out, as in `spurious_score_rows`. The released "Joint SpuriousScore"
    is ``joint_average_precision``."""
    r_target, s_target = np.asarray(real_target), np.asarray(spurious_target)
    ks = sorted({int(t) for t in s_target})
    return metrics.joint_ranking_scores(
        {k: _per_class(r_target, real_prob, k) for k in ks},
        {k: _per_class(s_target, spurious_prob, k) for k in ks},
    )


def write_spurious_score_csv(
    rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]
) -> None:
    """`spurious_score_rows`, each with ``classifier``, ``preprocess`` and ``input_size`` keys
    added, as CSV (columns `SPURIOUS_SCORE_COLUMNS`), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SPURIOUS_SCORE_COLUMNS)
        writer.writeheader()
        for row in rows:  # class names are data: a "=..." name must not run in a spreadsheet
            writer.writerow({k: csv_cell(v) for k, v in row.items()})
