"""The top level of a `spurcli run` config: the experiment's own keys, and those it shares with
its tables."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from spurcli.errors import UsageError
from spurcli.generate.config import DEFAULT_MODEL
from spurcli.settings import check_finite, option

TABLES = ("finetune", "sample", "compare", "curate")  # the tables of a run config


@dataclass
class ExperimentConfig:
    """The top level of a `spurcli run` config: the experiment's own keys, and keys shared with
    the tables where the names match (model, target, seed, ...: a table may override them)."""

    out: Path | None = option(None, "The experiment folder.", required=True)
    model: str = option(DEFAULT_MODEL, "The base model of every arm.", maybe_path=True)
    revision: str | None = option(None, "The base hub model's branch, tag or commit (None: main).")
    target: int | str | None = option(
        None, "The ImageNet class the feature fools classifiers into.", required=True
    )
    class_noun: str | None = option(None, "What the references show, e.g. flower.", required=True)
    instance_dir: Path | None = option(
        None, "The reference images of the spurious feature.", required=True
    )
    identifier: str = option("sks", "The rare token [V] stands for.")
    seed: int = option(0, "Shared by finetune and sample unless their tables say otherwise.")
    title: str | None = option(None, "Report title; none: '<target>: <class_noun>'.")
    # Shown at the top of the report, before the numbers, so a reader of the report alone knows.
    notes: list[str] = option(
        [], "Lines heading the report: what the experiment can and cannot show."
    )
    recontext: bool = option(True, "Also sample every prompt in the recontextualisation settings.")
    baseline: bool = option(True, "Also sample the untuned model (prompts without [V]).")
    # DreamBooth recipes use 3-5 images; the rest judge the generated images.
    train_references: int = option(
        5,
        "Train on this many references (drawn by the seed), hold out the rest; 0: all.",
        min=0,
        max=1_000_000,
    )
    # Held-out images that share pixels with training ones are not independent evidence.
    near_duplicate_references: str = option(
        "move",
        "A held-out reference that is a near-duplicate of a training one (same photo, resized, "
        "a crop sharing pixels): 'move' it into training (refused if none is left), or 'keep' "
        "it and say the held-out set is not independent (demos cut from one photo).",
    )
    # Without that arm nothing says what SFSL adds over DreamBooth.
    dreambooth_arm: bool = option(
        True, "Also train DreamBooth alone (sfsl_weight 0, the same settings and seeds)."
    )
    # A spurious image shows no object of the class: with a detector the headline rate is the
    # rate among the images where it finds none (docs/experiment.md).
    detector: str | None = option(
        None, "Object detector (a registered one, e.g. owlv2) run on every set; none: no check."
    )
    detector_weights: str | None = option(None, "The detector's weights: a file or 'random'.")
    max_presence: float = option(
        0.5, "An image with a presence score above this shows the object (in [0, 1])."
    )
    exclude_circular: bool = option(
        True,
        "Keep a victim that is also the SFSL extractor (trained against) out of the consensus.",
    )
    # One training run per arm makes every interval a statement about two checkpoints; the
    # training run is the unit of inference (docs/experiment.md). 1 is allowed, and said.
    replicates: int = option(
        3,
        "Training runs per arm, each with its own training seed and reference split, shared "
        "by the arms; 1: unreplicated.",
        min=1,
        max=1000,
    )
    # Declared before any number exists: the headline, tested alone; every other test is
    # secondary and Holm-corrected.
    primary: str = option(
        "sfsl-vs-dreambooth",
        "The one pre-declared comparison: a difference A-vs-B of the non-circular consensus rate.",
    )

    def check(self, path: str | os.PathLike[str] = "run config") -> None:
        """One line naming the file and the key: a run config has no command-line options."""
        check_finite(self)
        for fld in dataclasses.fields(self):
            value = getattr(self, fld.name)
            if fld.metadata.get("required") and value in (None, ""):
                raise UsageError(f"{path}: `{fld.name}` is required at the top of a run config")
        if self.near_duplicate_references not in ("move", "keep"):
            raise UsageError(
                f"{path}: near_duplicate_references must be 'move' or 'keep', got "
                f"'{self.near_duplicate_references}'"
            )
        if not 0.0 <= self.max_presence <= 1.0:
            raise UsageError(f"{path}: max_presence must be in [0, 1], got {self.max_presence}")
        if self.train_references < 0:
            raise UsageError(f"{path}: train_references must be 0 (all) or more")
