"""The settings of the evaluation commands: `spurcli score`, `compare` and `curate` (also the
``[compare]`` and ``[curate]`` tables of a `spurcli run` config).

    from spurcli.evaluate.config import CompareConfig
    cfg = CompareConfig(target=94, classifiers=["resnet"], batch_size=8)
    cfg.check()

How images reach the models (`ImagePass`: preprocessing, batch size, device, decoding) is one
block of settings, declared once and shared by the three commands: `spurcli.evaluate.imagepass`
takes any of their configs as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spurcli.settings import check_fields, check_finite, device_option, option

# How classifiers get their pixels: each its own eval transform, or the released Spurious
# ImageNet code's (docs/spurious-imagenet.md).
Preprocessing = Literal["model", "spurious-imagenet"]
PROTOCOLS: tuple[str, ...] = ("model", "spurious-imagenet")

# --- settings several commands share: declared once here (each call makes a new field) ------


def target_option(note: str = "") -> Any:
    return option(None, f"ImageNet class: index or name{note}.", flags=("--target", "-t"))


def classifiers_option(default: list[str], help: str) -> Any:
    return option(default, help, flags=("--classifiers", "-c"), comma=True)


def classifier_weights_option() -> Any:
    return option([], "Classifier NAME=PATH or NAME=random; repeatable.", named_paths=True)


def bootstrap_option() -> Any:
    return option(
        1000,
        "Bootstrap resamples of the intervals; 0: off.",
        min=0,
        max=1_000_000,
        zero="no bootstrap intervals",
    )


def bootstrap_seed_option() -> Any:
    return option(
        0,
        "Seed of the bootstrap resamples (recorded in the JSON).",
        flags=("--bootstrap-seed", "--seed"),
    )


@dataclass
class ImagePass:
    """How images reach the models (none of these changes a number but ``image_size`` and
    ``preprocess``): one block, shared by score, compare and curate."""

    preprocess: Preprocessing = option(
        "model",
        "How classifiers get their pixels: 'model' (each its own eval transform) or "
        "'spurious-imagenet' (the released Spurious ImageNet code's resize, then the model's "
        "normalisation).",
    )
    # Lower it if a big classifier runs out of memory; it changes no number.
    batch_size: int = option(
        32, "Images per forward pass.", min=1, max=65_536, flags=("--batch-size", "-b")
    )
    device: str | None = device_option()
    strict: bool = option(False, "Fail on an unreadable image instead of skipping it.")
    num_workers: int | None = option(
        None, "Decoding processes (none: by device).", min=0, max=1024, flags=("--workers",)
    )
    image_size: int = option(
        384,
        "Side of the central square each image is resized to for the classifiers.",
        min=8,
        max=8192,
    )

    def check(self) -> None:
        """Every field's bounds (target and classifiers are checked where they are resolved)."""
        check_finite(self)
        check_fields(self)


IMAGE_PASS_FIELDS = tuple(ImagePass.__dataclass_fields__)


@dataclass
class ScoreConfig(ImagePass):
    """`spurcli score`: how spurious a set of images is for a class, per classifier and across
    them. The image-feeding settings (batch size to image size) serve every command that scores:
    none of them changes the numbers but ``image_size``."""

    target: int | str | None = target_option(" (none with --layout spurious-imagenet)")
    classifiers: list[str] = classifiers_option(
        [], "Classifier names (spurcli plugins), comma-separated."
    )
    real: Path | None = option(
        None, "Real images of the class (with --layout spurious-imagenet: the ImageNet val root)."
    )
    weights: list[str] = classifier_weights_option()
    layout: str = option("folder", "'folder' or 'spurious-imagenet'.")
    bootstrap: int = bootstrap_option()
    bootstrap_seed: int = bootstrap_seed_option()


@dataclass
class CompareConfig(ImagePass):
    """`spurcli compare`: two image sets scored side by side, their feature-space similarity and
    the HTML report; also the ``[compare]`` table of a `spurcli run` config."""

    target: int | str | None = target_option()
    classifiers: list[str] = classifiers_option([], "Classifier names, comma-separated.")
    weights: list[str] = classifier_weights_option()
    extractors: list[str] = option(
        ["robust-resnet50"],
        "Feature extractors, comma-separated ('' for none).",
        flags=("--extractors", "-e"),
        comma=True,
    )
    extractor_weights: list[str] = option(
        [], "Extractor NAME=PATH or NAME=random; repeatable.", named_paths=True
    )
    real: Path | None = option(
        None, "Real images of the class: ROC-AUC and AP in both score tables."
    )
    # All images are scored; this only bounds the report's grids.
    report_images: int = option(48, "Images per set shown in the report.", min=0, max=100_000)
    bootstrap: int = bootstrap_option()
    bootstrap_seed: int = bootstrap_seed_option()
    # auto: pairs when both sets name their images alike (the run's sets share seeds).
    paired: Literal["auto", "yes", "no"] = option(
        "auto", "auto, yes or no: are image i of A and of B a pair?"
    )
    # `run` adds the victim that is also the SFSL extractor (circular) unless exclude_circular
    # is false: a verdict the images were optimised against is not independent evidence.
    exclude_from_consensus: list[str] = option(
        [], "Classifiers left out of the consensus (still scored), comma-separated.", comma=True
    )

    def check(self) -> None:
        super().check()
        from spurcli.evaluate.differences import consensus_members

        consensus_members(self.classifiers, self.exclude_from_consensus)


@dataclass
class CurateConfig(ImagePass):
    """`spurcli curate`: generated images filtered into a publishable test set with a datasheet
    (docs/curate.md); also the ``[curate]`` table of a `spurcli run` config."""

    target: int | str | None = target_option()
    classifiers: list[str] = classifiers_option(
        ["resnet", "vit", "clip"], "Selection classifiers, comma-separated."
    )
    weights: list[str] = classifier_weights_option()
    min_fooled: int = option(1, "Keep if at least K selection classifiers say the target.")
    detectors: list[str] = option(
        ["owlv2"],
        "Detectors of the class's object, comma-separated, or 'none'.",
        flags=("--detectors", "-d"),
        comma=True,
    )
    detector_weights: list[str] = option(
        [], "Detector NAME=PATH or NAME=random; repeatable.", named_paths=True
    )
    max_presence: float = option(0.5, "Reject above this presence score (in [0, 1]).")
    object_prompts: list[str] = option(
        [], "Another text naming the object; repeatable.", flags=("--object-prompt",)
    )
    feature: str | None = option(None, "The spurious feature's text (none: Spurious ImageNet's).")
    references: Path | None = option(None, "Reject near-copies of these images.")
    extractor: str = option("robust-resnet50", "Feature space of the near-copy check.")
    extractor_weights: str | None = option(None, "File, or 'random'.", maybe_path=True)
    max_similarity: float = option(
        0.95, "Reject at or above this cosine to the nearest reference (in [-1, 1])."
    )
    evaluate_with: list[str] = option(
        [], "Held-out classifiers, comma-separated: the result.", comma=True
    )
    limit: int | None = option(None, "Keep at most N images (file order).", min=1, max=10**9)
    # On the command line --link/--copy.
    mode: Literal["copy", "link"] = option("copy", "copy the kept files, or symlink them.")
    overwrite: bool = option(False, "Replace an existing output folder.")
    strict: bool = option(False, "Unreadable image or nothing kept: an error.")
    # Kept images: 4x as many.
    report_images: int = option(
        12, "Rejected images shown per reason in the report of spurcli run.", min=0, max=100_000
    )
