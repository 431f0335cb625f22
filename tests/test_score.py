"""`spurcli score`: every metric against values worked out by hand from a deterministic plugin.

The plugin (tests/_score_helpers.py) makes classifier det-r put a solid-colour image with red
value u in class u, with logits -|j - u| / 2; det-g and det-b do the same with green and blue.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _score_helpers import FACTORY_CALLS, MODES, ScoreTestPlugin, expected_prob, write_solid
from sklearn.metrics import average_precision_score, roc_auc_score

from spurcli import plugins
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate import imagepass
from spurcli.evaluate.benchmark import score_spurious_imagenet
from spurcli.evaluate.metrics import wilson_interval
from spurcli.evaluate.score import score_images
from spurcli.plugins import get_plugins, load_classifiers

K = 94  # hummingbird
DET = ["det-r", "det-g", "det-b"]
# Scored images S: (r, g, b). det-r: u = 94..97, 200 -> top-1 only for the first;
# det-g puts images 0, 1 in class 94, det-b images 0, 3.
S_COLOURS = [(94, 94, 94), (95, 94, 200), (96, 200, 200), (97, 200, 94), (200, 200, 200)]
R_COLOURS = [(94, 94, 94), (94, 95, 0), (95, 0, 0)]  # real images R of class 94


@pytest.fixture(autouse=True)
def plugin():
    """A fresh plugin manager (installed plugins) plus the deterministic test plugin."""
    plugins.reset_plugins()
    get_plugins().register(ScoreTestPlugin(), name="score-test")
    yield
    plugins.reset_plugins()


@pytest.fixture
def folders(tmp_path):
    s, r = tmp_path / "s", tmp_path / "r"
    for i, rgb in enumerate(S_COLOURS):
        # Different sizes and aspect ratios: the batch still needs one tensor size.
        write_solid(s / f"{i}.png", rgb, size=(40 + 7 * i, 30 + 11 * i))
    for i, rgb in enumerate(R_COLOURS):
        write_solid(r / "sub" / f"{i}.png" if i == 2 else r / f"{i}.png", rgb)
    return s, r


def _score(folders, **kw):
    s, r = folders
    kw.setdefault("device", "cpu")
    kw.setdefault("num_workers", 0)
    return score_images(s, "hummingbird", DET, real_dir=r, **kw)


def test_every_metric_has_its_hand_computed_value(folders):
    result = _score(folders)
    out = result.to_json()
    det_r = out["classifiers"]["det-r"]
    p = [expected_prob(u, K) for u in (94, 95, 96, 97, 200)]
    assert det_r["spurious_rate"] == pytest.approx(1 / 5)
    assert det_r["top5_rate"] == pytest.approx(3 / 5)  # ranks 1, 2, 4, 6, 212
    assert det_r["mean_target_prob"] == pytest.approx(np.mean(p), rel=1e-9)
    assert det_r["median_target_prob"] == pytest.approx(p[2], rel=1e-9)
    # R: u = 94, 94, 95 (p_d0, p_d0, p_d1) vs S: d = 0, 1, 2, 3, 106. Pairs won, ties 1/2:
    # 2 x (0.5 + 4) + (0 + 0.5 + 3) = 12.5 of 15.
    assert det_r["roc_auc"] == pytest.approx(12.5 / 15)
    # Descending: d0 x3 (2 real, 1 not) -> P 2/3 at R 2/3; d1 x2 (1 real) -> P 3/5 at R 1.
    assert det_r["average_precision"] == pytest.approx(2 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert det_r["real_accuracy"] == pytest.approx(2 / 3)
    assert out["classifiers"]["det-g"]["spurious_rate"] == pytest.approx(2 / 5)
    assert out["classifiers"]["det-b"]["real_accuracy"] == pytest.approx(1 / 3)
    # Images put in 94 by: 3, 1, 0, 1, 0 classifiers.
    consensus = out["consensus"]
    assert {k: consensus[k] for k in ("all", "any", "histogram")} == {
        "all": 0.2,
        "any": 0.6,
        "histogram": [2, 2, 0, 1],
    }
    # Every rate's 95% interval is its Wilson score interval.
    assert det_r["spurious_rate_ci"] == wilson_interval(1, 5)
    assert det_r["top5_rate_ci"] == wilson_interval(3, 5)
    assert det_r["real_accuracy_ci"] == wilson_interval(2, 3)
    assert consensus["all_ci"] == wilson_interval(1, 5)
    assert consensus["any_ci"] == wilson_interval(3, 5)


def test_bootstrap_intervals_are_seeded_and_recorded(folders):
    first = _score(folders, bootstrap=200, bootstrap_seed=5).to_json()
    again = _score(folders, bootstrap=200, bootstrap_seed=5).to_json()
    other = _score(folders, bootstrap=200, bootstrap_seed=6).to_json()
    assert first == again
    assert first["uncertainty"]["bootstrap"] == {
        "method": "percentile; real and scored images resampled independently",
        "resamples": 200,
        "seed": 5,
    }
    assert first["uncertainty"]["rates"] == "Wilson score"
    keys = ("mean_target_prob", "median_target_prob", "roc_auc", "average_precision")
    for name, entry in first["classifiers"].items():
        for key in keys:
            lo, hi = entry[f"{key}_ci"]
            assert lo <= entry[key] <= hi, (name, key)
    assert any(
        first["classifiers"][n][f"{k}_ci"] != other["classifiers"][n][f"{k}_ci"]
        for n in DET
        for k in keys
    )
    off = _score(folders, bootstrap=0).to_json()
    for entry in off["classifiers"].values():
        assert all(entry[f"{key}_ci"] is None for key in keys)
        assert entry["spurious_rate_ci"] is not None  # Wilson needs no resampling
    assert off["uncertainty"]["bootstrap"]["resamples"] == 0


def test_auc_and_ap_agree_with_sklearn(folders):
    result = _score(folders)
    for c, name in enumerate(DET):
        y = np.r_[np.ones(result.n_real), np.zeros(result.n_images)]
        scores = np.r_[result.real.target_prob[c], result.spurious.target_prob[c]]
        got = result.scores[name]
        assert got["roc_auc"] == pytest.approx(roc_auc_score(y, scores))
        assert got["average_precision"] == pytest.approx(average_precision_score(y, scores))


def test_json_shape_is_exactly_the_documented_one(folders):
    metrics = (
        "spurious_rate",
        "top5_rate",
        "mean_target_prob",
        "median_target_prob",
        "roc_auc",
        "average_precision",
        "real_accuracy",
    )
    metric_keys = {"weights", "weights_id", *metrics, *(f"{m}_ci" for m in metrics)}
    s, _ = folders
    out = score_images(s, 94, ["det-r", "det-g"], device="cpu", num_workers=0).to_json()
    keys = {"target", "n_images", "n_real", "classifiers", "consensus", "uncertainty"}
    assert set(out) == {*keys, "preprocess"} and out["preprocess"] == "model"
    assert out["target"] == {"index": 94, "name": "hummingbird"}
    assert out["n_images"] == 5 and out["n_real"] is None
    assert list(out["classifiers"]) == ["det-r", "det-g"]
    for entry in out["classifiers"].values():
        assert set(entry) == metric_keys
        assert entry["weights"] == "deterministic"
        assert entry["roc_auc"] is None
        assert entry["average_precision"] is None
        assert entry["real_accuracy"] is None
        assert entry["roc_auc_ci"] is entry["real_accuracy_ci"] is None  # null beside null
    assert set(out["consensus"]) == {"all", "all_ci", "any", "any_ci", "histogram"}
    json.dumps(out)  # plain JSON types only


def test_rows_and_csv(folders, tmp_path):
    result = _score(folders)
    rows = result.rows
    assert len(rows) == 5 * 3
    assert rows[0] == {
        "image": "0.png",
        "classifier": "det-r",
        "top1_index": 94,
        "top1_name": "hummingbird",
        "target_prob": pytest.approx(expected_prob(94, K)),
        "target_rank": 1,
    }
    by_key = {(r["image"], r["classifier"]): r for r in rows}
    assert by_key[("1.png", "det-r")]["target_rank"] == 2  # 95 first, then 94 before 96
    assert by_key[("2.png", "det-r")]["target_rank"] == 4  # 95, 96, 97 closer
    assert by_key[("3.png", "det-r")]["target_rank"] == 6
    assert by_key[("4.png", "det-r")]["target_rank"] == 212  # 95..305 closer, 94 before 306
    assert by_key[("4.png", "det-b")]["top1_index"] == 200
    assert by_key[("4.png", "det-b")]["top1_name"] == "Tibetan Terrier"
    path = tmp_path / "out" / "rows.csv"
    result.write_csv(path)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == [
        "image",
        "classifier",
        "top1_index",
        "top1_name",
        "target_prob",
        "target_rank",
    ]
    assert len(read) == 15
    assert float(read[0]["target_prob"]) == pytest.approx(expected_prob(94, K), rel=1e-12)
    assert [int(r["target_rank"]) for r in read if r["classifier"] == "det-r"] == [
        1,
        2,
        4,
        6,
        212,
    ]


def test_each_image_is_decoded_once_and_each_model_loaded_once(folders, monkeypatch):
    calls: list[str] = []
    real_read = imagepass.read_image

    def counting_read(path):
        calls.append(Path(path).name)
        return real_read(path)

    monkeypatch.setattr(imagepass, "read_image", counting_read)
    FACTORY_CALLS.clear()
    models = load_classifiers(DET)
    s, r = folders
    first = score_images(s, K, models, real_dir=r, device="cpu", num_workers=0)
    second = score_images(s, K, models, device="cpu", num_workers=0)
    assert len(calls) == (5 + 3) + 5  # three classifiers, yet one read per image and run
    assert FACTORY_CALLS == DET  # compare's pattern: load once, score two folders
    assert first.scores["det-r"]["spurious_rate"] == second.scores["det-r"]["spurious_rate"]


def test_models_run_under_inference_mode(folders):
    MODES.clear()
    _score(folders, batch_size=2)
    assert len(MODES) == 3 * 4 and all(MODES)  # 3 models x 4 batches of S + R (8 images)


def test_batching_and_workers_do_not_change_numbers(folders):
    one = _score(folders, batch_size=1, num_workers=0).to_json()
    many = _score(folders, batch_size=3, num_workers=2).to_json()
    assert many == one


def test_corrupt_files_are_skipped_and_counted_or_fail_with_strict(folders, caplog):
    s, _ = folders
    (s / "broken.png").write_bytes(b"\x89PNG not really")
    (s / "notes.txt").write_text("not an image suffix: ignored")
    result = _score(folders)
    assert result.n_images == 5
    assert len(result.skipped) == 1 and "broken.png" in result.skipped[0]
    assert "broken.png" in caplog.text
    assert "1 skipped" in str(result.table().caption)
    with pytest.raises(SpurcliError, match=r"broken\.png.*--strict"):
        _score(folders, strict=True)


@pytest.mark.parametrize(
    "name, message",
    [
        ("bad-shape", r"'bad-shape' \(plugin 'score-test'\) returned shape \(5, 10\)"),
        ("bad-nan", r"'bad-nan' \(plugin 'score-test'\) returned NaN"),
        ("bad-inplace", r"'bad-inplace' \(plugin 'score-test'\) modified its input"),
        ("bad-tuple", r"'bad-tuple' \(plugin 'score-test'\) returned tuple"),
    ],
)
def test_plugin_bugs_are_clear_errors_naming_the_plugin(folders, name, message):
    s, _ = folders
    with pytest.raises(SpurcliError, match=message):
        score_images(s, K, [name, "det-r"], device="cpu", num_workers=0)


def test_bad_input_errors(folders, tmp_path):
    s, _ = folders
    with pytest.raises(UsageError, match=r"unknown classifier 'det-x'.*did you mean"):
        score_images(s, K, ["det-r", "det-x"])
    with pytest.raises(UsageError, match=r"unknown ImageNet class 'humingbird'.*hummingbird"):
        score_images(s, "humingbird", ["det-r"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpurcliError, match=r"no images in .*empty"):
        score_images(tmp_path / "empty", K, ["det-r"])
    with pytest.raises(SpurcliError, match=r"no images in .*empty"):
        score_images(s, K, ["det-r"], real_dir=tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"junk")
    with pytest.raises(SpurcliError, match="no readable images in --real"):
        score_images(s, K, ["det-r"], real_dir=tmp_path / "junk", device="cpu", num_workers=0)
    with pytest.raises(UsageError, match="--weights given for det-g"):
        score_images(s, K, ["det-r"], weights={"det-g": "random"})
    with pytest.raises(UsageError, match="listed twice"):
        score_images(s, K, ["det-r", "det-r"])
    with pytest.raises(SpurcliError, match=r"weights file .* not found"):
        score_images(s, K, ["det-r"], weights={"det-r": str(tmp_path / "nope.pt")})


def test_random_weights_are_marked(folders):
    s, _ = folders
    result = score_images(
        s, K, ["template-linear", "det-r"], weights={"template-linear": "random"}, device="cpu"
    )
    out = result.to_json()
    assert out["classifiers"]["template-linear"]["weights"] == "random"
    assert out["classifiers"]["det-r"]["weights"] == "deterministic"
    table = result.table()
    assert "random weights" in str(table.caption)
    assert "template-linear*" in list(table.columns[0].cells)


def _sin_tree(root: Path) -> tuple[Path, Path]:
    """Two classes: 94 hummingbird (two feature folders) and 1 goldfish, plus their val folders."""
    sin, val = root / "sin", root / "val"
    # det-r: hummingbird images u = 94, 95, 96 (folder a) and 200 (folder b); goldfish u = 1, 7.
    for i, u in enumerate((94, 95, 96)):
        write_solid(sin / "class_spurious_94_feat_1" / f"{i}.png", (u, 0, 0))
    write_solid(sin / "class_spurious_94_feat_2" / "0.png", (200, 0, 0))
    for i, u in enumerate((1, 7)):
        write_solid(sin / "class_spurious_1_feat_0" / f"{i}.png", (u, 0, 0))
    for i, u in enumerate((94, 95)):
        write_solid(val / "n01833805" / f"{i}.png", (u, 0, 0))
    for i, u in enumerate((1, 1, 9)):
        write_solid(val / "n01443537" / f"{i}.png", (u, 0, 0))
    write_solid(val / "n99999999" / "unrelated.png", (5, 0, 0))  # other classes: not read
    return sin, val


def test_spurious_imagenet_layout(tmp_path):
    sin, val = _sin_tree(tmp_path)
    result = score_spurious_imagenet(sin, val, ["det-r"], device="cpu", num_workers=0)
    out = result.to_json()
    assert out["n_images"] == 6 and out["n_real"] == 5
    assert [c["index"] for c in out["classes"]] == [1, 94]
    per_class = out["classifiers"]["det-r"]["per_class"]
    # 94: R d = 0, 1 vs S d = 0, 1, 2, 106 -> (0.5 + 3) + (0 + 0.5 + 2) = 6 of 8.
    assert per_class["94"]["roc_auc"] == pytest.approx(6 / 8)
    # 1: R u = 1, 1, 9 (d 0, 0, 8) vs S u = 1, 7 (d 0, 6) -> 2 x (0.5 + 1) + (0 + 0) = 3 of 6.
    assert per_class["1"]["roc_auc"] == pytest.approx(3 / 6)
    y94 = [1, 1, 0, 0, 0, 0]
    p94 = [expected_prob(u, 94) for u in (94, 95, 94, 95, 96, 200)]
    assert per_class["94"]["average_precision"] == pytest.approx(average_precision_score(y94, p94))
    assert per_class["94"]["spurious_rate"] == pytest.approx(1 / 4)
    assert out["classifiers"]["det-r"]["mean_roc_auc"] == pytest.approx((6 / 8 + 3 / 6) / 2)
    means = out["classifiers"]["det-r"]
    assert means["mean_average_precision"] == pytest.approx(
        (per_class["94"]["average_precision"] + per_class["1"]["average_precision"]) / 2
    )
    assert {r["image"] for r in result.rows} >= {"class_spurious_94_feat_2/0.png"}


def test_spurious_imagenet_layout_errors(tmp_path):
    sin, val = _sin_tree(tmp_path)
    shutil.rmtree(val / "n01443537")
    with pytest.raises(SpurcliError, match=r"no folder n01443537 .*goldfish"):
        score_spurious_imagenet(sin, val, ["det-r"])
    (sin / "badly_named").mkdir()
    with pytest.raises(SpurcliError, match=r"'badly_named'.*third '_'-separated token"):
        score_spurious_imagenet(sin, val, ["det-r"])


# --- the command line: exit codes and output, through spurcli.cli.main ----------------------


def _cli(monkeypatch, capsys, *args):
    from spurcli import cli

    monkeypatch.setattr(sys, "argv", ["spurcli", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_score(folders, tmp_path, monkeypatch, capsys):
    s, r = folders
    js, cs = tmp_path / "o.json", tmp_path / "o.csv"
    base = ["score", s, "-t", "hummingbird", "-c", "det-r,det-g,det-b", "--device", "cpu"]
    code, out, err = _cli(monkeypatch, capsys, *base, "--real", r, "--json", js, "--csv", cs)
    assert code in (0, None), err
    for metric in ("spurious_rate", "median_target_prob", "average_precision", "real_accuracy"):
        assert metric in out  # the table names the metrics exactly, also when piped
    lo, hi = wilson_interval(1, 5)
    assert f"consensus over 3 classifiers: all 0.200 [{lo:.3f}, {hi:.3f}], any 0.600" in out
    assert f"[{lo:.3f}, {hi:.3f}]" in out  # det-r's spurious rate's interval, under it
    assert "[lo, hi]: 95% intervals" in out  # shown as text, not taken for rich markup
    data = json.loads(js.read_text())
    assert data["classifiers"]["det-r"]["roc_auc"] == pytest.approx(12.5 / 15)
    assert data["uncertainty"]["bootstrap"]["resamples"] == 1000  # the default
    assert len(cs.read_text().splitlines()) == 1 + 15
    code, out, _ = _cli(
        monkeypatch, capsys, *base, "--json", "-", "--bootstrap", "50", "--seed", "3"
    )
    assert code in (0, None)
    data = json.loads(out)
    assert data["n_real"] is None
    assert data["uncertainty"]["bootstrap"] == {
        "method": "percentile; real and scored images resampled independently",
        "resamples": 50,
        "seed": 3,
    }


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["-c", "det-r,nope", "-t", "94"], 2, "unknown classifier 'nope'"),
        (["-c", "det-r", "-t", "hummingburd"], 2, "did you mean 94 hummingbird"),
        (["-c", "det-r"], 2, "--target CLASS is required"),
        (["-t", "94"], 2, "--classifiers is required"),
        (["-c", "det-r", "-t", "94", "--weights", "det-r"], 2, "NAME=PATH"),
        (["-c", "det-r", "-t", "94", "--layout", "x"], 2, "unknown --layout"),
        (["-c", "det-r", "-t", "94", "--bootstrap", "-1"], 2, "--bootstrap must be 0"),
        (["-c", "bad-shape", "-t", "94"], 1, "plugin 'score-test'"),
        (["-c", "det-r", "-t", "94", "--strict"], 1, "broken.png"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code(folders, monkeypatch, capsys, args, code, message):
    s, _ = folders
    (s / "broken.png").write_bytes(b"junk")
    got, _, err = _cli(monkeypatch, capsys, "score", s, "--device", "cpu", *args)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_cli_spurious_imagenet_layout(tmp_path, monkeypatch, capsys):
    sin, val = _sin_tree(tmp_path)
    args = ["score", sin, "--layout", "spurious-imagenet", "-c", "det-r", "--device", "cpu"]
    code, out, err = _cli(monkeypatch, capsys, *args, "--real", val, "--json", "-")
    assert code in (0, None), err
    assert json.loads(out)["classifiers"]["det-r"]["mean_roc_auc"] == pytest.approx(0.625)
    code, out, err = _cli(monkeypatch, capsys, *args, "--real", val)
    assert "mean_roc_auc" in out and "94 hummingbird" in out
    code, _, err = _cli(monkeypatch, capsys, *args, "--real", val, "-t", "94")
    assert code == 2 and "--target is not used" in err
    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "needs --real" in err


def test_cli_empty_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(monkeypatch, capsys, "score", tmp_path / "empty", "-t", "94", "-c", "det-r")
    assert code == 1 and "no images in" in err


# --- data parallel: 2 processes (torchrun, gloo on CPU) give the numbers of 1 process ---------


def test_two_processes_equal_one(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "imgs"
    for i in range(11):  # odd count: the shards differ in size
        rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
        write_solid(images / f"{i:02d}.png", rgb, size=(int(rng.integers(20, 60)), 33))
    (images / "zz_broken.png").write_bytes(b"junk")
    real = tmp_path / "real"
    for i in range(4):
        write_solid(real / f"{i}.png", tuple(int(v) for v in rng.integers(0, 256, 3)))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SPURCLI_LOAD_PLUGINS": "spurcli-plugin-template",  # a real installed plugin
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "score",
        str(images),
        "-t",
        "94",
        "-c",
        "template-linear",
        "--weights",
        "template-linear=random",
        "--real",
        str(real),
        "--device",
        "cpu",
        "-b",
        "3",
    ]

    def run(launcher: list[str], tag: str) -> tuple[dict, str, str]:
        js, cs = tmp_path / f"{tag}.json", tmp_path / f"{tag}.csv"
        cmd = [*launcher, "-m", "spurcli", *args, "--json", str(js), "--csv", str(cs)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(js.read_text()), cs.read_text(), proc.stderr

    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone"]
    two, two_csv, log = run([*torchrun, "--nproc_per_node", "2"], "two")
    assert "process 0 of 2 scores 8 of 16 files" in " ".join(log.split())  # really sharded
    one, one_csv, _ = run([sys.executable], "one")
    assert two["n_images"] == one["n_images"] == 11
    assert two == one
    assert two_csv == one_csv


def test_per_image_numbers_read_back_from_their_rows():
    from spurcli.evaluate.imagepass import PerImage

    per_image = PerImage(
        ["a", "b"],
        ["x.png", "y/z.png", "w.png"],
        np.full(3, 94),
        np.array([[94, 1, 94], [2, 94, 3]]),
        np.array([[0.5, 0.1, 0.7], [0.2, 0.6, 0.05]]),
        np.array([[1, 4, 1], [3, 1, 9]]),
    )
    back = PerImage.from_rows(list(per_image.iter_rows()), 94)
    assert back.classifiers == per_image.classifiers and back.images == per_image.images
    for key in ("target", "top1", "target_prob", "target_rank"):
        assert np.array_equal(getattr(back, key), getattr(per_image, key))
    with pytest.raises(SpurcliError, match="every classifier for every image"):
        PerImage.from_rows(list(per_image.iter_rows())[:-1], 94)
