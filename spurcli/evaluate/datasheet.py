"""The datasheet of a curated set (datasheet.json and datasheet.md): how it was made and
filtered, by which models with which weights, and its spurious rates with intervals."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spurcli import __version__
from spurcli.evaluate.config import CurateConfig
from spurcli.evaluate.verdicts import (
    REASONS,
    SELECTION_NOTE,
    UNCHECKED_NOTE,
    Verdict,
    detector_names,
    spurious_rate,
)
from spurcli.images import find_images, sha256_file
from spurcli.records import FINETUNE_CARD, png_record, read_manifest
from spurcli.text import markup, render_markdown, slugify

TEMPLATES = Path(__file__).resolve().parent / "templates"

log = logging.getLogger(__name__)


def curate_settings(
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


def build_datasheet(
    images_dir: Path,
    items: Sequence[Any],
    verdicts: Sequence[Verdict],
    models: Sequence[Any],
    config: CurateConfig,
    detectors: Sequence[Any],
    extractors: Sequence[Any],
    have_refs: bool,
) -> dict[str, Any]:

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

    return sha256_file(path)


def _why_empty(counts: dict[str, int]) -> str:
    parts = [f"{counts[r]} {r}" for r in REASONS if counts[r]]
    return "every image was rejected (" + ", ".join(parts) + ")" if parts else "no images"


def generation(images_dir: Path, kept: Sequence[str], files: Sequence[str]) -> dict[str, Any]:
    """What made the images: `spurcli sample`'s records (manifest.jsonl, else each PNG's own
    chunk), and for a fine-tuned model its run card (spurcli-run.json) with its sha256."""

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


def class_folder(datasheet: dict[str, Any]) -> str:
    """``class_spurious_<index>_<slug>``: the Spurious ImageNet layout `score` reads back."""

    target = datasheet["target"]
    feature = datasheet["filters"]["object-present"]["feature"]
    slug = slugify(feature or target["name"], limit=40)
    return f"class_spurious_{target['index']}_{slug}"


def _fmt_rate(r: dict[str, Any]) -> Any:
    """A rate with its count and Wilson interval, as spurcli formats it (not escaped again)."""
    if r["rate"] is None:
        return markup("- (no images)")
    low, high = r["ci95"]
    return markup(f"{r['rate']:.3f} ({r['k']}/{r['n']}; 95% CI [{low:.3f}, {high:.3f}])")


def datasheet_markdown(sheet: dict[str, Any]) -> str:
    """datasheet.md: the warnings first, then the held-out result, selection, filters, origin
    (templates/datasheet.md.j2, every value escaped for Markdown)."""
    return render_markdown(
        TEMPLATES,
        "datasheet.md.j2",
        sheet=sheet,
        t=sheet["target"],
        c=sheet["counts"],
        gen=sheet["generation"],
        seeds=[s for s in sheet["generation"]["seeds"] if s is not None],
        reasons=REASONS,
        unchecked_note=UNCHECKED_NOTE,
        rate=_fmt_rate,
    )
