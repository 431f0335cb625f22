"""`spurcli curate`: turn a folder of generated images into a test set one can publish.

    from spurcli.evaluate.curate import CurateConfig, curate
    result = curate("samples/generated", "datasets/hummingbird", CurateConfig(
        target="hummingbird", classifiers=["resnet", "vit"], min_fooled=1,
        detectors=["owlv2"], max_presence=0.5,
        references="refs/", extractor="robust-resnet50", max_similarity=0.95,
        evaluate_with=["clip"]))
    result.counts          # {"images": 64, "kept": 21, "object-present": 30, "not-fooling": ...}
    result.to_json()       # what datasheet.json holds

    spurcli curate samples/generated --target hummingbird --out datasets/hummingbird \
        --classifiers resnet,vit --detectors owlv2 --references refs/ --evaluate-with clip
    spurcli score datasets/hummingbird --layout spurious-imagenet --real imagenet/val -c clip

Every image gets a verdict: kept, or rejected with every reason that applies:

- ``unreadable``: the file does not decode;
- ``object-present``: a detector's presence score for the class object is above
  ``max_presence`` (the image shows a hummingbird: it is not a *spurious* hummingbird);
- ``not-fooling``: fewer than ``min_fooled`` of the selection classifiers put it in the class;
- ``near-copy``: its cosine to the nearest reference image in the extractor's feature space is
  at least ``max_similarity`` (a memorised reference is not a new test image);
- ``over-limit``: it passed every filter but ``limit`` images were already kept (file order).

The classifiers (selection and evaluation), the detectors and the extractor run in one pass of
`spurcli.evaluate.imagepass.score_items` over the same decoded batches; per image only a few
numbers are kept
(the extractor's features are reduced to the nearest reference's cosine batch by batch), so
memory is flat in the number of images. Nothing in the input folder is changed.

The output folder is owned and locked like every command's (`spurcli.fileio.output_folder`):
new, empty or a dataset curate made; one curate at a time; nothing but a previous dataset's
own files is ever replaced. The dataset is built in a temporary folder inside it and moved in:

    DATASET_DIR/class_spurious_<index>_<slug>/<the kept files, relative paths kept>
    DATASET_DIR/metadata.jsonl    one row per kept image (Hugging Face `imagefolder` format)
    DATASET_DIR/verdicts.jsonl    one row per input image: verdict, reasons, numbers
    DATASET_DIR/datasheet.md      how the set was made and filtered, and its spurious rates
    DATASET_DIR/datasheet.json    the same as data

A set selected by a classifier's own verdict says nothing about that classifier (its rate on the
kept set is at least what the selection demanded), so the datasheet reports the spurious rates of
the ``evaluate_with`` classifiers first, as the set's result, and those of the selection
classifiers apart, marked as biased by construction. See docs/curate.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spurcli import console, imagenet, plugins
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate.config import CurateConfig
from spurcli.evaluate.datasheet import (
    build_datasheet,
    class_folder,
    curate_settings,
    datasheet_markdown,
)
from spurcli.evaluate.detect import object_query
from spurcli.evaluate.imagepass import find_items, score_items
from spurcli.evaluate.similarity import extract_features, nearest_neighbours
from spurcli.evaluate.verdicts import (
    NO_DETECTOR,
    REASONS,
    SELECTION_NOTE,
    UNCHECKED_NOTE,
    Verdict,
    decide,
    default_feature,
    detector_names,
)
from spurcli.fileio import FOLDER_FILE, holds_only_our_files, output_folder, scratch_dir
from spurcli.images import find_images
from spurcli.plugins import load_classifiers, load_detectors, load_extractors, parse_weights
from spurcli.settings import check_fields

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- the numbers


# ------------------------------------------------------------------------------------- checks


def check_curate_config(config: CurateConfig, images_dir: Path, out: Path) -> None:
    """Everything that can be checked before a model loads (one line each)."""

    check_fields(config)
    if config.target is None:
        raise UsageError("--target CLASS is required (an ImageNet index or name)")
    if not config.classifiers:
        raise UsageError("--classifiers is required: the selection victims, e.g. resnet,vit")
    if not 1 <= config.min_fooled <= len(config.classifiers):
        raise UsageError(
            f"--min-fooled must be between 1 and the number of selection classifiers "
            f"({len(config.classifiers)}), got {config.min_fooled}"
        )
    both = sorted(set(config.classifiers) & set(config.evaluate_with))
    if both:
        raise UsageError(
            f"{', '.join(both)} is in --classifiers and --evaluate-with: a classifier that "
            "selected the images cannot also evaluate them; use another one"
        )
    if NO_DETECTOR in config.detectors and len(config.detectors) > 1:
        raise UsageError("--detectors none cannot be combined with detector names")
    if not 0.0 <= config.max_presence <= 1.0:
        raise UsageError(f"--max-presence must be in [0, 1], got {config.max_presence}")
    if not -1.0 <= config.max_similarity <= 1.0:
        raise UsageError(f"--max-similarity is a cosine in [-1, 1], got {config.max_similarity}")
    if config.limit is not None and config.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {config.limit}")
    if config.mode not in ("copy", "link"):
        raise UsageError(f"mode must be 'copy' or 'link', got '{config.mode}'")
    src, dst = images_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise UsageError(f"--out {out} must be outside the images folder {images_dir}")
    # A folder a killed curate left with nothing but its marker is no dataset to protect.
    unfinished = (out / FOLDER_FILE).is_file() and holds_only_our_files(out)
    if out.exists() and not config.overwrite and not unfinished:
        raise SpurcliError(f"{out} already exists; pass --overwrite to replace it")


# ------------------------------------------------------------------------------------- curate


@dataclass
class CurateResult:
    """Every verdict and what the datasheet says; plain data for `run` to save and redraw."""

    datasheet: dict[str, Any]  # datasheet.json
    verdicts: list[Verdict]
    images_dir: str
    out: str

    @property
    def counts(self) -> dict[str, int]:
        return self.datasheet["counts"]

    @property
    def kept(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.kept]

    def to_json(self) -> dict[str, Any]:
        return self.datasheet

    def empty_message(self) -> str:
        return (
            f"no image was kept out of {self.counts['images']}: {self.datasheet['why_empty']}; "
            f"{Path(self.out) / 'datasheet.md'} says so"
        )

    def table(self) -> Any:
        """A rich Table: the held-out classifiers' rates first, then the selection's; counts."""
        from rich.table import Table

        sheet, c = self.datasheet, self.counts
        t = sheet["target"]
        table = Table(title=f"spurcli curate: target {t['index']} {t['name']} -> {self.out}")
        for column in ("classifier", "role", "weights", "kept rate", "95% CI", "all readable"):
            table.add_column(
                column, justify="left" if column in ("classifier", "role") else "right"
            )
        for role, group in (("held-out", "evaluation"), ("selection*", "selection")):
            for name, r in sheet[group].items():
                kept, every = r["kept"], r["all_readable"]
                ci = "-" if kept["ci95"] is None else "{:.3f}-{:.3f}".format(*kept["ci95"])
                table.add_row(
                    name,
                    role,
                    r["weights"],
                    "-" if kept["rate"] is None else f"{kept['rate']:.3f}",
                    ci,
                    "-" if every["rate"] is None else f"{every['rate']:.3f}",
                )
        lines = [
            f"{c['kept']} of {c['images']} images kept; rejected: "
            + ", ".join(f"{c[r]} {r}" for r in REASONS if c[r]),
            f"* {SELECTION_NOTE}",
        ]
        if not sheet["evaluation"]:
            lines.append("no --evaluate-with classifier: no unbiased spurious rate for this set")
        if not sheet["object_checked"]:
            lines.insert(0, UNCHECKED_NOTE)
        table.caption = "\n".join(lines)
        return table

    def report_data(self, per_reason: int = 12) -> dict[str, Any]:
        """What the report's curate section shows: the kept images and a sample per reason."""
        rejected = {
            reason: [v.to_json() for v in self.verdicts if reason in v.reasons][:per_reason]
            for reason in REASONS
        }
        return {
            "datasheet": self.datasheet,
            "images_dir": self.images_dir,
            "out": self.out,
            "kept": [v.to_json() for v in self.kept][: 4 * per_reason],
            "rejected": {r: rows for r, rows in rejected.items() if rows},
        }


def curate(
    images_dir: str | os.PathLike[str], out: str | os.PathLike[str], config: CurateConfig
) -> CurateResult:
    """Filter the images below ``images_dir`` and write the kept ones to ``out``."""

    images_dir, out = Path(images_dir), Path(out)
    check_curate_config(config, images_dir, out)
    k = imagenet.resolve_class(config.target)
    # Every name resolves (or gets its "did you mean") before any model loads.
    for name in (*config.classifiers, *config.evaluate_with):
        plugins.classifiers().resolve(name)
    for name in detector_names(config):
        plugins.detectors().resolve(name)
    if config.references is not None:
        plugins.extractors().resolve(config.extractor)
    items = find_items(images_dir, k.index, real=False)
    if config.references is not None:
        find_images(config.references)  # a missing folder: one line before models load
    main, existed = console.is_main_process(), out.exists()
    # One curate at a time, only into a new folder or a dataset: taken before the work.
    try:
        with output_folder(
            out, "curate", recognise=is_dataset, enabled=main, links_below=(CLASS_PREFIX,)
        ):
            return _curate(images_dir, out, config, k, items)
    except BaseException:
        if main and not existed:  # a failed first curate leaves no folder behind
            _remove_if_unused(out)
        raise


def _curate(
    images_dir: Path, out: Path, config: CurateConfig, k: Any, items: Sequence[Any]
) -> CurateResult:
    # The pass skips unreadable files; --strict fails on them below, with their name.
    options = replace(config, strict=False)
    options.check()
    names = [*config.classifiers, *config.evaluate_with]
    models = load_classifiers(names, parse_weights(config.weights))
    detectors = load_detectors(
        detector_names(config), parse_weights(config.detector_weights, "--detector-weights")
    )
    feature = config.feature or default_feature(k.index)
    query = object_query(k, config.object_prompts, feature)
    extractors, reducers, refs = [], {}, None
    if config.references is not None:
        weights = {config.extractor: config.extractor_weights} if config.extractor_weights else {}
        extractors = load_extractors([config.extractor], weights)
        refs = extract_features(
            config.references,
            extractors[0],
            batch_size=config.batch_size,
            device=config.device,
            strict=config.strict,
        )

        def nearest(values: Any) -> Any:
            import numpy as np

            index, cosine = nearest_neighbours(values, refs.values)
            return np.stack([cosine, index], axis=1)

        reducers[config.extractor] = nearest
    found = score_items(
        items,
        models,
        options,
        extractors,
        desc=f"curating {len(items)} images",
        detectors=detectors,
        queries={k.index: query},
        reducers=reducers,
    )
    if config.strict and found.skipped:
        raise SpurcliError(f"{found.skipped[0][1]} (--strict: unreadable images are errors)")

    verdicts = _verdicts(items, found, models, detectors, refs, config, k.index)
    datasheet = build_datasheet(
        images_dir, items, verdicts, models, config, detectors, extractors, refs is not None
    )
    datasheet.update(
        curate_settings(config, k, query, len(config.classifiers), found.skipped, refs is not None)
    )
    result = CurateResult(datasheet, verdicts, str(images_dir.resolve()), str(out))
    if console.is_main_process():
        write_dataset(result, images_dir, out, config.mode)
    if not result.kept and config.strict:
        raise SpurcliError(f"{result.empty_message()} (--strict)")
    return result


def _verdicts(
    items: Sequence[Any],
    found: Any,
    models: Sequence[Any],
    detectors: Sequence[Any],
    refs: Any,
    config: CurateConfig,
    target: int,
) -> list[Verdict]:
    by_item: dict[int, Verdict] = {}
    per = found.per_image
    for row, i in enumerate(found.index):
        v = Verdict(
            file=items[i].name,
            reasons=[],
            target_prob={m.name: float(per.target_prob[c, row]) for c, m in enumerate(models)},
            fooled={m.name: bool(per.top1[c, row] == target) for c, m in enumerate(models)},
            presence={d.name: float(found.presence[d.name][row]) for d in detectors},
        )
        if refs is not None:
            cosine, nearest = found.features[config.extractor][row]
            v.similarity, v.nearest = float(cosine), refs.names[int(nearest)]
        v.reasons = decide(v, config.classifiers, config, refs is not None)
        by_item[int(i)] = v
    for i, message in found.skipped:
        by_item[i] = Verdict(items[i].name, ["unreadable"], message=message)
    verdicts = [by_item[i] for i in sorted(by_item)]
    if config.limit is not None:
        for v in [v for v in verdicts if v.kept][config.limit :]:
            v.reasons.append("over-limit")
    return verdicts


# --------------------------------------------------------------------------------- the output


CLASS_PREFIX = "class_spurious_"  # the kept images' folder (`class_folder`)
DATASET_FILES = ("metadata.jsonl", "verdicts.jsonl", "datasheet.md", "datasheet.json")


def is_dataset(out: Path) -> bool:
    """``out`` is a dataset curate wrote (before folders had a marker)."""
    return (out / "datasheet.json").is_file() or (out / "verdicts.jsonl").is_file()


def _remove_if_unused(out: Path) -> None:
    """Remove ``out`` when it holds nothing but the marker and temporaries of this curate."""
    with contextlib.suppress(OSError):
        if holds_only_our_files(out):
            shutil.rmtree(out)


def write_dataset(result: CurateResult, images_dir: Path, out: Path, mode: str) -> None:
    """The dataset in DATASET_DIR (an owned, locked folder), written into a temporary folder
    inside it, then moved in; only a previous dataset's own files are replaced (anything else
    in the folder is left alone). datasheet.json goes first and comes back last, so a dataset
    with one is complete; a killed curate's temporary is removed by the next one."""

    sheet = result.datasheet
    folder = class_folder(sheet)
    sheet["class_folder"] = folder
    per_file = sheet["generation"]["per_file"]
    with scratch_dir(out, "dataset") as tmp:
        rows = []
        for v in result.kept:
            src, dst = images_dir / v.file, tmp / folder / v.file
            dst.parent.mkdir(parents=True, exist_ok=True)
            if mode == "link":
                os.symlink(src.resolve(), dst)
            else:
                shutil.copy2(src, dst)
            rows.append(
                {
                    "file_name": f"{folder}/{v.file}",
                    **per_file.get(v.file, {"prompt": None, "seed": None, "model": None}),
                    "label": sheet["target"]["index"],
                    "target_prob": v.target_prob,
                    "presence": v.presence,
                    "nearest_reference_similarity": v.similarity,
                    "nearest_reference": v.nearest,
                }
            )
        _jsonl(tmp / "metadata.jsonl", rows)
        _jsonl(tmp / "verdicts.jsonl", [v.to_json() for v in result.verdicts])
        (tmp / "datasheet.json").write_text(
            json.dumps(sheet, indent=2, default=str) + "\n", encoding="utf-8"
        )
        (tmp / "datasheet.md").write_text(datasheet_markdown(sheet), encoding="utf-8")
        _replace_dataset(tmp, out)


def _replace_dataset(new: Path, out: Path) -> None:
    """Move the dataset in ``new`` into ``out``, the previous dataset's files out of the way."""
    (out / "datasheet.json").unlink(missing_ok=True)
    for old in out.iterdir():
        if old.name.startswith(CLASS_PREFIX) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)  # removes links, never follows them
        elif old.name in DATASET_FILES:
            old.unlink()
    for entry in sorted(new.iterdir(), key=lambda p: p.name == "datasheet.json"):
        os.replace(entry, out / entry.name)


def _jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
