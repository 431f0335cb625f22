"""The 1000 ImageNet-1k classes and the 100 Spurious ImageNet classes, shipped with the package.

    from spurcli.imagenet import resolve_class, search_classes, spurious_classes
    resolve_class("hummingbird")  # ImageNetClass(index=94, wnid='n01833805', ...)
    resolve_class("94"), resolve_class("n01833805")   # same class
    search_classes("cat")             # every class whose name or synonyms contain "cat"
    spurious_classes()[0]             # SpuriousClass(cls=<0 tench>, feature='humans')

Names are open_clip's cleaned-up class names (the ones CLIP zero-shot prompts use; the two
duplicates there are renamed "projectile" (744) and "sunglass" (836)); `lemmas` holds WordNet's
synonyms, which lookups also accept.
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
from dataclasses import dataclass
from importlib import resources

from spurcli.errors import UsageError

NUM_CLASSES = 1000
# The classic ImageNet eval transform (torchvision's reference, robustness's test set): shorter side
# to 256 (224 / 0.875), centre 224 crop, bilinear, ImageNet mean/std; for
# `spurcli.preprocess.preprocessed(net, **IMAGENET_EVAL)`.
IMAGENET_EVAL = {
    "input_size": (3, 224, 224),
    "crop_pct": 0.875,
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str
    lemmas: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.index} {self.name}"


@dataclass(frozen=True)
class SpuriousClass:
    cls: ImageNetClass
    feature: str  # what Spurious ImageNet found the class relies on, e.g. "red feeder/flower"


def _read_tsv(name: str) -> list[dict[str, str]]:
    text = resources.files("spurcli").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


@functools.cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    rows = _read_tsv("imagenet_classes.tsv")
    classes = tuple(
        ImageNetClass(
            int(r["index"]),
            r["wnid"],
            r["name"],
            tuple(s.strip() for s in r["lemmas"].split(",")),
        )
        for r in rows
    )
    assert [c.index for c in classes] == list(range(NUM_CLASSES))
    return classes


@functools.cache
def spurious_classes() -> tuple[SpuriousClass, ...]:
    classes = imagenet_classes()
    return tuple(
        SpuriousClass(classes[int(r["imagenet_index"])], r["spurious_feature"])
        for r in _read_tsv("spurious_imagenet_classes.tsv")
    )


def class_names() -> list[str]:
    return [c.name for c in imagenet_classes()]


def resolve_class(query: str | int) -> ImageNetClass:
    """One class from an index, a WordNet id, or an exact (case-insensitive) name or synonym."""
    classes = imagenet_classes()
    text = str(query).strip()
    if _is_int(text):
        index = int(text)
        if not 0 <= index < NUM_CLASSES:
            raise UsageError(f"ImageNet class index {index} out of range 0-{NUM_CLASSES - 1}")
        return classes[index]
    key = text.lower()
    for c in classes:
        if c.wnid == key or c.name.lower() == key:
            return c
    matches = [c for c in classes if key in (lemma.lower() for lemma in c.lemmas)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join(str(c) for c in matches)
        raise UsageError(f"'{text}' names several ImageNet classes ({options}); pass the index")
    # "cat" should suggest "tabby cat", not the spelling-alike "crate": whole words first.
    words = [c for c in classes if key in c.name.lower().split()]
    names = {c.name.lower(): c for c in classes}
    close = [names[n] for n in difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)]
    suggestions = (words or close or search_classes(text))[:3]
    hint = f"; did you mean {', '.join(str(c) for c in suggestions)}?" if suggestions else ""
    raise UsageError(f"unknown ImageNet class '{text}'{hint} (see `spurcli classes QUERY`)")


def search_classes(query: str | None = None) -> list[ImageNetClass]:
    """Classes matching an index, WordNet id, or a substring of the name or a synonym."""
    classes = imagenet_classes()
    if not query:
        return list(classes)
    text = query.strip().lower()
    if _is_int(text):
        return [classes[int(text)]] if 0 <= int(text) < NUM_CLASSES else []
    return [
        c
        for c in classes
        if c.wnid == text
        or text in c.name.lower()
        or any(text in lemma.lower() for lemma in c.lemmas)
    ]


def _is_int(text: str) -> bool:
    # Not str.isdigit(): that accepts "²", which int() rejects; "-1" is an index out of range.
    return re.fullmatch(r"-?[0-9]+", text) is not None
