"""The HTML report: self-contained (no network, no script), the right tables, plots and grids."""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest
from _compare_helpers import make_sets
from PIL import Image

from spurcli.evaluate.compare import CompareConfig, compare
from spurcli.experiment.report import write_report


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


@pytest.fixture
def comparison(tmp_path, fake_plugin):
    a, b = make_sets(tmp_path)
    config = CompareConfig(target=94, classifiers=["fake", "fake:1"], extractors=["fake"])
    return compare(a, b, config, labels=("generated", "references"))


def parse(path) -> Collect:
    page = Collect()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_is_self_contained_and_complete(tmp_path, comparison):
    summary = {
        "columns": ["classifier", "generated", "baseline", "Δ vs baseline"],
        "rows": [["fake", 1.0, 0.25, 0.75]],
        "caption": "spurious rate per set",
    }
    path = write_report(
        tmp_path / "out" / "report.html", [comparison], title="T <&>", summary=summary
    )
    text = path.read_text(encoding="utf-8")
    page = parse(path)
    # Nothing to fetch: no scripts, stylesheets or remote URLs anywhere.
    assert not page.find("script") and not page.find("link") and not page.find("iframe")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    images = page.find("img")
    assert images and all(img["src"].startswith("data:image/jpeg;base64,") for img in images)
    jpeg = base64.b64decode(images[0]["src"].split(",", 1)[1])
    assert jpeg[:2] == b"\xff\xd8"  # a real JPEG
    # Grids: every image of both sets (4 + 4) plus 4 nearest-neighbour pairs (2 images each).
    assert len(images) == 8 + 2 * 4
    body = " ".join(page.text)
    assert "T <&>" in body and "<title>T &lt;&amp;&gt;</title>" in text  # escaped
    assert "frechet_fake" in body and "Summary" in body and "spurious rate per set" in body
    assert "fake: hummingbird" in body and "fake:1: goldfish" in body  # top-1 labels
    assert text.count('class="hit"') == 4 + 1  # red labels: A's 4 images + B's copy, for `fake`
    assert text.count("<svg") == 2  # the spurious-rate bars and the NN histogram
    assert "roc_auc" not in body  # no real images: those rows are left out
    heads = [attrs for attrs in page.find("th")]
    assert heads  # tables have headers
    assert "+0.750" in body  # the summary's delta, signed


def test_report_caps_the_grid_and_survives_a_missing_image(tmp_path, comparison):
    (tmp_path / "a" / "red1.png").unlink()  # the report is drawn later than the scoring
    path = write_report(tmp_path / "r.html", [comparison.report_data()], max_images=2)
    body = " ".join(parse(path).text)
    assert "2 of 4 shown" in body
    with pytest.raises(ValueError):
        write_report(tmp_path / "none.html", [])


def test_report_renders_in_headless_chromium(tmp_path, comparison, chromium):
    path = write_report(tmp_path / "report.html", [comparison])
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1400,1200",
                path.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    with Image.open(shot) as image:
        colours = image.convert("RGB").resize((140, 120)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # a rendered page, not a blank one


def test_a_difference_is_coloured_by_the_printed_test_and_never_when_zero():
    from spurcli.experiment.report import delta_cell

    def css(cell: dict) -> str:
        return cell["css"]

    above = {"delta": 0.4, "delta_ci": [0.1, 0.6], "p_value": 0.01, "test": "t", "interval": "i"}
    across = {**above, "delta_ci": [-0.1, 0.6], "p_value": 0.2}
    below = {**above, "delta": -0.4, "delta_ci": [-0.6, -0.1]}
    assert css(delta_cell(above, "spurious_rate")) == "pos"  # A more spurious
    assert css(delta_cell(below, "spurious_rate")) == "neg"
    assert css(delta_cell(above, "roc_auc")) == "neg"  # higher AUC: A less spurious
    assert css(delta_cell(across, "spurious_rate")) == ""  # the interval holds 0
    assert css(delta_cell(0.4, "spurious_rate")) == ""  # no interval: never coloured
    unmatched_ap = {**above, "delta_ci": None, "matched_size": 3, "subsamples": 200}
    assert css(delta_cell(unmatched_ap, "average_precision")) == ""
    assert delta_cell(above)["ci"] == "[+0.100, +0.600]" and delta_cell(above)["p"] == "0.01"
    # 5 vs 0 discordant pairs of 24: Newcombe's interval excludes 0, McNemar's p = 0.0625
    from spurcli.evaluate.metrics import rate_difference

    five = rate_difference(np.r_[np.ones(5), np.zeros(19)], np.zeros(24), paired=True)
    assert five["delta_ci"][0] > 0 and five["p_value"] == pytest.approx(0.0625)
    assert css(delta_cell(five, "spurious_rate")) == ""
    zero = {**above, "delta": 0.0, "delta_ci": [0.0, 0.0], "p_value": 0.0}
    assert css(delta_cell(zero, "spurious_rate")) == "" and delta_cell(zero)["text"] == "0.000"
    no_test = {"delta": 0.4, "delta_ci": [0.1, 0.6]}  # a bootstrap interval alone decides
    assert css(delta_cell(no_test, "spurious_rate")) == "pos"


def test_report_shows_intervals_and_colours_by_them(tmp_path, comparison):
    text = write_report(tmp_path / "r.html", [comparison]).read_text(encoding="utf-8")
    rate = comparison.differences["classifiers"]["fake"]["spurious_rate"]
    lo, hi = rate["delta_ci"]
    assert lo > 0  # 4/4 vs 1/4: Newcombe's interval excludes 0 (Fisher's p = 0.14 does not) ...
    # ... and the p-value printed beside it decides: not coloured
    assert '<td class="" title="Fisher exact p = 0.143; Newcombe hybrid score">+0.750' in text
    assert f"[{lo:+.3f}, {hi:+.3f}]" in text
    ci = comparison.a["classifiers"]["fake"]["spurious_rate_ci"]
    assert f'<span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' in text
    assert "only where the test printed beside Δ gives p &lt; 0.05" in text


def test_summary_cells_a_difference_dict_or_a_preformatted_one(tmp_path, comparison):
    from spurcli.evaluate.metrics import rate_difference

    diff = rate_difference([1, 1, 1, 1], [0, 0, 0, 0], paired=False)  # excludes 0
    summary = {
        "columns": ["classifier", "Δ a - b", "text"],
        "rows": [["fake", diff, {"text": "0.5 [x]", "css": "neg"}]],
    }
    text = write_report(tmp_path / "s.html", [comparison], summary=summary).read_text("utf-8")
    assert '<td class="pos" title="Fisher exact' in text and '<td class="neg">0.5 [x]</td>' in text
