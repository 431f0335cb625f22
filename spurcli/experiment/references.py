"""The references of an experiment, split by the seed into those trained on and those held out
for judging the generated images (they must never be the same images).

A held-out image that is a near-duplicate of a training one (the same photo resized or
re-encoded, or a crop sharing pixels with it: `spurcli.experiment.duplicates`) is not independent
of what the arms were trained on, so it moves into the training share, and so does whatever is
a near-duplicate of a moved one; if nothing would stay held out, the split is refused. One log
line says what moved and why, and ``split.json``'s ``moved`` lists it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spurcli.errors import UsageError
from spurcli.experiment.duplicates import Fingerprint, near_duplicate
from spurcli.images import ImageReadError, find_images, read_image, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSplit:
    """The reference images, split by the seed into those trained on and those held out."""

    source: Path
    train: list[Path]
    held_out: list[Path]
    # held-out images moved into training: {"file", "duplicate_of", "why"} (relative paths)
    moved: list[dict[str, str]] = field(default_factory=list)
    # with near_duplicate_references = "keep": held-out images kept although they duplicate a
    # training one (the same entries): the held-out set is then not independent
    not_independent: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:

        def files(paths: list[Path]) -> list[dict[str, str]]:
            return [
                {"file": p.relative_to(self.source).as_posix(), "sha256": sha256_file(p)}
                for p in paths
            ]

        record = {
            "source": str(self.source),
            "train": files(self.train),
            "held_out": files(self.held_out),
        }
        if self.moved:  # (a split without any keeps the record of older runs)
            record["moved"] = self.moved
        if self.not_independent:
            record["not_independent"] = self.not_independent
        return record


NEAR_DUPLICATES = ("move", "keep")


def split_references(
    source: Path, n_train: int, seed: int, near_duplicates: str = "move"
) -> ReferenceSplit:
    """``n_train`` images of ``source`` (drawn by ``seed``) to train on, the rest held out.

    ``n_train`` 0, or not fewer than the images there are, trains on all and holds none out.
    ``near_duplicates``: "move" a held-out near-duplicate of a training image into training
    (refused if none would be left), or "keep" it held out and record that the held-out set
    is not independent (`ReferenceSplit.not_independent`; one warning line).
    """
    if near_duplicates not in NEAR_DUPLICATES:
        raise UsageError(
            f"near_duplicate_references must be one of {', '.join(NEAR_DUPLICATES)}, "
            f"got '{near_duplicates}'"
        )

    files = find_images(source)
    if n_train <= 0 or n_train >= len(files):
        if n_train > 0:
            log.warning(
                "%s holds %d reference images and train_references is %d: none is held out, "
                "so the generated images are judged against the images they were trained on",
                source,
                len(files),
                n_train,
            )
        return ReferenceSplit(source, files, [])
    chosen = set(random.Random(seed).sample(range(len(files)), n_train))
    train = [f for i, f in enumerate(files) if i in chosen]
    held_out = [f for i, f in enumerate(files) if i not in chosen]
    moved = _near_duplicates(source, train, held_out)
    if moved and near_duplicates == "keep":
        log.warning(
            "references: %d held-out image(s) are near-duplicates of training ones and are kept "
            "held out (near_duplicate_references = keep): the held-out set is not independent: %s",
            len(moved),
            "; ".join(f"{m['file']} ~ {m['duplicate_of']} ({m['why']})" for m in moved),
        )
        return ReferenceSplit(source, train, held_out, [], moved)
    if moved:
        gone = {m["file"] for m in moved}
        held_out = [f for f in held_out if f.relative_to(source).as_posix() not in gone]
        pairs = [f"{m['file']} ~ {m['duplicate_of']} ({m['why']})" for m in moved]
        if not held_out:
            raise UsageError(
                f"{source}: every held-out reference is a near-duplicate of a training one "
                f"({'; '.join(pairs[:3])}): "
                "nothing independent is left to judge against; add other photos, lower "
                'train_references, or set near_duplicate_references = "keep" (a demo)'
            )
        train = [f for f in files if f in set(train) or f.relative_to(source).as_posix() in gone]
        log.warning(
            "references: moved %d held-out image(s) into training as near-duplicates of "
            "training ones: %s",
            len(moved),
            "; ".join(pairs),
        )
    return ReferenceSplit(source, train, held_out, moved)


def _near_duplicates(source: Path, train: list[Path], held_out: list[Path]) -> list[dict[str, str]]:
    """Held-out images that are near-duplicates of a training image, or of one moved before
    them (the closure: a chain of crops is one photo), with what they duplicate and why."""

    def fingerprint(path: Path) -> Fingerprint | None:
        try:
            return Fingerprint.of(read_image(path))
        except ImageReadError:
            return None  # scoring skips (or refuses) it and says so; nothing to compare here

    prints = {p: fingerprint(p) for p in [*train, *held_out]}
    trained = [p for p in train if prints[p] is not None]
    waiting = [p for p in held_out if prints[p] is not None]
    moved: list[dict[str, str]] = []
    found = True
    while found:
        found = False
        for candidate in list(waiting):
            for other in trained:
                why = near_duplicate(prints[candidate], prints[other])  # type: ignore[arg-type]
                if why is not None:
                    moved.append(
                        {
                            "file": candidate.relative_to(source).as_posix(),
                            "duplicate_of": other.relative_to(source).as_posix(),
                            "why": why,
                        }
                    )
                    waiting.remove(candidate)
                    trained.append(candidate)
                    found = True
                    break
    return moved
