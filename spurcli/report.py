"""The HTML report of `compare` and `run`: one self-contained file a browser opens offline.

    from spurcli.compare import compare
    from spurcli.report import write_report
    result = compare("generated/", "refs/", config)
    write_report("report.html", [result], title="hummingbird: red flower")

What it holds, per comparison (A vs B): the score metrics side by side, a bar chart of the
spurious rate per classifier, the similarity numbers per feature extractor with a histogram of
each A image's nearest-neighbour cosine to B, the closest A/B pairs (the memorisation check), and
the two image grids side by side with every image's top-1 label per classifier (in red where it
is the target class: a spurious hit). A `run` adds a summary table on top.

Self-contained: thumbnails are JPEGs embedded as base64 data URIs, plots are inline SVG drawn by
matplotlib (text left as text, no embedded fonts), the CSS is inline, and there is no script:
nothing is fetched from anywhere. Grids show at most ``max_images`` images per set (all of them
are scored; the heading says how many are shown).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spurcli import __version__

THUMB = 128  # thumbnail side in pixels (the centre square, as the classifiers see it)
TOP_PAIRS = 6  # nearest-neighbour pairs shown per extractor

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1f2328; background: #f6f8fa; }
main { max-width: 1360px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 40px 0 8px; padding-top: 16px; border-top: 2px solid #d0d7de; }
h3 { font-size: 16px; margin: 24px 0 8px; }
.meta, .note { color: #57606a; font-size: 13px; }
.note { margin: 4px 0 12px; }
table { border-collapse: collapse; background: #fff; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th { background: #eaeef2; }
td.name, th.name { text-align: left; }
td.pos { color: #b42318; font-weight: 600; }
td.neg { color: #1a7f37; }
.wide { overflow-x: auto; max-width: 100%; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.plot { background: #fff; border: 1px solid #d0d7de; padding: 4px; }
.plot svg { display: block; width: 420px; height: auto; }
.sets { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
.set { background: #fff; border: 1px solid #d0d7de; padding: 8px 12px; min-width: 0; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.group { flex-basis: 100%; font-size: 12px; color: #57606a; margin-top: 6px;
         overflow-wrap: anywhere; }
.cell { width: 128px; font-size: 11px; line-height: 1.3; overflow-wrap: anywhere; }
.cell img { width: 128px; height: 128px; display: block; background: #ddd; }
.cell .file { color: #57606a; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.cell .hit { color: #b42318; font-weight: 600; }
.pairs { display: flex; flex-wrap: wrap; gap: 16px; }
.pair { background: #fff; border: 1px solid #d0d7de; padding: 6px; font-size: 11px; }
.pair img { width: 88px; height: 88px; }
.pair .files { width: 180px; overflow-wrap: anywhere; color: #57606a; }
"""


def write_report(
    path: str | os.PathLike[str],
    comparisons: Sequence[Any],
    *,
    title: str = "spurcli report",
    summary: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    max_images: int = 48,
) -> Path:
    """Write the report; ``comparisons`` are `CompareResult`s or their `report_data()` dicts.

    ``summary`` (from `spurcli run`): ``{"columns": [...], "rows": [[...], ...], "caption": str}``.
    """
    from spurcli.fileio import write_text

    datas = [c if isinstance(c, dict) else c.report_data() for c in comparisons]
    if not datas:
        raise ValueError("a report needs at least one comparison")
    target = datas[0]["a"]["target"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">target class {target["index"]} <b>{_e(target["name"])}</b> · '
        f"made by spurcli {__version__} · red labels: the classifier's top-1 is the target "
        "(the image fools it)</p>",
    ]
    parts += [f'<p class="note">{_e(n)}</p>' for n in notes]
    if summary:
        parts.append(_summary(summary))
    for i, data in enumerate(datas):
        parts.append(_comparison(data, i, max_images))
    parts.append("</main></body></html>")
    path = Path(path)
    write_text(path, "\n".join(parts) + "\n")
    return path


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


# +1: a higher value means more spurious (the classifier falls for the images more); -1: lower.
DIRECTION = {
    "spurious_rate": 1,
    "top5_rate": 1,
    "mean_target_prob": 1,
    "median_target_prob": 1,
    "roc_auc": -1,
    "average_precision": -1,
}


def _delta_cell(value: float | None, metric: str | None = None) -> str:
    """A difference, red where the first set is the more spurious one, green where less."""
    if value is None:
        return "<td>&ndash;</td>"
    direction = DIRECTION.get(metric or "spurious_rate", 0)
    sign = direction * (int(value > 5e-4) - int(value < -5e-4))  # |Δ| < 0.0005 shows as 0.000
    css = {1: "pos", -1: "neg"}.get(sign, "")
    text = f"{value:+.3f}" if abs(value) >= 5e-4 else "0.000"
    return f'<td class="{css}">{text}</td>'


def _summary(summary: dict[str, Any]) -> str:
    head = "".join(
        f'<th class="{"name" if i == 0 else ""}">{_e(c)}</th>'
        for i, c in enumerate(summary["columns"])
    )
    rows = []
    for row in summary["rows"]:
        cells = [f'<td class="name">{_e(row[0])}</td>']
        for column, value in zip(summary["columns"][1:], row[1:], strict=True):
            if isinstance(value, dict):  # pre-formatted {"text", "css"} (spurcli.summary)
                cells.append(f'<td class="{_e(value["css"])}">{_e(value["text"])}</td>')
            elif str(column).startswith(("Δ", "+")):
                cells.append(_delta_cell(value))
            else:
                cells.append(f"<td>{_num(value)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    caption = f'<p class="note">{_e(summary["caption"])}</p>' if summary.get("caption") else ""
    return (
        f"<h2>Summary</h2>{caption}<table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _comparison(data: dict[str, Any], number: int, max_images: int) -> str:
    from spurcli.score import METRICS

    la, lb = data["labels"]["a"], data["labels"]["b"]
    a, b = data["a"], data["b"]
    out = [
        f'<h2 id="cmp{number}">{_e(la)} vs {_e(lb)}</h2>',
        f'<p class="meta">{_e(la)}: {a["n_images"]} images in <code>{_e(data["dirs"]["a"])}'
        f"</code> · {_e(lb)}: {b['n_images']} images in <code>{_e(data['dirs']['b'])}</code>"
        + (f" · real images: {a['n_real']}" if a.get("n_real") else "")
        + "</p>",
    ]
    # Scores side by side: one row per metric, three columns (A, B, Δ) per classifier.
    names = list(a["classifiers"])
    head = "".join(
        f'<th colspan=3>{_e(n)}<br><span class="meta">{_e(a["classifiers"][n]["weights"])}'
        "</span></th>"
        for n in names
    )
    sub = "".join(f"<th>{_e(la)}</th><th>{_e(lb)}</th><th>Δ</th>" for _ in names)
    rows = []
    for m in METRICS:
        pairs = [(a["classifiers"][n].get(m), b["classifiers"][n].get(m)) for n in names]
        if all(va is None and vb is None for va, vb in pairs):
            continue  # e.g. roc_auc without real images
        cells = [f'<td class="name">{_e(m)}</td>']
        for va, vb in pairs:
            delta = None if va is None or vb is None else va - vb
            cells.append(f"<td>{_num(va)}</td><td>{_num(vb)}</td>{_delta_cell(delta, m)}")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    ca, cb = a["consensus"], b["consensus"]
    out.append("<h3>Scores</h3>")
    out.append(
        f'<div class="wide"><table><thead><tr><th class="name" rowspan=2>metric</th>{head}</tr>'
        f"<tr>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    out.append(
        f'<p class="note">consensus (every classifier says the target): {_e(la)} '
        f"{ca['all']:.3f}, {_e(lb)} {cb['all']:.3f}; any classifier: {_e(la)} {ca['any']:.3f}, "
        f"{_e(lb)} {cb['any']:.3f}. Δ = {_e(la)} &minus; {_e(lb)}, red where {_e(la)} is the more "
        "spurious set."
        + (
            " Classifiers with weights 'random' are untrained: their numbers say nothing about "
            "a real model."
            if any(s["weights"] == "random" for s in a["classifiers"].values())
            else ""
        )
        + "</p>"
    )
    plots = [_rate_plot(a, b, la, lb)]
    # Similarity.
    sims = data.get("similarity") or {}
    if sims:
        out.append(f"<h3>Similarity of {_e(la)} to {_e(lb)} in feature spaces</h3>")
        srows = []
        notes = []
        for name, s in sims.items():
            srows.append(
                f'<tr><td class="name">{_e(name)}</td><td>{_num(s["mean_cosine"])}</td>'
                f"<td>frechet_{_e(name)} = {_num(s['frechet'])}</td>"
                f"<td>{_num(s['nn_cosine_mean'])}</td><td>{_num(s['nn_cosine_max'])}</td></tr>"
            )
            if s.get("frechet_note"):
                notes.append(f"frechet_{name}: {s['frechet_note']}.")
            if s.get("nearest"):
                plots.append(_nn_plot(s, name, la, lb))
        out.append(
            '<table><thead><tr><th class="name">extractor</th><th>mean_cosine</th>'
            "<th>Fréchet distance</th><th>nn_cosine_mean</th><th>nn_cosine_max</th></tr></thead>"
            f"<tbody>{''.join(srows)}</tbody></table>"
        )
        out.append(
            f'<p class="note">mean_cosine: mean over all ({_e(la)}, {_e(lb)}) pairs; '
            f"nn_cosine: each {_e(la)} image's cosine to its nearest {_e(lb)} image (near 1: a "
            "copy). " + " ".join(_e(n) for n in notes) + "</p>"
        )
    out.append(f'<div class="plots">{"".join(plots)}</div>')
    for name, s in sims.items():
        if s.get("nearest"):
            out.append(_pairs(s, name, data, la, lb))
    # Grids.
    target = a["target"]["index"]
    out.append("<h3>Images</h3>")
    out.append('<div class="sets">')
    for key, label in (("a", la), ("b", lb)):
        out.append(_grid(data, key, label, target, max_images))
    out.append("</div>")
    return "\n".join(out)


def _labels(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[str, str, bool]]]:
    """image -> [(classifier, top-1 name, is target)], in row order."""
    by_image: dict[str, list[tuple[str, str, bool]]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(
            (row["classifier"], row["top1_name"], int(row.get("target_rank", 0)) == 1)
        )
    return by_image


def _grid(data: dict[str, Any], key: str, label: str, target: int, max_images: int) -> str:
    root = Path(data["dirs"][key])
    labels = _labels(data["rows"][key])
    images = list(labels)
    shown = images[:max_images]
    cells = []
    folder = None
    for image in shown:
        parent, _, name = image.rpartition("/")
        if parent != folder and parent:  # a heading per sub-folder (per prompt, for samples)
            cells.append(f'<div class="group">{_e(parent)}/</div>')
        folder = parent
        lines = "".join(
            f'<div class="{"hit" if hit else ""}">{_e(c)}: {_e(top1)}</div>'
            for c, top1, hit in labels[image]
        )
        cells.append(
            f'<div class="cell"><img alt="{_e(image)}" src="{thumbnail(root / image)}">'
            f'<div class="file" title="{_e(image)}">{_e(name)}</div>{lines}</div>'
        )
    count = f"{len(shown)} of {len(images)} shown" if len(shown) < len(images) else f"{len(images)}"
    return (
        f'<div class="set"><h3>{_e(label)} ({count})</h3>'
        f'<div class="grid">{"".join(cells)}</div></div>'
    )


def _pairs(sim: dict[str, Any], name: str, data: dict[str, Any], la: str, lb: str) -> str:
    nearest = sorted(sim["nearest"], key=lambda n: -n["cosine"])[:TOP_PAIRS]
    ra, rb = Path(data["dirs"]["a"]), Path(data["dirs"]["b"])
    cells = [
        f'<div class="pair"><img alt="" src="{thumbnail(ra / n["image"], 88)}"> '
        f'<img alt="" src="{thumbnail(rb / n["neighbour"], 88)}">'
        f'<div class="files">cos {n["cosine"]:.3f}<br>{_e(n["image"])} → {_e(n["neighbour"])}'
        "</div></div>"
        for n in nearest
    ]
    return (
        f"<h3>Closest pairs in {_e(name)} space ({_e(la)} image, its nearest {_e(lb)} image)</h3>"
        f'<div class="pairs">{"".join(cells)}</div>'
    )


def thumbnail(path: Path, size: int = THUMB) -> str:
    """A data URI of the image's centre square as a JPEG (a grey box if it cannot be read)."""
    from PIL import Image, ImageOps

    from spurcli.images import ImageReadError, read_image

    try:
        image = ImageOps.fit(read_image(path), (size, size), Image.Resampling.BICUBIC)
    except (ImageReadError, OSError):
        image = Image.new("RGB", (size, size), (200, 200, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------ plots


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    svg = buffer.getvalue()
    return f'<div class="plot">{svg[svg.index("<svg") :]}</div>'  # drop the XML prologue


def _figure(width: float = 5.2, height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI toolkit import
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small, and no duplicate glyph ids
    plt.rcParams["svg.hashsalt"] = "spurcli"  # stable element ids
    return plt.subplots(figsize=(width, height))


def _rate_plot(a: dict[str, Any], b: dict[str, Any], la: str, lb: str) -> str:
    import numpy as np

    names = list(a["classifiers"])
    va = [a["classifiers"][n]["spurious_rate"] for n in names]
    vb = [b["classifiers"][n]["spurious_rate"] for n in names]
    fig, ax = _figure()
    x = np.arange(len(names))
    width = 0.38
    bars_a = ax.bar(x - width / 2, va, width, label=la, color="#cf222e")
    bars_b = ax.bar(x + width / 2, vb, width, label=lb, color="#0969da")
    for bars in (bars_a, bars_b):
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(
        x, names, rotation=15 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center"
    )
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("spurious rate (top-1 = target)")
    ax.set_title(f"spurious rate per classifier: {la} vs {lb}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def _nn_plot(sim: dict[str, Any], name: str, la: str, lb: str) -> str:
    import numpy as np

    values = np.array([n["cosine"] for n in sim["nearest"]])
    fig, ax = _figure()
    low = min(float(values.min()), 0.0)
    ax.hist(values, bins=20, range=(low, 1.0), color="#8250df", edgecolor="white")
    ax.axvline(float(values.mean()), color="#1f2328", linestyle="--", linewidth=1)
    ax.set_xlabel(f"cosine to the nearest {lb} image ({name} features)")
    ax.set_ylabel(f"{la} images")
    ax.set_title(f"nearest-neighbour similarity, {la} → {lb}", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)
