"""What `spurcli curate` decides per image, and why: the reasons an image is rejected."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from spurcli import imagenet
from spurcli.evaluate.config import CurateConfig
from spurcli.evaluate.metrics import wilson_interval

log = logging.getLogger(__name__)

REASONS = ("unreadable", "object-present", "not-fooling", "near-copy", "over-limit")


NO_DETECTOR = "none"


SELECTION_NOTE = (
    "selected by this classifier's own verdict: its rate on the kept set is biased by "
    "construction and says nothing about the classifier"
)


UNCHECKED_NOTE = (
    "No image was checked for the class object (--detectors none): kept images may show the "
    "object itself, and then they are not spurious."
)


def spurious_rate(fooled: Sequence[bool]) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci95"}`` of a classifier on a set (rate None for an empty set)."""

    k, n = int(sum(fooled)), len(fooled)
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": None}
    return {"k": k, "n": n, "rate": k / n, "ci95": wilson_interval(k, n)}


@dataclass
class Verdict:
    """One input image: kept or not, why not, and the numbers that decided it."""

    file: str  # relative to the input folder, '/'-separated
    reasons: list[str]  # empty: kept
    target_prob: dict[str, float] = field(default_factory=dict)  # classifier -> p(target)
    fooled: dict[str, bool] = field(default_factory=dict)  # classifier -> top-1 is the target
    presence: dict[str, float] = field(default_factory=dict)  # detector -> presence score
    similarity: float | None = None  # cosine to the nearest reference image
    nearest: str | None = None  # that reference, relative to the references folder
    message: str | None = None  # why an unreadable file could not be read

    @property
    def kept(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {"kept": self.kept, **asdict(self)}


def decide(
    verdict: Verdict, selection: Sequence[str], config: CurateConfig, have_refs: bool
) -> list[str]:
    """Every reason (in `REASONS` order) that rejects a readable image."""
    reasons = []
    if any(p > config.max_presence for p in verdict.presence.values()):
        reasons.append("object-present")
    if sum(verdict.fooled[c] for c in selection) < config.min_fooled:
        reasons.append("not-fooling")
    if have_refs and verdict.similarity is not None and verdict.similarity >= config.max_similarity:
        reasons.append("near-copy")
    return reasons


def detector_names(config: CurateConfig) -> list[str]:
    return [] if config.detectors == [NO_DETECTOR] else list(config.detectors)


def default_feature(index: int) -> str | None:
    """Spurious ImageNet's feature text for the class ("red feeder/flower"), if it has one."""

    return next((s.feature for s in imagenet.spurious_classes() if s.cls.index == index), None)
