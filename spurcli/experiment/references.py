"""The references of an experiment, split by the seed into those trained on and those held out
for judging the generated images (they must never be the same images)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spurcli.images import find_images, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceSplit:
    """The reference images, split by the seed into those trained on and those held out."""

    source: Path
    train: list[Path]
    held_out: list[Path]

    def to_json(self) -> dict[str, Any]:

        def files(paths: list[Path]) -> list[dict[str, str]]:
            return [
                {"file": p.relative_to(self.source).as_posix(), "sha256": sha256_file(p)}
                for p in paths
            ]

        return {
            "source": str(self.source),
            "train": files(self.train),
            "held_out": files(self.held_out),
        }


def split_references(source: Path, n_train: int, seed: int) -> ReferenceSplit:
    """``n_train`` images of ``source`` (drawn by ``seed``) to train on, the rest held out.

    ``n_train`` 0, or not fewer than the images there are, trains on all and holds none out.
    """

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
    return ReferenceSplit(source, train, [f for i, f in enumerate(files) if i not in chosen])
