"""Object-presence detectors: is the class object itself in an image? (`spurcli curate`)

    from spurcli import imagenet
    from spurcli.evaluate.detect import object_query
    from spurcli.plugins import load_detectors
    query = object_query(imagenet.resolve_class("hummingbird"), feature="red flower")
    query.names                      # ('hummingbird',) + WordNet synonyms + any extra prompts
    owl = load_detectors(["owlv2"], {"owlv2": "random"})[0]
    owl.module(images, query)        # (B,) presence in [0, 1]; 0.5 means undecided

A detector arrives through the ``register_detectors`` hook like classifiers and extractors do
(see `spurcli.hookspecs`). The core builds the query from the class (its ImageNet name, then its
WordNet synonyms, then ``--object-prompt`` texts; repeats dropped) and hands the same query to
every detector: each plugin turns names into its own prompts ("a photo of a {}" for CLIP, the bare
name for OWLv2's open-vocabulary queries). This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spurcli.imagenet import ImageNetClass


@dataclass(frozen=True)
class ObjectQuery:
    """What a detector looks for in the images of one class."""

    index: int  # the ImageNet class index
    names: tuple[str, ...]  # texts naming the object: class name, synonyms, --object-prompt
    feature: str | None = None  # the spurious feature's text ("red flower"), if known

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("an ObjectQuery needs at least one name")


def object_query(
    cls: ImageNetClass, extra: Sequence[str] = (), feature: str | None = None
) -> ObjectQuery:
    """The query for class ``cls``: its name, its synonyms (without Latin binomials, which
    open-vocabulary text towers rarely know), then ``extra`` prompts; repeats dropped."""
    names = [cls.name, *(lemma for lemma in cls.lemmas if not _binomial(lemma)), *extra]
    unique = dict.fromkeys(n.strip() for n in names if n.strip())  # keeps order, drops repeats
    return ObjectQuery(cls.index, tuple(unique), (feature or "").strip() or None)


def _binomial(lemma: str) -> bool:
    """'Carduelis carduelis', 'Tinca tinca': a capitalised genus and a lower-case species."""
    words = lemma.split()
    return len(words) == 2 and words[0][:1].isupper() and words[1].islower() and lemma.isascii()
