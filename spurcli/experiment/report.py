"""The HTML report of `compare` and `run`: one self-contained file a browser opens offline.

    from spurcli.evaluate.compare import compare
    from spurcli.experiment.report import write_report
    result = compare("generated/", "refs/", config)
    write_report("report.html", [result], title="hummingbird: red flower")

What it holds, per comparison (A vs B): the score metrics side by side with their 95% intervals
and the differences A - B (interval, p-value; a difference is coloured only when its interval
excludes 0, see docs/statistics.md), a bar chart of the spurious rate per classifier, the
similarity numbers per feature extractor with a histogram of each A image's nearest-neighbour
cosine to B, the closest A/B pairs (the memorisation check), and the two image grids side by
side with every image's top-1 label per classifier (in red where it is the target class: a
spurious hit). A `run` adds a summary table on top. A curated set (`spurcli curate`, or `run`'s
curate stage) adds a section: its counts per reason, the spurious rates of the held-out and of
the selection classifiers, the kept images and a sample of the rejected ones under each reason.

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
from spurcli.text import html_attribute, html_text, mathtext

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
.ci { color: #57606a; font-size: 11px; display: block; white-space: nowrap; }
.note { margin: 4px 0 12px; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: 8px 12px; font-weight: 600; }
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
    curations: Sequence[Any] = (),
) -> Path:
    """Write the report; ``comparisons`` are `CompareResult`s or their `report_data()` dicts,
    ``curations`` `CurateResult`s or theirs.

    ``summary`` (from `spurcli run`): ``{"columns": [...], "rows": [[...], ...], "caption": str}``.
    A cell is a pre-formatted ``{"text", "css"}`` dict, a `spurcli.evaluate.metrics.rate_difference`
    dict (shown with its interval, coloured only when that excludes 0), or a number (in a
    column named "Δ ..." or "+...": a difference without an interval, never coloured).
    """
    from spurcli.fileio import write_text

    datas = [c if isinstance(c, dict) else c.report_data() for c in comparisons]
    curated = [c if isinstance(c, dict) else c.report_data() for c in curations]
    if not datas and not curated:
        raise ValueError("a report needs at least one comparison or curated set")
    target = datas[0]["a"]["target"] if datas else curated[0]["datasheet"]["target"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_h(title)}</h1>",
        f'<p class="meta">target class {target["index"]} <b>{_e(target["name"])}</b> · '
        f"made by spurcli {__version__} · red labels: the classifier's top-1 is the target "
        "(the image fools it)</p>",
    ]
    parts += [f'<p class="note">{_h(n)}</p>' for n in notes]
    if summary:
        parts.append(_summary(summary))
    for i, data in enumerate(datas):
        parts.append(_comparison(data, i, max_images))
    for i, data in enumerate(curated):
        parts.append(_curation(data, i))
    parts.append("</main></body></html>")
    path = Path(path)
    write_text(path, "\n".join(parts) + "\n")
    return path


def _e(text: Any) -> str:
    return html_attribute(text)


def _h(text: Any) -> str:
    """User text (labels, titles, file names) as element content: escaped and bidi-isolated."""
    return html_text(text)


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


def _ci(ci: Sequence[float] | None, signed: bool = False) -> str:
    if ci is None:
        return ""
    form = "+.3f" if signed else ".3f"
    return f'<span class="ci">[{ci[0]:{form}}, {ci[1]:{form}}]</span>'


def _delta_cell(value: float | dict[str, Any] | None, metric: str | None = None) -> str:
    """A difference: a plain number, or a `rate_difference`-shaped dict with its interval.

    Coloured only when the interval excludes 0 (red where the first set is the more spurious
    one, green where less); a number without an interval is never coloured.
    """
    from spurcli.evaluate.compare import fmt_p
    from spurcli.evaluate.differences import excludes_zero

    if value is None:
        return "<td>&ndash;</td>"
    diff = value if isinstance(value, dict) else {"delta": value, "delta_ci": None}
    delta = diff["delta"]
    if delta is None:
        return "<td>&ndash;</td>"
    direction = DIRECTION.get(metric or "spurious_rate", 0)
    sign = direction * (int(delta > 0) - int(delta < 0)) if excludes_zero(diff) else 0
    css = {1: "pos", -1: "neg"}.get(sign, "")
    text = f"{delta:+.3f}" if abs(delta) >= 5e-4 else "0.000"  # |Δ| < 0.0005 shows as 0.000
    extra = _ci(diff.get("delta_ci"), signed=True)
    if diff.get("subsamples"):
        extra += f'<span class="ci">n={diff["matched_size"]} matched</span>'
    title = ""
    if diff.get("test"):
        title = (
            f' title="{_e(diff["test"])} p = {_e(fmt_p(diff["p_value"]))}; {_e(diff["interval"])}"'
        )
    elif diff.get("interval"):
        title = f' title="{_e(diff["interval"])}"'
    if diff.get("p_value") is not None:
        extra += f'<span class="ci">p = {_e(fmt_p(diff["p_value"]))}</span>'
    return f'<td class="{css}"{title}>{text}{extra}</td>'


def _consensus_rate(consensus: dict[str, Any], key: str) -> str:
    ci = consensus.get(f"{key}_ci")
    text = f"{consensus[key]:.3f}"
    return text if ci is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _differences_note(diffs: dict[str, Any], la: str, lb: str) -> str:
    """The consensus differences, the pairing and the methods, as a sentence (HTML)."""
    from spurcli.evaluate.compare import fmt_difference, fmt_p

    if not diffs:
        return ""
    pairing, consensus = diffs["pairing"], diffs["consensus"]
    rates = consensus["all"]
    text = (
        f" {_h(la)} &minus; {_h(lb)}: all {_e(fmt_difference(rates))} "
        f"(p = {_e(fmt_p(rates['p_value']))}), any {_e(fmt_difference(consensus['any']))} "
        f"(p = {_e(fmt_p(consensus['any']['p_value']))}). "
        + (
            f"Paired by {_e(pairing['rule'])}. "
            if pairing["paired"]
            else f"{_e(pairing['rule'])}. "
        )
        + f"Rates: {_e(rates['test'])} test, {_e(rates['interval'])} interval; other metrics: "
        "percentile bootstrap."
    )
    matched = [
        d["average_precision"]
        for d in diffs.get("classifiers", {}).values()
        if d.get("average_precision", {}).get("subsamples")
    ]
    if matched:
        text += (
            f" average_precision Δ at the smaller set's size (n={matched[0]['matched_size']}, "
            f"mean of {matched[0]['subsamples']} subsamples of the larger set; roc_auc is the "
            "size-free comparison)."
        )
    return text


def _summary(summary: dict[str, Any]) -> str:
    head = "".join(
        f'<th class="{"name" if i == 0 else ""}">{_e(c)}</th>'
        for i, c in enumerate(summary["columns"])
    )
    rows = []
    for row in summary["rows"]:
        cells = [f'<td class="name">{_e(row[0])}</td>']
        for column, value in zip(summary["columns"][1:], row[1:], strict=True):
            if (
                isinstance(value, dict) and "text" in value
            ):  # pre-formatted (spurcli.experiment.summary)
                cells.append(f'<td class="{_e(value["css"])}">{_e(value["text"])}</td>')
            elif isinstance(value, dict) or str(column).startswith(("Δ", "+")):
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
    from spurcli.evaluate.score import METRICS

    la, lb = data["labels"]["a"], data["labels"]["b"]
    a, b = data["a"], data["b"]
    out = [
        f'<h2 id="cmp{number}">{_h(la)} vs {_h(lb)}</h2>',
        f'<p class="meta">{_h(la)}: {a["n_images"]} images in <code>{_e(data["dirs"]["a"])}'
        f"</code> · {_h(lb)}: {b['n_images']} images in <code>{_e(data['dirs']['b'])}</code>"
        + (f" · real images: {a['n_real']}" if a.get("n_real") else "")
        + (
            f" · classifier pixels: <code>--preprocess {_e(a['preprocess'])}</code>"
            if a.get("preprocess", "model") != "model"
            else ""
        )
        + "</p>",
    ]
    # Scores side by side: one row per metric, three columns (A, B, Δ) per classifier.
    names = list(a["classifiers"])
    head = "".join(
        f'<th colspan=3>{_e(n)}<br><span class="meta">{_e(a["classifiers"][n]["weights"])}'
        "</span></th>"
        for n in names
    )
    sub = "".join(f"<th>{_h(la)}</th><th>{_h(lb)}</th><th>Δ</th>" for _ in names)
    rows = []
    diffs = (data.get("differences") or {}).get("classifiers", {})
    for m in METRICS:
        pairs = [(a["classifiers"][n].get(m), b["classifiers"][n].get(m)) for n in names]
        if all(va is None and vb is None for va, vb in pairs):
            continue  # e.g. roc_auc without real images
        cells = [f'<td class="name">{_e(m)}</td>']
        for n, (va, vb) in zip(names, pairs, strict=True):
            diff = diffs.get(n, {}).get(m)
            if diff is None:  # no test of this difference (e.g. real_accuracy: the same images)
                diff = None if va is None or vb is None else va - vb
            ci_a, ci_b = a["classifiers"][n].get(f"{m}_ci"), b["classifiers"][n].get(f"{m}_ci")
            cells.append(
                f"<td>{_num(va)}{_ci(ci_a)}</td><td>{_num(vb)}{_ci(ci_b)}</td>"
                f"{_delta_cell(diff, m)}"
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    ca, cb = a["consensus"], b["consensus"]
    out.append("<h3>Scores</h3>")
    out.append(
        f'<div class="wide"><table><thead><tr><th class="name" rowspan=2>metric</th>{head}</tr>'
        f"<tr>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    out.append(
        f'<p class="note">consensus (every classifier says the target): {_h(la)} '
        f"{_consensus_rate(ca, 'all')}, {_h(lb)} {_consensus_rate(cb, 'all')}; "
        f"any classifier: {_h(la)} "
        f"{_consensus_rate(ca, 'any')}, {_h(lb)} {_consensus_rate(cb, 'any')}."
        + _differences_note(data.get("differences") or {}, la, lb)
        + f" Δ = {_h(la)} &minus; {_h(lb)}; red where {_h(la)} is the more spurious set, green "
        "where less, only when the 95% interval of Δ excludes 0. [lo, hi]: 95% intervals."
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
        out.append(f"<h3>Similarity of {_h(la)} to {_h(lb)} in feature spaces</h3>")
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
            f'<p class="note">mean_cosine: mean over all ({_h(la)}, {_h(lb)}) pairs; '
            f"nn_cosine: each {_h(la)} image's cosine to its nearest {_h(lb)} image (near 1: a "
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
            cells.append(f'<div class="group">{_h(parent)}/</div>')
        folder = parent
        lines = "".join(
            f'<div class="{"hit" if hit else ""}">{_e(c)}: {_e(top1)}</div>'
            for c, top1, hit in labels[image]
        )
        cells.append(
            f'<div class="cell"><img alt="{_e(image)}" src="{thumbnail(root / image)}">'
            f'<div class="file" title="{_e(image)}">{_h(name)}</div>{lines}</div>'
        )
    count = f"{len(shown)} of {len(images)} shown" if len(shown) < len(images) else f"{len(images)}"
    return (
        f'<div class="set"><h3>{_e(label)} ({count})</h3>'
        f'<div class="grid">{"".join(cells)}</div></div>'
    )


def _rate_cell(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "<td>&ndash;</td><td>&ndash;</td>"
    low, high = r["ci95"]
    return f"<td>{r['rate']:.3f} ({r['k']}/{r['n']})</td><td>{low:.3f}&ndash;{high:.3f}</td>"


def _curation(data: dict[str, Any], number: int) -> str:
    """A curated set: warnings, rates (held-out first), filter counts, kept and rejected images."""
    from spurcli.evaluate.curate import REASONS, SELECTION_NOTE, UNCHECKED_NOTE

    sheet, c = data["datasheet"], data["datasheet"]["counts"]
    out = [
        f'<h2 id="curate{number}">Curated set: {c["kept"]} of {c["images"]} images kept</h2>',
        f'<p class="meta">from <code>{_e(data["images_dir"])}</code> into '
        f"<code>{_e(data['out'])}</code> (datasheet.md there says how it was made)</p>",
    ]
    if not sheet["object_checked"]:
        out.append(f'<p class="warn">{_e(UNCHECKED_NOTE)}</p>')
    if sheet.get("why_empty"):
        out.append(f'<p class="warn">No image was kept: {_e(sheet["why_empty"])}.</p>')
    rows = []
    for role, group in (("held-out", "evaluation"), ("selection (biased)", "selection")):
        for name, r in sheet[group].items():
            rows.append(
                f'<tr><td class="name">{_e(name)}</td><td class="name">{_e(role)}</td>'
                f"<td>{_e(r['weights'])}</td>{_rate_cell(r['kept'])}"
                f"<td>{_num(r['all_readable']['rate'])}</td></tr>"
            )
    out.append(
        "<h3>Spurious rate of the kept set</h3>"
        '<table><thead><tr><th class="name">classifier</th><th class="name">role</th>'
        "<th>weights</th><th>kept: rate</th><th>95% CI (Wilson)</th><th>all readable</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="note">Selection classifiers: {_e(SELECTION_NOTE)}.'
        + ("" if sheet["evaluation"] else " No held-out classifier was given (--evaluate-with).")
        + "</p>"
    )
    filters = sheet["filters"]
    frows = "".join(
        f'<tr><td class="name">{_e(r)}</td><td class="name">{_e(filters[r].get("rule", ""))}'
        f"</td><td>{c[r]}</td><td>{sheet['removed_only_by'][r]}</td></tr>"
        for r in REASONS
        if r not in ("unreadable", "over-limit") or c[r]
    )
    out.append(
        '<h3>Filters</h3><table><thead><tr><th class="name">reason</th><th class="name">rule'
        "</th><th>images</th><th>only this reason</th></tr></thead>"
        f"<tbody>{frows}</tbody></table>"
    )
    root = Path(data["images_dir"])
    out.append(f"<h3>Kept ({len(data['kept'])} of {c['kept']} shown)</h3>")
    out.append(_verdict_grid(data["kept"], root))
    for reason, rows_ in data["rejected"].items():
        out.append(f"<h3>Rejected: {_e(reason)} ({len(rows_)} of {c[reason]} shown)</h3>")
        out.append(_verdict_grid(rows_, root))
    return "\n".join(out)


def _verdict_grid(verdicts: Sequence[dict[str, Any]], root: Path) -> str:
    cells = []
    for v in verdicts:
        lines = [
            f'<div class="{"hit" if v["fooled"].get(n) else ""}">{_e(n)}: p {p:.2f}</div>'
            for n, p in v["target_prob"].items()
        ]
        lines += [f"<div>{_e(n)}: presence {p:.2f}</div>" for n, p in v["presence"].items()]
        if v.get("similarity") is not None:
            lines.append(f"<div>nearest ref cos {v['similarity']:.3f}</div>")
        if v.get("message"):  # "path: reason"; the cell already names the file
            lines.append(f"<div>{_e(v['message'].rpartition(': ')[2])}</div>")
        if v["reasons"]:
            lines.append(f'<div class="hit">{_e(", ".join(v["reasons"]))}</div>')
        cells.append(
            f'<div class="cell"><img alt="{_e(v["file"])}" src="{thumbnail(root / v["file"])}">'
            f'<div class="file" title="{_e(v["file"])}">{_e(v["file"].rpartition("/")[2])}</div>'
            f"{''.join(lines)}"
            "</div>"
        )
    return f'<div class="grid">{"".join(cells)}</div>'


def _pairs(sim: dict[str, Any], name: str, data: dict[str, Any], la: str, lb: str) -> str:
    nearest = sorted(sim["nearest"], key=lambda n: -n["cosine"])[:TOP_PAIRS]
    ra, rb = Path(data["dirs"]["a"]), Path(data["dirs"]["b"])
    cells = [
        f'<div class="pair"><img alt="" src="{thumbnail(ra / n["image"], 88)}"> '
        f'<img alt="" src="{thumbnail(rb / n["neighbour"], 88)}">'
        f'<div class="files">cos {n["cosine"]:.3f}<br>{_h(n["image"])} → {_h(n["neighbour"])}'
        "</div></div>"
        for n in nearest
    ]
    return (
        f"<h3>Closest pairs in {_e(name)} space ({_h(la)} image, its nearest {_h(lb)} image)</h3>"
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


def _nn_plot(sim: dict[str, Any], name: str, la: str, lb: str) -> str:
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
