"""The HTML report of `compare` and `run`: one self-contained file a browser opens offline.

    from spurcli.evaluate.compare import compare
    from spurcli.experiment.report import write_report
    result = compare("generated/", "refs/", config)
    write_report("report.html", [result], title="hummingbird: red flower")

What it holds, per comparison (A vs B): the score metrics side by side with their 95% intervals
and the differences A - B (interval, p-value; a difference is coloured only when the printed
test's p < 0.05, see docs/statistics.md), a bar chart of the spurious rate per classifier, the
similarity numbers per feature extractor with a histogram of each A image's nearest-neighbour
cosine to B, the closest A/B pairs (the memorisation check), and the two image grids side by
side with every image's top-1 label per classifier (in red where it is the target class: a
spurious hit). A `run` adds its summary tables on top. A curated set (`spurcli curate`, or `run`'s
curate stage) adds a section: its counts per reason, the spurious rates of the held-out and of
the selection classifiers, the kept images and a sample of the rejected ones under each reason.

Rendered from templates/report.html.j2 with autoescaping (every value escaped unless spurcli
made it as HTML itself: the SVG plots and the CSS); user text is bidi-isolated in ``<bdi>``.
Self-contained: thumbnails are JPEGs embedded as base64 data URIs, plots are inline SVG drawn by
matplotlib (text left as text, no embedded fonts), the CSS is inline, and there is no script:
nothing is fetched from anywhere. Grids show at most ``max_images`` images per set (all of them
are scored; the heading says how many are shown).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spurcli import __version__
from spurcli.evaluate.differences import consensus_text, fmt_difference, fmt_p, shown_as_real
from spurcli.evaluate.results import METRICS
from spurcli.evaluate.verdicts import REASONS, SELECTION_NOTE, UNCHECKED_NOTE
from spurcli.fileio import write_text
from spurcli.images import ImageReadError, read_image
from spurcli.text import markup, mathtext, render_html

THUMB = 128  # thumbnail side in pixels (the centre square, as the classifiers see it)
TOP_PAIRS = 6  # nearest-neighbour pairs shown per extractor
DASH = "\u2013"  # an en dash: no value, or a range
TEMPLATES = Path(__file__).resolve().parent / "templates"

# +1: a higher value means more spurious (the classifier falls for the images more); -1: lower.
DIRECTION = {
    "spurious_rate": 1,
    "top5_rate": 1,
    "mean_target_prob": 1,
    "median_target_prob": 1,
    "roc_auc": -1,
    "average_precision": -1,
}


def write_report(
    path: str | os.PathLike[str],
    comparisons: Sequence[Any],
    *,
    title: str = "spurcli report",
    summary: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    notes: Sequence[str] = (),
    max_images: int = 48,
    curations: Sequence[Any] = (),
) -> Path:
    """Write the report; ``comparisons`` are `CompareResult`s or their `report_data()` dicts,
    ``curations`` `CurateResult`s or theirs.

    ``summary`` (from `spurcli run`): a table ``{"columns": [...], "rows": [[...], ...],
    "caption": str, "title": str}`` or a list of them (shown in order).
    A cell is a pre-formatted ``{"text", "css"}`` dict, a `spurcli.evaluate.metrics.
    rate_difference` dict (shown with its interval and p, coloured by `shown_as_real`), or a
    number (in a column named "Δ ..." or "+...": a difference without an interval, never
    coloured).
    """
    datas = [c if isinstance(c, dict) else c.report_data() for c in comparisons]
    curated = [c if isinstance(c, dict) else c.report_data() for c in curations]
    if not datas and not curated:
        raise ValueError("a report needs at least one comparison or curated set")
    target = datas[0]["a"]["target"] if datas else curated[0]["datasheet"]["target"]
    page = render_html(
        TEMPLATES,
        "report.html.j2",
        title=title,
        css=markup((TEMPLATES / "report.css").read_text(encoding="utf-8")),
        target=target,
        version=__version__,
        notes=list(notes),
        summaries=[
            _summary(t) for t in ([summary] if isinstance(summary, dict) else summary or [])
        ],
        comparisons=[_comparison(d, max_images) for d in datas],
        curations=[_curation(d) for d in curated],
    )
    path = Path(path)
    write_text(path, page)
    return path


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(ci: Sequence[float] | None, signed: bool = False) -> str | None:
    if ci is None:
        return None
    form = "+.3f" if signed else ".3f"
    return f"[{ci[0]:{form}}, {ci[1]:{form}}]"


def delta_cell(value: float | dict[str, Any] | None, metric: str | None = None) -> dict | None:
    """A difference as the template shows it: a plain number, or a `rate_difference`-shaped dict
    with its interval and test.

    Coloured (``css``) as `spurcli.evaluate.differences.shown_as_real` says (by the printed
    test's p-value; red, "pos", where the first set is the more spurious one, green, "neg",
    where less); a number without an interval never is.
    """
    if value is None:
        return None
    diff = value if isinstance(value, dict) else {"delta": value, "delta_ci": None}
    delta = diff["delta"]
    if delta is None:
        return None
    direction = DIRECTION.get(metric or "spurious_rate", 0)
    sign = direction * shown_as_real(diff)
    title = None
    if diff.get("test"):
        title = f"{diff['test']} p = {fmt_p(diff['p_value'])}; {diff['interval']}"
    elif diff.get("interval"):
        title = diff["interval"]
    return {
        "text": f"{delta:+.3f}" if abs(delta) >= 5e-4 else "0.000",  # |Δ| < 0.0005: 0.000
        "css": {1: "pos", -1: "neg"}.get(sign, ""),
        "ci": _ci(diff.get("delta_ci"), signed=True),
        "matched": diff.get("matched_size") if diff.get("subsamples") else None,
        "p": fmt_p(diff["p_value"]) if diff.get("p_value") is not None else None,
        "title": title,
    }


def _consensus_rate(consensus: dict[str, Any] | None, key: str) -> str:
    if consensus is None:  # every classifier left out
        return DASH
    ci = consensus.get(f"{key}_ci")
    text = f"{consensus[key]:.3f}"
    return text if ci is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _consensus(data: dict[str, Any]) -> dict[str, Any]:
    """The consensus rates of both sets, and their differences, pairing and methods."""
    ca, cb = data["a"]["consensus"], data["b"]["consensus"]
    view: dict[str, Any] = {
        "a_all": _consensus_rate(ca, "all"),
        "b_all": _consensus_rate(cb, "all"),
        "a_any": _consensus_rate(ca, "any"),
        "b_any": _consensus_rate(cb, "any"),
        "diff": None,
        # which classifiers, and which are left out and why (circular: the SFSL extractor)
        "of": consensus_text(
            data.get("consensus_of")
            or {"classifiers": list(data["a"]["classifiers"]), "left_out": {}}
        ),
    }
    diffs = data.get("differences") or {}
    if not diffs or not diffs.get("consensus"):
        return view
    pairing, consensus = diffs["pairing"], diffs["consensus"]
    rates = consensus["all"]
    matched = [
        d["average_precision"]
        for d in diffs.get("classifiers", {}).values()
        if d.get("average_precision", {}).get("subsamples")
    ]
    view["diff"] = {
        "all": fmt_difference(rates),
        "all_p": fmt_p(rates["p_value"]),
        "any": fmt_difference(consensus["any"]),
        "any_p": fmt_p(consensus["any"]["p_value"]),
        "pairing": f"Paired by {pairing['rule']}" if pairing["paired"] else pairing["rule"],
        "test": rates["test"],
        "interval": rates["interval"],
        "matched": (
            {"size": matched[0]["matched_size"], "subsamples": matched[0]["subsamples"]}
            if matched
            else None
        ),
    }
    return view


def _summary(summary: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for row in summary["rows"]:
        cells = []
        for column, value in zip(summary["columns"][1:], row[1:], strict=True):
            if isinstance(value, dict) and "text" in value:  # pre-formatted (experiment.summary)
                cells.append({"kind": "text", "text": value["text"], "css": value["css"]})
            elif isinstance(value, dict) or str(column).startswith(("Δ", "+")):
                cells.append({"kind": "delta", "delta": delta_cell(value)})
            else:
                cells.append({"kind": "number", "text": _num(value)})
        rows.append({"name": row[0], "cells": cells})
    return {
        "columns": summary["columns"],
        "rows": rows,
        "caption": summary.get("caption"),
        "title": summary.get("title"),
    }


def _comparison(data: dict[str, Any], max_images: int) -> dict[str, Any]:
    la, lb = data["labels"]["a"], data["labels"]["b"]
    a, b = data["a"], data["b"]
    names = list(a["classifiers"])
    diffs = (data.get("differences") or {}).get("classifiers", {})
    metric_rows = []
    for m in METRICS:
        pairs = [(a["classifiers"][n].get(m), b["classifiers"][n].get(m)) for n in names]
        if all(va is None and vb is None for va, vb in pairs):
            continue  # e.g. roc_auc without real images
        cells = []
        for n, (va, vb) in zip(names, pairs, strict=True):
            diff = diffs.get(n, {}).get(m)
            if diff is None:  # no test of this difference (e.g. real_accuracy: the same images)
                diff = None if va is None or vb is None else va - vb
            cells.append(
                {
                    "a": _num(va),
                    "ci_a": _ci(a["classifiers"][n].get(f"{m}_ci")),
                    "b": _num(vb),
                    "ci_b": _ci(b["classifiers"][n].get(f"{m}_ci")),
                    "delta": delta_cell(diff, m),
                }
            )
        metric_rows.append({"metric": m, "cells": cells})
    sims = data.get("similarity") or {}
    plots = [_rate_plot(a, b, la, lb)]
    plots += [_nn_plot(s, name, la, lb) for name, s in sims.items() if s.get("nearest")]
    return {
        "la": la,
        "lb": lb,
        "n_a": a["n_images"],
        "n_b": b["n_images"],
        "dir_a": data["dirs"]["a"],
        "dir_b": data["dirs"]["b"],
        "n_real": a.get("n_real"),
        "preprocess": a.get("preprocess") if a.get("preprocess", "model") != "model" else None,
        "classifiers": [{"name": n, "weights": a["classifiers"][n]["weights"]} for n in names],
        "metric_rows": metric_rows,
        "consensus": _consensus(data),
        "random_weights": any(s["weights"] == "random" for s in a["classifiers"].values()),
        "similarity": [
            {
                "name": name,
                # the SFSL extractor's own space (run marks it): optimised against, circular
                "circular": bool((data.get("extractors") or {}).get(name, {}).get("circular")),
                "mean_cosine": _num(s["mean_cosine"]),
                "mean_ci": _ci(s.get("mean_cosine_ci")),
                "frechet": _num(s["frechet"]),
                "nn_mean": _num(s["nn_cosine_mean"]),
                "nn_ci": _ci(s.get("nn_cosine_mean_ci")),
                "nn_max": _num(s["nn_cosine_max"]),
            }
            for name, s in sims.items()
        ],
        "similarity_notes": [
            f"frechet_{name}: {s['frechet_note']}."
            for name, s in sims.items()
            if s.get("frechet_note")
        ],
        "plots": plots,
        "pairs": [_pairs(s, name, data) for name, s in sims.items() if s.get("nearest")],
        "sets": [_grid(data, key, label, max_images) for key, label in (("a", la), ("b", lb))],
    }


def _grid(data: dict[str, Any], key: str, label: str, max_images: int) -> dict[str, Any]:
    """One set's images with every classifier's top-1 label (a hit: the target)."""
    root = Path(data["dirs"][key])
    labels: dict[str, list[dict[str, Any]]] = {}
    for row in data["rows"][key]:
        hit = int(row.get("target_rank", 0)) == 1
        line = {"text": f"{row['classifier']}: {row['top1_name']}", "hit": hit}
        labels.setdefault(row["image"], []).append(line)
    images = list(labels)
    shown = images[:max_images]
    cells = []
    folder = None
    for image in shown:
        parent, _, name = image.rpartition("/")
        group = parent if parent != folder and parent else None  # a heading per prompt folder
        folder = parent
        src = thumbnail(root / image)
        cells.append(
            {"group": group, "file": image, "name": name, "src": src, "lines": labels[image]}
        )
    count = f"{len(shown)} of {len(images)} shown" if len(shown) < len(images) else f"{len(images)}"
    return {"label": label, "count": count, "cells": cells}


def _pairs(sim: dict[str, Any], name: str, data: dict[str, Any]) -> dict[str, Any]:
    nearest = sorted(sim["nearest"], key=lambda n: -n["cosine"])[:TOP_PAIRS]
    ra, rb = Path(data["dirs"]["a"]), Path(data["dirs"]["b"])
    pairs = [
        {
            "src_a": thumbnail(ra / n["image"], 88),
            "src_b": thumbnail(rb / n["neighbour"], 88),
            "cosine": f"{n['cosine']:.3f}",
            "image": n["image"],
            "neighbour": n["neighbour"],
        }
        for n in nearest
    ]
    return {"name": name, "pairs": pairs}


def _curation(data: dict[str, Any]) -> dict[str, Any]:
    """A curated set: warnings, rates (held-out first), filter counts, kept and rejected images."""
    sheet, c = data["datasheet"], data["datasheet"]["counts"]
    warnings = [] if sheet["object_checked"] else [UNCHECKED_NOTE]
    if sheet.get("why_empty"):
        warnings.append(f"No image was kept: {sheet['why_empty']}.")
    rates = []
    for role, group in (("held-out", "evaluation"), ("selection (biased)", "selection")):
        for name, r in sheet[group].items():
            kept = r["kept"]
            rates.append(
                {
                    "name": name,
                    "role": role,
                    "weights": r["weights"],
                    "rate": DASH
                    if kept["rate"] is None
                    else f"{kept['rate']:.3f} ({kept['k']}/{kept['n']})",
                    "ci": DASH
                    if kept["rate"] is None
                    else f"{kept['ci95'][0]:.3f}{DASH}{kept['ci95'][1]:.3f}",
                    "all": _num(r["all_readable"]["rate"]),
                }
            )
    filters = [
        {
            "reason": r,
            "rule": sheet["filters"][r].get("rule", ""),
            "images": c[r],
            "only": sheet["removed_only_by"][r],
        }
        for r in REASONS
        if r not in ("unreadable", "over-limit") or c[r]
    ]
    root = Path(data["images_dir"])
    grids = [
        {
            "heading": f"Kept ({len(data['kept'])} of {c['kept']} shown)",
            "cells": _verdict_cells(data["kept"], root),
        }
    ]
    for reason, rows in data["rejected"].items():
        heading = f"Rejected: {reason} ({len(rows)} of {c[reason]} shown)"
        grids.append({"heading": heading, "cells": _verdict_cells(rows, root)})
    return {
        "kept": c["kept"],
        "images": c["images"],
        "images_dir": data["images_dir"],
        "out": data["out"],
        "warnings": warnings,
        "rates": rates,
        "selection_note": SELECTION_NOTE,
        "evaluated": bool(sheet["evaluation"]),
        "filters": filters,
        "grids": grids,
    }


def _verdict_cells(verdicts: Sequence[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    cells = []
    for v in verdicts:
        lines = [
            {"text": f"{n}: p {p:.2f}", "hit": bool(v["fooled"].get(n))}
            for n, p in v["target_prob"].items()
        ]
        lines += [
            {"text": f"{n}: presence {p:.2f}", "hit": False} for n, p in v["presence"].items()
        ]
        if v.get("similarity") is not None:
            lines.append({"text": f"nearest ref cos {v['similarity']:.3f}", "hit": False})
        if v.get("message"):  # "path: reason"; the cell already names the file
            lines.append({"text": v["message"].rpartition(": ")[2], "hit": False})
        if v["reasons"]:
            lines.append({"text": ", ".join(v["reasons"]), "hit": True})
        file = v["file"]
        src = thumbnail(root / file)
        cells.append(
            {
                "group": None,
                "file": file,
                "name": file.rpartition("/")[2],
                "src": src,
                "lines": lines,
            }
        )
    return cells


def thumbnail(path: Path, size: int = THUMB) -> str:
    """A data URI of the image's centre square as a JPEG (a grey box if it cannot be read)."""
    from PIL import Image, ImageOps

    try:
        image = ImageOps.fit(read_image(path), (size, size), Image.Resampling.BICUBIC)
    except (ImageReadError, OSError):
        image = Image.new("RGB", (size, size), (200, 200, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------ plots


def _svg(figure: Any) -> Any:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    svg = buffer.getvalue()
    return markup(svg[svg.index("<svg") :])  # drop the XML prologue


def _figure(width: float = 5.2, height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI toolkit import
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small, and no duplicate glyph ids
    plt.rcParams["svg.hashsalt"] = "spurcli"  # stable element ids
    return plt.subplots(figsize=(width, height))


def _rate_plot(a: dict[str, Any], b: dict[str, Any], la: str, lb: str) -> Any:
    import numpy as np

    names = list(a["classifiers"])
    va = [a["classifiers"][n]["spurious_rate"] for n in names]
    vb = [b["classifiers"][n]["spurious_rate"] for n in names]

    def whiskers(scores: dict[str, Any], values: list[float]) -> np.ndarray | None:
        cis = [scores["classifiers"][n].get("spurious_rate_ci") for n in names]
        if any(ci is None for ci in cis):
            return None
        return np.array(
            [
                [v - lo for v, (lo, _) in zip(values, cis, strict=True)],
                [hi - v for v, (_, hi) in zip(values, cis, strict=True)],
            ]
        )

    fig, ax = _figure()
    la, lb = mathtext(la), mathtext(lb)  # "$" in a label is a dollar, not math
    x = np.arange(len(names))
    width = 0.38
    style = {"capsize": 3, "error_kw": {"elinewidth": 1, "ecolor": "#1f2328"}}
    bars_a = ax.bar(
        x - width / 2, va, width, label=la, color="#cf222e", yerr=whiskers(a, va), **style
    )
    bars_b = ax.bar(
        x + width / 2, vb, width, label=lb, color="#0969da", yerr=whiskers(b, vb), **style
    )
    for bars in (bars_a, bars_b):
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    many = len(names) > 3
    ticks = [mathtext(n) for n in names]
    ax.set_xticks(x, ticks, rotation=15 if many else 0, ha="right" if many else "center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("spurious rate (top-1 = target), 95% Wilson")
    ax.set_title(f"spurious rate per classifier: {la} vs {lb}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def _nn_plot(sim: dict[str, Any], name: str, la: str, lb: str) -> Any:
    import numpy as np

    values = np.array([n["cosine"] for n in sim["nearest"]])
    la, lb, name = mathtext(la), mathtext(lb), mathtext(name)  # "$" is text, not math
    fig, ax = _figure()
    low = min(float(values.min()), 0.0)
    ax.hist(values, bins=20, range=(low, 1.0), color="#8250df", edgecolor="white")
    ax.axvline(float(values.mean()), color="#1f2328", linestyle="--", linewidth=1)
    ax.set_xlabel(f"cosine to the nearest {lb} image ({name} features)")
    ax.set_ylabel(f"{la} images")
    ax.set_title(f"nearest-neighbour similarity, {la} → {lb}", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)
