"""`spurcli run`: config parsing, and a whole tiny experiment that is interrupted and resumed."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from spurcli import cli
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate.clustered import cluster_rate
from spurcli.experiment import run as experiment
from spurcli.experiment.plan import LABELS, load_experiment
from spurcli.experiment.run import run_experiment
from spurcli.experiment.summary import pooled_similarity, runs_ahead, summary_tables
from spurcli.seeds import derive_seed


def assert_same_numbers(got: object, want: object, where: str = "") -> None:
    """``got == want`` for nested JSON, floats compared to 1e-6 relative (1e-9 absolute)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same_numbers(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_numbers(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), where
    else:
        assert got == want, where


def test_assert_same_numbers_tells_rounding_from_a_change():
    assert_same_numbers({"a": [0.1 + 0.2, 1, "x"]}, {"a": [0.3, 1, "x"]})
    for changed in ({"a": [0.31, 1, "x"]}, {"a": [0.3, 2, "x"]}, {"a": [0.3, 1]}, {"b": 0.3}):
        with pytest.raises(AssertionError):
            assert_same_numbers(changed, {"a": [0.3, 1, "x"]})


CONFIG = """
out = "out"
replicates = 1
model = "tiny"
target = "hummingbird"
class_noun = "flower"
instance_dir = "refs"
seed = 3
train_references = 2

[finetune]
resolution = 32
steps = 2
lr = 1e-3
num_class_images = 2
class_inference_steps = 2
class_batch_size = 2
extractor = "template-linear"
extractor_weights = "random"
sfsl_weight = 0.5
checkpoint_every = 1
validate_every = 0

[sample]
n = 2
steps = 2
batch_size = 4
height = 32
width = 32

[compare]
classifiers = ["template-linear", "timm:test_resnet"]
weights = ["template-linear=random", "timm:test_resnet=random"]
extractors = ["template-linear"]
extractor_weights = ["template-linear=random"]
"""

CURATE = """
[curate]
classifiers = ["timm:test_resnet"]
evaluate_with = ["template-linear"]
weights = ["template-linear=random", "timm:test_resnet=random"]
detector_weights = ["owlv2=random"]
extractor = "template-linear"
extractor_weights = "random"
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_config(folder: Path, text: str = CONFIG) -> Path:
    from PIL import Image

    refs = folder / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate([(200, 30, 40), (30, 160, 60), (240, 200, 10), (20, 40, 220)]):
        Image.new("RGB", (40 + 8 * i, 48), colour).save(refs / f"ref{i}.png")
    path = folder / "exp.toml"
    path.write_text(text)
    return path


def test_config_shares_top_level_keys_and_fills_defaults(tmp_path):
    exp = load_experiment(write_config(tmp_path))
    assert exp.out == tmp_path / "out"  # relative to the config file
    assert exp.finetune.output_dir == tmp_path / "out" / "finetune"  # default place
    # The arms train on the training share of the references, copied by the run.
    assert exp.finetune.instance_dir == tmp_path / "out" / "references" / "train"
    assert exp.finetune.seed == 3
    assert exp.sample.seed == 3 and exp.sample.model == "tiny"
    assert exp.sample.prompts == ["a photo of [V] flower"]  # the instance prompt, [V] kept
    assert exp.compare.target == "hummingbird"
    arms = exp.arms()
    assert list(arms) == ["sfsl", "dreambooth"]
    assert arms["dreambooth"].sfsl_weight == 0 and arms["sfsl"].sfsl_weight == 0.5
    assert arms["dreambooth"].output_dir == tmp_path / "out" / "finetune-dreambooth"
    assert arms["dreambooth"].class_dir == arms["sfsl"].class_dir  # shared prior images
    assert dataclasses.replace(arms["dreambooth"], sfsl_weight=0.5, output_dir=None) == (
        dataclasses.replace(arms["sfsl"], output_dir=None)
    )  # otherwise identical settings and seeds
    sets = exp.sample_sets()
    assert list(sets) == [
        "sfsl",
        "sfsl-recontext",
        "dreambooth",
        "dreambooth-recontext",
        "baseline",
        "baseline-recontext",
    ]
    assert sets["baseline"] == (None, ["a photo of flower"])
    assert sets["dreambooth"] == ("dreambooth", ["a photo of [V] flower"])
    assert sets["sfsl-recontext"][1][0] == "a photo of [V] flower on the beach"
    assert exp.comparisons() == [
        ("sfsl", "references"),
        ("dreambooth", "references"),
        ("sfsl", "dreambooth"),
        ("sfsl", "references-train"),
        ("dreambooth", "references-train"),
        ("references", "references-train"),
        ("sfsl", "baseline"),
        ("dreambooth", "baseline"),
        ("sfsl-recontext", "baseline-recontext"),
        ("dreambooth-recontext", "baseline-recontext"),
    ]
    no_baseline = load_experiment(
        write_config(tmp_path, "baseline = false\ndreambooth_arm = false\n" + CONFIG)
    )
    assert list(no_baseline.sample_sets()) == ["sfsl", "sfsl-recontext"]


def test_references_split_by_seed_into_trained_and_held_out(tmp_path):
    exp = load_experiment(write_config(tmp_path))
    split = exp.split
    assert len(split.train) == 2 and len(split.held_out) == 2
    assert sorted(split.train + split.held_out) == sorted((tmp_path / "refs").glob("*.png"))
    again = load_experiment(write_config(tmp_path)).split
    assert again.train == split.train  # deterministic from the seed
    other = load_experiment(write_config(tmp_path), sets=["seed=11"]).split
    assert len(other.train) == 2
    everything = load_experiment(write_config(tmp_path), sets=["train_references=9"]).split
    assert everything.held_out == [] and len(everything.train) == 4
    assert load_experiment(
        write_config(tmp_path), sets=["train_references=9"]
    ).reference_sets() == ["references"]


def test_circular_victims_are_the_sfsl_extractor_with_the_same_weights(tmp_path):
    exp = load_experiment(write_config(tmp_path))
    assert exp.circular() == ["template-linear"]  # extractor template-linear, random both
    other = load_experiment(
        write_config(tmp_path), sets=['compare.weights=["template-linear=other.pt"]']
    )
    assert other.circular() == []
    no_sfsl = load_experiment(write_config(tmp_path), sets=["finetune.sfsl_weight=0"])
    assert no_sfsl.circular() == [] and list(no_sfsl.arms()) == ["sfsl"]


def test_similarity_is_also_measured_in_a_space_sfsl_did_not_optimise(tmp_path):
    exp = load_experiment(write_config(tmp_path))
    # The only [compare] extractor is the SFSL extractor (circular): the first victim that is
    # not circular and is an extractor too joins, with the victim's weights.
    assert exp.circular_spaces() == ["template-linear"]
    assert exp.feature_spaces() == {"template-linear": "random", "timm:test_resnet": "random"}
    given = load_experiment(
        write_config(tmp_path),
        sets=['compare.extractors=["template-linear", "clip"]', "compare.extractor_weights=[]"],
    )
    assert given.circular_spaces() == []  # the default weights are not the SFSL extractor's
    assert given.feature_spaces() == {"template-linear": None, "clip": None}
    no_sfsl = load_experiment(write_config(tmp_path), sets=["finetune.sfsl_weight=0"])
    assert no_sfsl.circular_spaces() == [] and list(no_sfsl.feature_spaces()) == ["template-linear"]


def test_set_overrides_top_level_and_tables(tmp_path):
    path = write_config(tmp_path)
    exp = load_experiment(path, sets=["seed=7", "finetune.steps=9", "sample.n=5", "sample.seed=1"])
    assert (exp.config.seed, exp.finetune.seed, exp.sample.seed) == (7, 7, 1)
    assert (exp.finetune.steps, exp.sample.n) == (9, 5)
    with pytest.raises(UsageError, match="no table"):
        load_experiment(path, sets=["scoring.n=1"])
    with pytest.raises(UsageError, match="did you mean steps"):
        load_experiment(path, sets=["finetune.step=1"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CONFIG + "\n[scoring]\nx = 1\n", "unknown table [scoring]"),
        (CONFIG.replace('out = "out"', ""), "`out` is required"),
        (CONFIG.replace("seed = 3", "sed = 3"), "did you mean seed"),
        (CONFIG.replace("seed = 3", "seed = 3\nmax_presence = 2.0"), "max_presence must be in"),
        (
            CONFIG.replace('classifiers = ["template-linear", "timm:test_resnet"]', ""),
            "classifiers is required",
        ),
    ],
)
def test_bad_configs(tmp_path, text, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        load_experiment(write_config(tmp_path, text))


def test_an_unknown_detector_fails_before_any_work(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path, CONFIG.replace("seed = 3", 'seed = 3\ndetector = "owl"'))
    monkeypatch.setattr(sys, "argv", ["spurcli", "run", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'owl'" in err and "owlv2" in err  # did you mean
    assert not (tmp_path / "out").exists()


def test_bad_names_fail_before_any_work(tmp_path, monkeypatch, capsys):
    path = write_config(
        tmp_path, CONFIG.replace('extractors = ["template-linear"]', 'extractors = ["nope"]')
    )
    monkeypatch.setattr(sys, "argv", ["spurcli", "run", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unknown feature extractor 'nope'" in err
    assert not (tmp_path / "out").exists()


def snapshot(out: Path) -> dict[str, float]:
    """Every result file's mtime (not the folders' lock files: each run records its holder)."""
    from spurcli.fileio import FOLDER_FILE

    files = [p for p in out.rglob("*") if p.is_file() and p.name != FOLDER_FILE]
    return {p.relative_to(out).as_posix(): p.stat().st_mtime for p in files}


@pytest.mark.slow
def test_run_end_to_end_interrupted_and_resumed(tmp_path, monkeypatch):
    pytest.importorskip("spurcli_owlv2")
    path = write_config(tmp_path, CONFIG + CURATE)
    out = tmp_path / "out"

    # A crash after the features stage: everything before it is kept...
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "compare_stage", crash)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(path)
    monkeypatch.undo()
    for arm in ("finetune", "finetune-dreambooth"):
        assert (out / arm / "pipeline" / "model_index.json").is_file()
    assert not (out / "report.html").exists()
    sfsl_run = json.loads((out / "finetune" / "spurcli-run.json").read_text())
    db_run = json.loads((out / "finetune-dreambooth" / "spurcli-run.json").read_text())
    assert sfsl_run["config"]["sfsl_weight"] == 0.5 and db_run["config"]["sfsl_weight"] == 0
    assert db_run["extractor"] is None and db_run["final_losses"]["loss_sfsl"] == 0
    split = json.loads((out / "references" / "split.json").read_text())
    trained = sorted(r["file"] for r in sfsl_run["references"])
    assert [Path(f).name for f in trained] == [r["file"] for r in split["train"]]
    assert len(split["held_out"]) == 2 and not {r["file"] for r in split["held_out"]} & {
        r["file"] for r in split["train"]
    }

    # ...and the next run continues from there.
    result = run_experiment(path)
    ran = {k for k, v in result.stages.items() if v == "ran"}
    assert ran == {f"compare:{a}-vs-{b}" for a, b in load_experiment(path).comparisons()} | {
        "curate",
        "report",
    }
    sheet = json.loads((out / "curated" / "datasheet.json").read_text())
    assert sheet["counts"]["images"] == 2 and "template-linear" in sheet["evaluation"]
    assert sheet["references"][0]["file"] in {r["file"] for r in split["train"]}
    assert result.reasons["compare:sfsl-vs-baseline"] == "no sfsl-vs-baseline.json yet"
    assert result.report == out / "report.html" and result.report.is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    clf = summary["classifiers"]["template-linear"]
    assert (
        clf["circular"] is True and summary["classifiers"]["timm:test_resnet"]["circular"] is False
    )
    assert summary["consensus"]["classifiers"] == ["timm:test_resnet"]
    assert "template-linear" in summary["excluded_from_consensus"]
    assert set(clf["spurious_rate"]) == {*LABELS}
    rate = clf["spurious_rate"]
    for pair, test in [
        ("sfsl-vs-baseline", "McNemar exact"),
        ("sfsl-vs-dreambooth", "McNemar exact"),
        ("dreambooth-vs-baseline", "McNemar exact"),
        ("sfsl-vs-references", "Fisher exact"),
    ]:
        diff = clf["differences"][pair]
        a, b = pair.split("-vs-")
        assert diff["delta"] == pytest.approx(rate[a] - rate[b]) and diff["test"] == test
        assert diff["delta_ci"][0] <= diff["delta"] <= diff["delta_ci"][1]
    lo, hi = clf["spurious_rate_ci"]["sfsl"]
    assert lo <= rate["sfsl"] <= hi
    assert summary["n_images"] == {
        "sfsl": 2,
        "sfsl-recontext": 8,
        "dreambooth": 2,
        "dreambooth-recontext": 8,
        "baseline": 2,
        "baseline-recontext": 8,
        "references": 2,
        "references-train": 2,
    }
    assert summary["references"]["judged_against"] == "held-out"
    manifest = (out / "samples" / "baseline" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(manifest[0])["prompt"] == "a photo of flower"  # no identifier
    tuned = json.loads((out / "samples" / "sfsl" / "manifest.jsonl").read_text().splitlines()[0])
    assert tuned["prompt"] == "a photo of sks flower"
    assert tuned["seed"] == json.loads(manifest[0])["seed"]  # paired noise
    saved = json.loads((out / "compare" / "sfsl-vs-baseline.json").read_text())
    assert saved["differences"]["pairing"]["paired"] is True
    assert saved["differences"]["classifiers"]["template-linear"]["spurious_rate"]["test"] == (
        "McNemar exact"
    )
    # The circular victim is left out of the consensus everywhere, and the output says so.
    assert saved["consensus_of"]["classifiers"] == ["timm:test_resnet"]
    assert saved["consensus_of"]["left_out"]["template-linear"].startswith("circular")
    assert saved["differences"]["consensus"]["all"]["delta"] == pytest.approx(
        summary["consensus"]["differences"]["sfsl-vs-baseline"]["delta"]
    )
    assert saved["a"]["consensus"]["all"] == pytest.approx(summary["consensus"]["all"]["sfsl"])
    to_refs = json.loads((out / "compare" / "sfsl-vs-references.json").read_text())
    assert to_refs["differences"]["pairing"]["paired"] is False
    # the exact weights: base model, fine-tuned pipeline (content hash), every model's identity
    models = summary["models"]
    arm = models["arms"]["sfsl"]
    assert models["base"]["source"] == "tiny" and arm["sfsl_extractor"] == {"source": "random"}
    assert arm["model_id"]["source"] == "run" and arm["model_id"]["base"] == models["base"]
    assert "unet/diffusion_pytorch_model.safetensors" in arm["model_id"]["files"]
    dreambooth = models["arms"]["dreambooth"]
    assert dreambooth["sfsl_extractor"] is None  # sfsl_weight 0: no extractor
    assert dreambooth["model_id"]["sha256"] != arm["model_id"]["sha256"]
    assert models["extractors"]["template-linear"]["weights_id"] == {"source": "random"}
    assert clf["weights_id"] == {"source": "random"}
    assert tuned["model_id"] == arm["model_id"]
    assert json.loads(manifest[0])["model_id"] == models["base"]
    report = result.report.read_text()
    comparisons = load_experiment(path).comparisons()
    assert report.count("<h2") == 1 + len(comparisons) + 1  # summary, comparisons, curated set
    assert "memorisation: cosine to the nearest training reference" in report
    assert "Curated set:" in report
    assert "DreamBooth only" in report and "held-out references" in report
    assert "consensus of 1 victim (timm:test_resnet); template-linear left out: circular" in report
    # No detector: the rates may count images of the object itself, and the output says so.
    assert summary["headline"] == "spurious_rate" and summary["object_free"] is None
    assert summary["object_check"] == "no detector: rates may include images of the object itself"
    assert "no detector: rates may include images of the object itself" in report
    # Feature similarity: the SFSL extractor's space marked circular, with intervals, and a space
    # SFSL did not optimise (the non-circular victim's features) beside it.
    similar = summary["similarity"]
    assert similar["circular_spaces"] == ["template-linear"]
    assert similar["independent_spaces"] == ["timm:test_resnet"]
    to_held_out = similar["comparisons"]["sfsl-vs-references"]
    assert to_held_out["template-linear"]["circular"] is True
    assert to_held_out["timm:test_resnet"]["circular"] is False
    for figure in to_held_out.values():
        lo, hi = figure["mean_cosine_ci"]
        assert lo <= figure["mean_cosine"] <= hi
    assert any("template-linear is circular" in n for n in summary["notes"])
    assert any("timm:test_resnet has random weights" in n for n in summary["notes"])
    assert saved["extractors"]["template-linear"]["circular"] is True
    assert "circular: the SFSL extractor's space" in report

    # Everything up to date: nothing runs, nothing is rewritten.
    before = snapshot(out)
    again = run_experiment(path)
    assert set(again.stages.values()) == {"skipped"}
    assert snapshot(out) == before

    # Removing outputs redoes exactly what depends on them.
    (out / "scores" / "baseline.json").unlink()
    first = out / "samples" / "sfsl" / tuned["file"]
    png = first.read_bytes()
    first.unlink()
    third = run_experiment(path)
    ran = {k for k, v in third.stages.items() if v == "ran"}
    assert "finetune" not in ran and "sample:baseline" not in ran
    assert {"sample:sfsl", "score:sfsl", "score:baseline", "report"} <= ran
    assert "score:references" not in ran and "score:sfsl-recontext" not in ran
    assert first.read_bytes() == png  # the same image again
    # The re-made image and the set re-scored around it may come out of another batch size:
    # the same numbers up to floating-point summation order, not bit for bit.
    assert_same_numbers(json.loads((out / "summary.json").read_text()), summary)

    # Changed settings redo their stage even though no file changed (a settings stamp).
    path.write_text(CONFIG.replace("[compare]", "[compare]\nreport_images = 1"))
    fourth = run_experiment(path)
    assert {k for k, v in fourth.stages.items() if v == "ran"} == {"report"}
    assert "1 of 2 shown" in result.report.read_text()

    # The config's notes head the report as text, and changing them redoes only the report.
    noted = run_experiment(path, sets=["notes=a <b>toy</b> model: no real finding"])
    assert {k for k, v in noted.stages.items() if v == "ran"} == {"report"}
    page = noted.report.read_text()
    assert "a &lt;b&gt;toy&lt;/b&gt; model: no real finding" in page and "<b>toy</b>" not in page
    assert page.index("no real finding") < page.index("Summary")

    # Another pixel protocol for the classifiers rescores the sets, and leaves the arms alone.
    protocol = run_experiment(path, sets=["compare.preprocess=spurious-imagenet"])
    assert protocol.reasons["score:baseline"] == "settings changed: preprocess"
    assert (
        protocol.stages["finetune"] == "skipped" and protocol.stages["sample:baseline"] == "skipped"
    )
    scored = json.loads((out / "scores" / "baseline.json").read_text())
    assert scored["preprocess"] == "spurious-imagenet"

    # A changed sampler setting makes the sets again; a changed training setting is refused
    # (a finished arm may have cost GPU hours) until --retrain says to discard it.
    fifth = run_experiment(path, sets=["sample.guidance=3.0"])
    assert fifth.reasons["sample:baseline"] == "settings changed: guidance"
    with pytest.raises(SpurcliError, match=r"other settings \(lr\).*--retrain"):
        run_experiment(path, sets=["finetune.lr=2e-3", "sample.guidance=3.0"])
    assert (out / "finetune" / "pipeline" / "model_index.json").is_file()


@pytest.mark.slow
def test_with_a_detector_the_headline_is_the_rate_among_object_free_images(tmp_path, fake_plugin):
    """The fake detector's presence score is an image's mean green (tests/_fake_plugin.py): the
    object-free images are those at most 0.5 green, and the rates are taken over them."""
    from spurcli.evaluate.metrics import wilson_interval
    from spurcli.experiment.results import read_rows

    text = CONFIG.replace("train_references = 2\n", 'train_references = 2\ndetector = "fake"\n')
    path = write_config(tmp_path, text)
    out = tmp_path / "out"
    result = run_experiment(path)
    exp = load_experiment(path)
    sets = exp.all_sets()
    assert {f"detect:{n}" for n in sets} <= {k for k, v in result.stages.items() if v == "ran"}
    summary = json.loads((out / "summary.json").read_text())
    free = summary["object_free"]
    assert summary["headline"] == "object_free_rate" and summary["object_check"] is None
    assert (free["detector"], free["max_presence"]) == ("fake", 0.5)
    # The references are flat colours: presence is their green channel (0.12 red, 0.63 green,
    # 0.78 yellow, 0.16 blue), measured by the stage on every set.
    green = {"ref0": 30, "ref1": 160, "ref2": 200, "ref3": 40}
    for name in ("references", "references-train"):
        presence = json.loads((out / "presence" / f"{name}.json").read_text())["presence"]
        for image, value in presence.items():
            assert value == pytest.approx(green[Path(image).stem] / 255, abs=0.01)
    for name in sets:
        presence = json.loads((out / "presence" / f"{name}.json").read_text())["presence"]
        shows = {image: value > 0.5 for image, value in presence.items()}
        n_present = sum(shows.values())
        assert free["presence_rate"][name] == n_present / len(shows)
        assert free["presence_rate_ci"][name] == pytest.approx(
            wilson_interval(n_present, len(shows))
        )
        assert free["n_object_free"][name] == len(shows) - n_present
        for clf in exp.compare.classifiers:
            rows = [r for r in read_rows(out / "scores" / f"{name}.csv") if r["classifier"] == clf]
            hits = [r["top1_index"] == 94 for r in rows if not shows[r["image"]]]
            got = free["classifiers"][clf]
            if not hits:
                assert got["object_free_rate"][name] is None
                continue
            assert got["object_free_rate"][name] == pytest.approx(sum(hits) / len(hits))
            assert got["object_free_rate_ci"][name] == pytest.approx(
                wilson_interval(sum(hits), len(hits))
            )
    # beside the raw rate, which counts every image
    assert set(summary["classifiers"]["timm:test_resnet"]["spurious_rate"]) == set(sets)
    assert "no detector" not in " ".join(summary["notes"])
    report = (out / "report.html").read_text()
    assert "object-free rates (the headline)" in report and "object present (fake)" in report
    again = run_experiment(path)
    assert {again.stages[f"detect:{n}"] for n in sets} == {"skipped"}


def test_runs_ahead_counts_each_side_and_leaves_ties_out():
    assert runs_ahead([0.25, 0.1, -0.05]) == "2+ 1- of 3"
    assert runs_ahead([0.0, 0.0]) == "0+ 0- of 2"
    assert runs_ahead([0.5, None]) == "1+ 0- of 1"  # a run without images of one set
    assert runs_ahead([]) == "-"


def test_pooled_similarity_means_the_runs_and_skips_missing_figures():
    def run(mean, nn, largest, alike):
        figures = {"mean_cosine": mean, "mean_cosine_ci": [0.0, 1.0], "nn_cosine_mean": nn}
        figures |= {"nn_cosine_mean_ci": [0.0, 1.0], "nn_cosine_max": largest}
        return {"a-vs-b": {"x": {**figures, "within_cosine_a": alike, "circular": False}}}

    runs = [run(0.2, 0.5, 0.7, 0.9), run(0.4, 0.6, 0.8, None)]
    pooled = pooled_similarity(runs, [{}, {}], 200, 0)["a-vs-b"]["x"]
    assert pooled["mean_cosine"] == pytest.approx(0.3)
    assert pooled["nn_cosine_mean"] == pytest.approx(0.55)  # no per-image cosines: the runs'
    assert pooled["nn_cosine_mean_ci"] is None
    assert pooled["nn_cosine_max"] == 0.8  # the largest, not a mean
    assert pooled["within_cosine_a"] == 0.9  # a run made before it was measured: left out
    assert pooled["per_run"]["within_cosine_a"] == [0.9, None]
    assert pooled["mean_cosine_ci"] is None and pooled["circular"] is False
    # with each run's per-image cosines: their pooled mean and the cluster bootstrap interval
    nearest = [{"a-vs-b": {"x": np.array([0.4, 0.6])}}, {"a-vs-b": {"x": np.array([0.5, 0.9])}}]
    pooled = pooled_similarity(runs, nearest, 200, 0)["a-vs-b"]["x"]
    want = cluster_rate([n["a-vs-b"]["x"] for n in nearest], 200, derive_seed(0, "a-vs-b", "x"))
    assert pooled["nn_cosine_mean"] == pytest.approx(0.6)
    assert pooled["nn_cosine_mean_ci"] == want["ci"]
    assert 0.4 <= want["ci"][0] < 0.6 < want["ci"][1] <= 0.9


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The configs whose references are committed: their model and how many references they hold.
WORLDS = {
    "quickstart.toml": ("flag-mini", 10),
    "flags.toml": ("flag-mini", 10),
    "flags128.toml": ("flag-mini-128", 10),
    "bricks.toml": ("mini", 8),
}


@pytest.mark.parametrize(
    "config",
    sorted(EXAMPLES.glob("*.toml"))
    + sorted(EXAMPLES.glob("*_world/*.toml"))
    + sorted(EXAMPLES.glob("classes/*.toml")),
    ids=str,
)
def test_example_configs_load(config):
    exp = load_experiment(config)
    assert exp.compare.classifiers and exp.sample.prompts
    assert all("[V]" in p for p in exp.sample.prompts)
    if config.name in WORLDS:
        model, references = WORLDS[config.name]
        assert exp.config.model == model
        assert len(list(exp.config.instance_dir.glob("*.png"))) == references
    else:  # the folder the download script makes
        assert exp.config.instance_dir.parts[-2:] == ("by_class", str(exp.config.target))


def test_download_script_unpacks_and_links_by_class(tmp_path):
    """The download script against a local zip in the dataset's layout (file:// URL)."""
    import subprocess
    import zipfile

    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/timestamp.txt", "1\n")
        for folder in (
            "class_spurious_94_hummingbird_3",
            "class_spurious_94_hummingbird_7",
            "class_spurious_565_freight_car_1",
        ):
            for i in range(2):
                zf.writestr(f"images/{folder}/{i}.jpg", b"jpeg bytes")
    dest = tmp_path / "sin"
    cmd = [sys.executable, str(EXAMPLES / "download_spurious_imagenet.py"), "--dest", str(dest)]
    proc = subprocess.run([*cmd, "--url", archive.as_uri()], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (dest / "by_class").iterdir()) == ["565", "94"]
    assert len(list((dest / "by_class" / "94").iterdir())) == 4
    assert (dest / "images" / "timestamp.txt").is_file() and not (
        dest / "images_100_classes.zip"
    ).exists()
    again = subprocess.run(cmd, capture_output=True, text=True)  # idempotent, no download
    assert again.returncode == 0 and "(0 new links)" in again.stdout


# ------------------------------------------------------------------------------------------------
# weights by content: new bytes under an old name are new weights, one file by two names is one


def test_run_keys_the_staleness_of_scores_on_the_weights_files_content(tmp_path, monkeypatch):
    from spurcli.experiment.freshness import staleness, write_stamp
    from spurcli.experiment.stages import score_stamp

    monkeypatch.setenv("SPURCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"old weights")
    path = write_config(tmp_path)
    sets = ['compare.weights=["template-linear=w.pt", "timm:test_resnet=random"]']
    exp = load_experiment(path, sets=sets)
    scores = tmp_path / "scores.json"
    scores.write_text("{}")
    write_stamp(scores, score_stamp(exp))
    assert staleness([scores], [], score_stamp(exp)) is None
    weights.write_bytes(b"new weights")  # the same name, other bytes
    assert staleness([scores], [], score_stamp(exp)) == "settings changed: weights_content"


def test_circular_victims_are_found_by_the_weights_content(tmp_path, monkeypatch):
    from spurcli.weights import file_identity

    monkeypatch.setenv("SPURCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.pt").write_bytes(b"the extractor's weights")
    (tmp_path / "b.pt").write_bytes(b"the extractor's weights")  # a copy under another name
    (tmp_path / "c.pt").write_bytes(b"other weights")
    path = write_config(tmp_path)

    def circular(extractor, classifier, recorded=None):
        exp = load_experiment(
            path,
            sets=[
                f"finetune.extractor_weights={extractor}",
                f'compare.weights=["template-linear={classifier}"]',
            ],
        )
        return exp.circular(recorded)

    assert circular("a.pt", "b.pt") == ["template-linear"]  # one file, two paths
    assert circular("a.pt", "c.pt") == []
    # the extractor on the plugin's default (which is the file b.pt), the victim given b.pt
    default = load_experiment(path, sets=['compare.weights=["template-linear=b.pt"]'])
    default.finetune.extractor_weights = None
    recorded = {"extractor": {"source": "hub", "repo": "x/y", **_sha(tmp_path / "a.pt")}}
    assert default.circular(recorded) == ["template-linear"]
    assert file_identity(tmp_path / "b.pt")["sha256"] == recorded["extractor"]["sha256"]


def _sha(path: Path) -> dict[str, str]:
    from spurcli.images import sha256_file

    return {"sha256": sha256_file(path)}


def test_weights_files_in_a_config_are_relative_to_it(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "w.pt").write_bytes(b"next to the config")
    (tmp_path / "w.pt").write_bytes(b"another file of that name, in the working directory")
    monkeypatch.chdir(tmp_path)
    text = CONFIG.replace('"template-linear=random", "timm', '"template-linear=w.pt", "timm', 1)
    exp = load_experiment(write_config(folder, text))
    assert exp.compare.weights[0] == f"template-linear={folder / 'w.pt'}"


def test_run_checks_every_weights_file_and_the_revision_before_the_first_stage(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    missing = CONFIG.replace('"template-linear=random", "timm', '"template-linear=no.pt", "timm', 1)
    with pytest.raises(UsageError, match=r"\[compare\] weights: the weights of 'template-linear'"):
        run_experiment(write_config(tmp_path, missing))
    with pytest.raises(UsageError, match="--revision pins a hub model"):
        run_experiment(write_config(tmp_path), sets=["revision=deadbeef"])
    assert not (tmp_path / "out").exists()  # nothing trained, nothing deleted


def test_a_config_behind_a_symlink_puts_out_where_the_os_resolves_it(tmp_path, monkeypatch):
    real = tmp_path / "deep" / "a" / "b"
    real.mkdir(parents=True)
    (tmp_path / "cfglink").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "cfglink", CONFIG.replace('out = "out"', 'out = "../exp"'))
    exp = load_experiment(path)
    # what finetune (and open()) make of cfglink/../exp: beside the link's target
    assert exp.out.resolve() == (tmp_path / "deep" / "a" / "exp").resolve()
    assert Path(exp.finetune.output_dir).resolve() == tmp_path / "deep" / "a" / "exp" / "finetune"


def test_a_copied_experiment_folder_continues_without_retraining(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # after the fine-tuning: the rest is not needed here

    monkeypatch.setattr(experiment, "sample_stage", stop)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(path)
    shutil.copytree(tmp_path / "out", tmp_path / "copy", symlinks=True)  # cp -a out copy
    card = (tmp_path / "copy" / "finetune" / "spurcli-run.json").read_bytes()
    copied = write_config(tmp_path, CONFIG.replace('out = "out"', 'out = "copy"'))
    with pytest.raises(KeyboardInterrupt):  # not "trained with other settings ... --retrain"
        run_experiment(copied)
    assert (tmp_path / "copy" / "finetune" / "spurcli-run.json").read_bytes() == card


def test_each_replicate_has_its_folders_seeds_and_split(tmp_path):
    """A replicate's arm sits where the config names it, inside the replicate's folder; the
    untuned model's sets and the prior images stay shared; seeds and splits differ."""
    config = CONFIG.replace("replicates = 1", "replicates = 2")
    inside = config.replace("[finetune]\n", '[finetune]\noutput_dir = "out/tuned"\n')
    runs = load_experiment(write_config(tmp_path, inside)).replicates()
    out = (tmp_path / "out").resolve()
    for k, run in enumerate(runs, 1):
        folder = out / f"replicate-{k}"
        assert run.finetune_dir.resolve() == folder / "tuned"
        assert Path(run.arms()["dreambooth"].output_dir).resolve() == folder / "tuned-dreambooth"
        assert run.set_dir("sfsl").resolve() == folder / "samples" / "sfsl"
        assert run.set_dir("baseline").resolve() == out / "samples" / "baseline"
        assert Path(run.finetune.class_dir).resolve() == out / "class-images"
    assert runs[0].finetune.seed != runs[1].finetune.seed
    assert runs[0].split_seed != runs[1].split_seed
    elsewhere = config.replace("[finetune]\n", '[finetune]\noutput_dir = "models/a"\n')
    runs = load_experiment(write_config(tmp_path, elsewhere)).replicates()
    assert runs[1].finetune_dir.resolve() == (tmp_path / "models" / "a" / "replicate-2").resolve()


@pytest.mark.slow
def test_replicated_run_pools_training_runs_with_one_primary_test(tmp_path, fake_plugin):
    """Two training runs per arm (own seed and reference split each): per-run results, pooled
    rates with clustered intervals, the pre-declared primary test, Holm on the rest; the
    object-free rates (the fake detector) pooled over both runs too."""
    from statsmodels.stats.multitest import multipletests

    from spurcli.experiment.results import read_rows

    config = CONFIG.replace(
        "replicates = 1", 'replicates = 2\nrecontext = false\ndetector = "fake"'
    )
    path = write_config(tmp_path, config)
    result = run_experiment(path)
    out = tmp_path / "out"
    for k in (1, 2):
        for arm in ("finetune", "finetune-dreambooth"):
            assert (out / f"replicate-{k}" / arm / "pipeline" / "model_index.json").is_file()
        assert result.stages[f"replicate-{k}/finetune"] == "ran"
    assert (out / "class-images").is_dir()  # the frozen model's prior images, made once
    assert not (out / "replicate-1" / "class-images").exists()
    # the untuned model's images are the same in every replicate: sampled once, scored per run
    assert len(list((out / "samples" / "baseline").rglob("*.png"))) == 2
    assert not (out / "replicate-2" / "samples" / "baseline").exists()
    assert result.stages["replicate-2/sample:baseline"] != "ran"
    assert (out / "replicate-2" / "scores" / "baseline.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary)[:2] == ["primary", "tests"]  # declared before any number
    assert summary["replication"]["replicates"] == 2
    runs = summary["per_replicate"]
    assert [r["replicate"] for r in runs] == [1, 2]
    assert runs[0]["finetune_seed"] != runs[1]["finetune_seed"]
    assert runs[0]["split_seed"] != runs[1]["split_seed"]
    consensus = summary["consensus"]
    assert consensus["classifiers"] == ["timm:test_resnet"]  # the circular victim left out
    per_run = consensus["all_per_run"]["sfsl"]
    assert per_run == [r["consensus"]["sfsl"] for r in runs]
    assert consensus["all"]["sfsl"] == pytest.approx(np.mean(per_run))  # equal runs: the mean
    lo, hi = consensus["all_ci"]["sfsl"]
    assert lo <= consensus["all"]["sfsl"] <= hi
    primary = summary["primary"]
    assert primary["comparison"] == "sfsl-vs-dreambooth" and primary["victims"] == [
        "timm:test_resnet"
    ]
    assert primary["test"] == "two-stage cluster bootstrap (paired)" and primary["runs"] == 2
    assert primary["delta"] == pytest.approx(
        consensus["all"]["sfsl"] - consensus["all"]["dreambooth"]
    )
    assert "p_holm" not in consensus["differences"]["sfsl-vs-dreambooth"]  # not corrected
    family = [
        (entry["differences"][d]["p_value"], entry["differences"][d]["p_holm"])
        for entry in [*summary["classifiers"].values()]
        for d in entry["differences"]
    ] + [
        (diff["p_value"], diff["p_holm"])
        for d, diff in consensus["differences"].items()
        if d != "sfsl-vs-dreambooth"
    ]
    assert summary["tests"]["secondary"] == len(family)
    expected = multipletests([p for p, _ in family], method="holm")[1]
    assert [h for _, h in family] == pytest.approx(list(expected))
    report = result.report.read_text()
    assert "primary: SFSL - DreamBooth" in report and "Holm-adjusted" in report
    # each difference says in how many of the runs it went which way
    differences = next(t for t in summary_tables(summary) if t["title"] == "differences")
    assert differences["columns"][-1] == "runs" and "cannot go below 0.5" in differences["caption"]
    assert differences["rows"][0][-1]["text"] == runs_ahead(primary["per_run"])
    # memorisation: every arm and its yardstick, the held-out references, against the training
    # references; per space the mean of the runs' means, their range and the largest cosine
    memorised = summary_tables(summary)[-1]
    assert memorised["title"] == "memorisation: cosine to the nearest training reference"
    assert [row[0] for row in memorised["rows"]] == [
        "SFSL (4)",
        "DreamBooth (4)",
        "held-out refs (4)",
    ]
    column = memorised["columns"].index("timm:test_resnet")
    figures = [r["similarity"]["dreambooth-vs-references-train"]["timm:test_resnet"] for r in runs]
    means = [f["nn_cosine_mean"] for f in figures]
    largest = max(f["nn_cosine_max"] for f in figures)
    alike = [f["within_cosine_a"] for f in figures]
    pooled = summary["similarity"]["comparisons"]["dreambooth-vs-references-train"]
    lo, hi = pooled["timm:test_resnet"]["nn_cosine_mean_ci"]  # runs, then images
    assert memorised["rows"][1][column]["text"] == (
        f"{np.mean(means):.3f} [{lo:.3f},{hi:.3f}] (runs {min(means):.3f}-{max(means):.3f}), "
        f"max {largest:.3f}, alike {np.mean(alike):.2f} (runs {min(alike):.2f}-{max(alike):.2f})"
    )
    assert "template-linear (circ.)" in memorised["columns"]
    # summary.json's similarity pooled over the runs, in one run's shape, each run's value kept
    assert pooled["timm:test_resnet"]["nn_cosine_mean"] == pytest.approx(np.mean(means))
    assert lo <= pooled["timm:test_resnet"]["nn_cosine_mean"] <= hi
    assert pooled["timm:test_resnet"]["nn_cosine_max"] == largest
    assert pooled["timm:test_resnet"]["per_run"]["within_cosine_a"] == alike
    assert pooled["timm:test_resnet"]["mean_cosine_ci"] is None
    assert pooled["template-linear"]["circular"] is True
    assert "pooled over the training runs" in summary["similarity"]["interval"]
    assert memorised["title"] in report
    assert "Weights: template-linear = random; timm:test_resnet = random." in report
    # object-free rates: each replicate's presence records, pooled like every other rate
    free = summary["object_free"]
    assert summary["headline"] == "object_free_rate"
    for name in ("sfsl", "baseline", "references"):
        hits, n_free = [], 0
        for k in (1, 2):
            run = out / f"replicate-{k}"
            presence = json.loads((run / "presence" / f"{name}.json").read_text())["presence"]
            rows = read_rows(run / "scores" / f"{name}.csv")
            free_images = {i for i, value in presence.items() if value <= 0.5}
            n_free += len(free_images)
            hits += [
                r["top1_index"] == 94
                for r in rows
                if r["classifier"] == "timm:test_resnet" and r["image"] in free_images
            ]
        assert free["n_object_free"][name] == n_free
        rate = free["classifiers"]["timm:test_resnet"]["object_free_rate"][name]
        assert rate == (pytest.approx(sum(hits) / len(hits)) if hits else None)
    assert "object-free rates (the headline)" in report
