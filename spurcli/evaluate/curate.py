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
`spurcli.evaluate.imagepass.score_items` over the same decoded batches; per image only a few numbers are kept
(the extractor's features are reduced to the nearest reference's cosine batch by batch), so
memory is flat in the number of images. Nothing in the input folder is changed.

The output folder, written atomically (a temporary sibling renamed into place):

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

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate.config import CurateConfig

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


# ---------------------------------------------------------------------------------- the numbers


def spurious_rate(fooled: Sequence[bool]) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci95"}`` of a classifier on a set (rate None for an empty set)."""
    from spurcli.evaluate.metrics import wilson_interval

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


# ------------------------------------------------------------------------------------- checks


def check_curate_config(config: CurateConfig, images_dir: Path, out: Path) -> None:
    """Everything that can be checked before a model loads (one line each)."""
    from spurcli.settings import check_fields

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
    if out.exists() and not config.overwrite:
        raise SpurcliError(f"{out} already exists; pass --overwrite to replace it")


def detector_names(config: CurateConfig) -> list[str]:
    return [] if config.detectors == [NO_DETECTOR] else list(config.detectors)


def default_feature(index: int) -> str | None:
    """Spurious ImageNet's feature text for the class ("red feeder/flower"), if it has one."""
    from spurcli import imagenet

    return next((s.feature for s in imagenet.spurious_classes() if s.cls.index == index), None)


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
    from spurcli import console, imagenet, plugins
    from spurcli.evaluate.compare import extract_features, nearest_neighbours
    from spurcli.evaluate.detect import object_query
    from spurcli.evaluate.imagepass import find_items, score_items
    from spurcli.images import find_images
    from spurcli.plugins import load_classifiers, load_detectors, load_extractors, parse_weights

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
    datasheet = _datasheet(
        images_dir, items, verdicts, models, config, detectors, extractors, refs is not None
    )
    datasheet.update(
        _settings(config, k, query, len(config.classifiers), found.skipped, refs is not None)
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


def _settings(
    config: CurateConfig,
    k: Any,
    query: Any,
    n_selection: int,
    skipped: Sequence[tuple[int, str]],
    have_refs: bool,
) -> dict[str, Any]:
    """The filters with their thresholds, as the datasheet records them."""
    detectors = detector_names(config)
    filters = {
        "object-present": {
            "detectors": detectors,
            "max_presence": config.max_presence if detectors else None,
            "queries": list(query.names) if detectors else [],
            "feature": query.feature,
            "rule": f"rejected when a detector's presence score is above {config.max_presence}"
            if detectors
            else "not applied (--detectors none)",
        },
        "not-fooling": {
            "classifiers": list(config.classifiers),
            "min_fooled": config.min_fooled,
            "rule": f"rejected when fewer than {config.min_fooled} of {n_selection} selection "
            f"classifiers put the image in class {k.index} (top-1)",
        },
        "near-copy": {
            "references": str(config.references) if have_refs else None,
            "extractor": config.extractor if have_refs else None,
            "max_similarity": config.max_similarity if have_refs else None,
            "rule": f"rejected when the cosine to the nearest reference is at least "
            f"{config.max_similarity} ({config.extractor} features)"
            if have_refs
            else "not applied (no --references)",
        },
        "unreadable": {
            "files": [message for _, message in skipped],
            "rule": "rejected when the file does not decode",
        },
        "over-limit": {
            "limit": config.limit,
            "rule": f"at most {config.limit} images kept (file order)"
            if config.limit
            else "no limit",
        },
    }
    return {
        "target": {"index": k.index, "wnid": k.wnid, "name": k.name},
        "filters": filters,
        "object_checked": bool(detectors),
        "mode": config.mode,
    }


def _datasheet(
    images_dir: Path,
    items: Sequence[Any],
    verdicts: Sequence[Verdict],
    models: Sequence[Any],
    config: CurateConfig,
    detectors: Sequence[Any],
    extractors: Sequence[Any],
    have_refs: bool,
) -> dict[str, Any]:
    from spurcli import __version__
    from spurcli.images import find_images

    kept = [v for v in verdicts if v.kept]
    readable = [v for v in verdicts if "unreadable" not in v.reasons]
    counts = {"images": len(items), "kept": len(kept), "rejected": len(verdicts) - len(kept)}
    counts.update({r: sum(r in v.reasons for v in verdicts) for r in REASONS})
    # "only": images this filter alone rejected (removing it would have kept them).
    only = {r: sum(v.reasons == [r] for v in verdicts) for r in REASONS}
    selection = set(config.classifiers)

    def rates(names: Sequence[str]) -> dict[str, Any]:
        out = {}
        for m in models:
            if m.name in names:
                out[m.name] = {
                    "weights": m.weights,
                    "kept": spurious_rate([v.fooled[m.name] for v in kept]),
                    "all_readable": spurious_rate([v.fooled[m.name] for v in readable]),
                }
        return out

    evaluation = [m.name for m in models if m.name not in selection]
    return {
        "spurcli_version": __version__,
        "images_dir": str(images_dir.resolve()),
        "counts": counts,
        "removed_only_by": only,
        "evaluation": rates(evaluation),
        "selection": {
            name: {**r, "note": SELECTION_NOTE} for name, r in rates(sorted(selection)).items()
        },
        "models": {
            # how the classifiers got their pixels (`--preprocess`: model or spurious-imagenet)
            "preprocess": config.preprocess,
            "classifiers": [_model(m) for m in models],
            "detectors": [_model(d) for d in detectors],
            "extractor": _model(extractors[0]) if extractors else None,
        },
        "references": [
            {"file": p.relative_to(config.references).as_posix(), "sha256": _sha256(p)}
            for p in find_images(config.references)
        ]
        if have_refs and config.references is not None
        else None,
        "generation": generation(images_dir, [v.file for v in kept], [v.file for v in verdicts]),
        "why_empty": _why_empty(counts) if not kept else None,
        "kept": [v.file for v in kept],
    }


def _model(m: Any) -> dict[str, Any]:
    return {"name": m.name, "weights": m.weights, "plugin": m.plugin, "random": m.is_random}


def _sha256(path: Path) -> str:
    from spurcli.images import sha256_file

    return sha256_file(path)


def _why_empty(counts: dict[str, int]) -> str:
    parts = [f"{counts[r]} {r}" for r in REASONS if counts[r]]
    return "every image was rejected (" + ", ".join(parts) + ")" if parts else "no images"


def generation(images_dir: Path, kept: Sequence[str], files: Sequence[str]) -> dict[str, Any]:
    """What made the images: `spurcli sample`'s records (manifest.jsonl, else each PNG's own
    chunk), and for a fine-tuned model its run card (spurcli-run.json) with its sha256."""
    from spurcli.records import FINETUNE_CARD, png_record, read_manifest

    manifest = read_manifest(images_dir)
    records = {f: manifest.get(f) or png_record(images_dir / f) for f in files}
    known = {f: r for f, r in records.items() if r}
    cards = []
    for model in sorted({str(r.get("model")) for r in known.values() if r.get("model")}):
        card = Path(model) / FINETUNE_CARD
        if card.is_file():
            info = json.loads(card.read_text(encoding="utf-8"))
            cards.append(
                {
                    "model": model,
                    "run_card": str(card),
                    "run_card_sha256": _sha256(card),
                    "base_model": info.get("model"),
                    "identifier": info.get("identifier"),
                    "references": info.get("references", []),
                }
            )
    kept_records = [known[f] for f in kept if f in known]
    return {
        "records": len(known),
        "without_record": len(files) - len(known),
        "models": sorted({str(r.get("model")) for r in known.values() if r.get("model")}),
        "run_cards": cards,
        "prompts": dict(Counter(str(r.get("prompt")) for r in kept_records)),
        "seeds": [r.get("seed") for r in kept_records],
        "settings": {
            key: sorted({json.dumps(r.get(key)) for r in kept_records})
            for key in ("steps", "guidance", "scheduler", "height", "width")
        },
        "per_file": {f: _record_fields(r) for f, r in known.items() if f in set(kept)},
    }


def _record_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("prompt", "seed", "model")}


# --------------------------------------------------------------------------------- the output


def class_folder(datasheet: dict[str, Any]) -> str:
    """``class_spurious_<index>_<slug>``: the Spurious ImageNet layout `score` reads back."""
    from spurcli.text import slugify

    target = datasheet["target"]
    feature = datasheet["filters"]["object-present"]["feature"]
    slug = slugify(feature or target["name"], limit=40)
    return f"class_spurious_{target['index']}_{slug}"


def write_dataset(result: CurateResult, images_dir: Path, out: Path, mode: str) -> None:
    """DATASET_DIR, complete or absent (atomic rename of a temporary sibling folder)."""
    from spurcli.fileio import atomic_dir

    sheet = result.datasheet
    folder = class_folder(sheet)
    sheet["class_folder"] = folder
    per_file = sheet["generation"]["per_file"]
    with atomic_dir(out) as tmp:
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


def _jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def _fmt_rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "- (no images)"
    low, high = r["ci95"]
    return f"{r['rate']:.3f} ({r['k']}/{r['n']}; 95% CI [{low:.3f}, {high:.3f}])"


def datasheet_markdown(sheet: dict[str, Any]) -> str:
    """datasheet.md: the warnings first, then the held-out result, selection, filters, origin."""
    t, c = sheet["target"], sheet["counts"]
    lines = [f"# Datasheet: spurious images for ImageNet class {t['index']} {t['name']}", ""]
    if not sheet["object_checked"]:
        lines += [f"**{UNCHECKED_NOTE}**", ""]
    if sheet["why_empty"]:
        lines += [f"**No image was kept: {sheet['why_empty']}.**", ""]
    lines += [
        f"{c['kept']} of {c['images']} images kept ({c['rejected']} rejected) from "
        f"`{sheet['images_dir']}`, made by spurcli {sheet['spurcli_version']}. The images are "
        f"in `{sheet.get('class_folder', '')}/`; `metadata.jsonl` has one row per kept image, "
        "`verdicts.jsonl` one per input image.",
        "",
        "## Spurious rate on held-out classifiers (the result)",
        "",
    ]
    if sheet["evaluation"]:
        lines += ["| classifier | weights | kept set | all readable images |", "|---|---|---|---|"]
        for name, r in sheet["evaluation"].items():
            lines.append(
                f"| {name} | {r['weights']} | {_fmt_rate(r['kept'])} | "
                f"{_fmt_rate(r['all_readable'])} |"
            )
    else:
        lines.append(
            "No `--evaluate-with` classifier: this set has no unbiased spurious rate. Score it "
            "with classifiers that did not select it (`spurcli score --layout spurious-imagenet`)."
        )
    lines += [
        "",
        "## Selection classifiers (biased by construction)",
        "",
        "These classifiers chose which images to keep, so their rate on the kept set is at "
        "least what the selection demanded; it says nothing about them.",
        "",
        "| classifier | weights | kept set | all readable images |",
        "|---|---|---|---|",
    ]
    for name, r in sheet["selection"].items():
        lines.append(
            f"| {name} | {r['weights']} | {_fmt_rate(r['kept'])} | {_fmt_rate(r['all_readable'])} |"
        )
    lines += ["", "## Filters", "", "| reason | rule | images | only this reason |"]
    lines.append("|---|---|---|---|")
    for reason in REASONS:
        rule = sheet["filters"][reason]["rule"]
        lines.append(f"| {reason} | {rule} | {c[reason]} | {sheet['removed_only_by'][reason]} |")
    queries = sheet["filters"]["object-present"]["queries"]
    if queries:
        lines += ["", f"Detector queries: {', '.join(queries)}."]
    if sheet["filters"]["object-present"]["feature"]:
        lines.append(f"Spurious feature text: {sheet['filters']['object-present']['feature']}.")
    for message in sheet["filters"]["unreadable"]["files"]:
        lines.append(f"- unreadable: {message}")
    lines += ["", "## Models", ""]
    models = sheet["models"]
    for kind in ("classifiers", "detectors"):
        for m in models[kind]:
            note = " (random weights: an untrained model)" if m["random"] else ""
            lines.append(f"- {kind[:-1]} `{m['name']}`: {m['weights']} ({m['plugin']}){note}")
    if models["extractor"]:
        e = models["extractor"]
        lines.append(f"- extractor `{e['name']}`: {e['weights']} ({e['plugin']})")
    lines.append(f"- classifier pixels: `--preprocess {models['preprocess']}`")
    gen = sheet["generation"]
    lines += ["", "## How the images were made", ""]
    lines.append(
        f"{gen['records']} images have a `spurcli sample` record, {gen['without_record']} none."
    )
    for model in gen["models"]:
        lines.append(f"- model: `{model}`")
    for card in gen["run_cards"]:
        lines.append(
            f"- run card `{card['run_card']}` sha256 {card['run_card_sha256']}; base model "
            f"`{card['base_model']}`, identifier `{card['identifier']}`"
        )
        for ref in card["references"]:
            lines.append(f"  - training reference `{ref['file']}` sha256 {ref['sha256']}")
    for prompt, n in gen["prompts"].items():
        lines.append(f"- prompt ({n} kept): {prompt}")
    seeds = [s for s in gen["seeds"] if s is not None]
    if seeds:
        lines.append(f"- seeds of the kept images: {', '.join(map(str, seeds))}")
    if sheet["references"]:
        lines += ["", "## Near-copy references", ""]
        lines += [f"- `{r['file']}` sha256 {r['sha256']}" for r in sheet["references"]]
    return "\n".join(lines) + "\n"
