"""`spurcli curate`: verdicts, datasheet counts and kept files follow in closed form from the fake
plugin (tests/_fake_plugin.py): classifier ``fake`` says 94 for red images, detector ``fake``'s
presence is the mean green channel, extractor ``fake`` is the 2x2 mean colour.

Images (uniform colours, so every number is a formula of the colour):

    red      (255, 0, 0)     fooled, presence 0          -> kept
    orange   (200, 150, 0)   fooled, presence 150/255    -> object-present
    blue     (0, 0, 255)     not fooled, presence 0      -> not-fooling
    green    (0, 255, 0)     not fooled, presence 1      -> object-present + not-fooling
    copy     (255, 40, 40)   fooled, cosine 1 to the ref -> near-copy
    broken   not an image                                -> unreadable
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spurcli import plugins
from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate.curate import CurateConfig, curate
from spurcli.evaluate.metrics import wilson_interval

COLOURS = {
    "red": (255, 0, 0),
    "orange": (200, 150, 0),
    "blue": (0, 0, 255),
    "green": (0, 255, 0),
    "copy": (255, 40, 40),
}
EXPECTED = {
    "broken.png": ["unreadable"],
    "blue.png": ["not-fooling"],
    "copy.png": ["near-copy"],
    "green.png": ["object-present", "not-fooling"],
    "orange.png": ["object-present"],
    "red.png": [],
}


def _image(path: Path, colour: tuple[int, int, int], size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    images, refs = tmp_path / "images", tmp_path / "refs"
    for name, colour in COLOURS.items():
        _image(images / f"{name}.png", colour)
    (images / "broken.png").write_bytes(b"not a png")
    _image(refs / "ref.png", COLOURS["copy"])
    return images, refs


def _config(**kw) -> CurateConfig:
    base = {
        "target": 94,
        "classifiers": ["fake"],
        "detectors": ["fake"],
        "references": None,
        "extractor": "fake",
        "max_similarity": 0.99,
        "batch_size": 4,
    }
    return CurateConfig(**{**base, **kw})


def test_verdicts_counts_and_files_follow_in_closed_form(fake_plugin, folders, tmp_path):
    images, refs = folders
    out = tmp_path / "dataset"
    result = curate(images, out, _config(references=refs, evaluate_with=["fake:1"]))
    assert {v.file: v.reasons for v in result.verdicts} == EXPECTED
    c = result.counts
    assert (c["images"], c["kept"], c["rejected"]) == (6, 1, 5)
    assert c["object-present"] == 2 and c["not-fooling"] == 2 and c["near-copy"] == 1
    assert c["unreadable"] == 1
    assert result.datasheet["removed_only_by"]["object-present"] == 1  # green has two reasons
    by_file = {v.file: v for v in result.verdicts}
    assert by_file["orange.png"].presence["fake"] == pytest.approx(150 / 255, abs=1e-6)
    assert by_file["copy.png"].similarity == pytest.approx(1.0, abs=1e-6)
    red = np.array([1.0, 0, 0] * 4)
    ref = np.array([1.0, 40 / 255, 40 / 255] * 4)
    cosine = red @ ref / np.linalg.norm(red) / np.linalg.norm(ref)
    assert by_file["red.png"].similarity == pytest.approx(cosine, abs=1e-5)
    assert by_file["red.png"].nearest == "ref.png"
    # The one kept image went to the Spurious ImageNet layout, with its metadata row.
    folder = out / "class_spurious_94_red-feeder-flower"
    assert sorted(p.name for p in folder.iterdir()) == ["red.png"]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["class_spurious_94_red-feeder-flower/red.png"]
    assert rows[0]["presence"] == {"fake": 0.0}
    assert set(rows[0]["target_prob"]) == {"fake", "fake:1"}
    assert len((out / "verdicts.jsonl").read_text().splitlines()) == 6
    # The detector was asked about the class by its names, with the Spurious ImageNet feature.
    query = fake_plugin.queries[0]
    assert query.index == 94 and query.names == ("hummingbird",)
    assert query.feature == "red feeder/flower"
    # Held-out fake:1 says class 1 for red: rate 0/1 on the kept set, with its Wilson interval.
    sheet = json.loads((out / "datasheet.json").read_text())
    held_out = sheet["evaluation"]["fake:1"]["kept"]
    assert (held_out["k"], held_out["n"], held_out["rate"]) == (0, 1, 0.0)
    assert held_out["ci95"] == pytest.approx(wilson_interval(0, 1))
    assert sheet["selection"]["fake"]["kept"]["rate"] == 1.0
    assert "biased by construction" in sheet["selection"]["fake"]["note"]
    md = (out / "datasheet.md").read_text()
    assert md.index("held-out classifiers") < md.index("Selection classifiers")
    assert "No image was checked" not in md
    assert "broken.png" in md  # unreadable files are named
    assert sorted(p.name for p in images.iterdir()) == sorted(EXPECTED)  # input untouched


def test_no_detector_says_so_first_and_min_fooled_counts_selection_votes(
    fake_plugin, folders, tmp_path
):
    images, _ = folders
    out = tmp_path / "d"
    result = curate(images, out, _config(detectors=["none"], classifiers=["fake", "fake:94"]))
    assert {v.file for v in result.kept} == {"red.png", "orange.png", "copy.png"}
    md = (out / "datasheet.md").read_text().splitlines()
    assert "No image was checked for the class object" in "\n".join(md[:3])
    assert "no --evaluate-with" in " ".join(md).lower() or "No `--evaluate-with`" in " ".join(md)
    # fake:1 never says 94: one vote of two is enough for the red ones, two votes for none
    config = _config(detectors=["none"], classifiers=["fake", "fake:1"])
    assert {v.file for v in curate(images, tmp_path / "e", config).kept} == {
        "red.png",
        "orange.png",
        "copy.png",
    }
    config.min_fooled, config.overwrite = 2, True
    again = curate(images, tmp_path / "e", config)
    assert again.kept == [] and again.counts["not-fooling"] == 5


def test_limit_and_link(fake_plugin, folders, tmp_path):
    images, _ = folders
    out = tmp_path / "d"
    result = curate(images, out, _config(detectors=["none"], limit=2, mode="link"))
    assert [v.file for v in result.kept] == ["copy.png", "orange.png"]
    assert [v.file for v in result.verdicts if v.reasons == ["over-limit"]] == ["red.png"]
    linked = next((out).glob("class_spurious_94_*/copy.png"))
    assert linked.is_symlink() and linked.resolve() == (images / "copy.png").resolve()


def test_nothing_kept_is_a_result_unless_strict(fake_plugin, folders, tmp_path, cli_main):
    images, _ = folders
    args = ["curate", str(images), "--target", "95", "-c", "fake", "-d", "fake"]  # never said
    code, _, err = cli_main(*args, "--out", str(tmp_path / "d"))
    assert code == 0, err
    sheet = json.loads((tmp_path / "d" / "datasheet.json").read_text())
    assert sheet["counts"]["kept"] == 0 and "every image was rejected" in sheet["why_empty"]
    assert "No image was kept" in (tmp_path / "d" / "datasheet.md").read_text()
    assert "no image was kept" in err
    code, _, err = cli_main(*args, "--out", str(tmp_path / "e"), "--strict")
    assert code == 1 and "broken.png" in err


def test_bad_input_is_one_line(fake_plugin, folders, tmp_path, cli_main):
    images, _ = folders
    base = ["curate", str(images), "--out", str(tmp_path / "d"), "-c", "fake"]
    code, _, err = cli_main(*base, "--target", "94", "-d", "fak")
    assert code == 2 and "unknown detector 'fak'" in err and "did you mean fake" in err
    code, _, err = cli_main(*base, "--target", "hummingbrd", "-d", "fake")
    assert code == 2 and "did you mean" in err
    code, _, err = cli_main(*base, "--target", "94", "-d", "fake", "--evaluate-with", "fake")
    assert code == 2 and "cannot also evaluate" in err
    (tmp_path / "d").mkdir()
    code, _, err = cli_main(*base, "--target", "94", "-d", "fake")
    assert code == 1 and "--overwrite" in err
    code, _, err = cli_main(*base, "--target", "94", "-d", "fake", "--overwrite", "--json", "-")
    assert code == 0, err
    assert "Traceback" not in err


def test_curated_set_round_trips_through_score_spurious_imagenet(
    fake_plugin, folders, tmp_path, cli_main
):
    images, _ = folders
    out = tmp_path / "d"
    curate(images, out, _config(detectors=["none"]))
    val = tmp_path / "val" / "n01833805"  # hummingbird's WordNet id
    _image(val / "real.png", (255, 0, 0))
    code, stdout, err = cli_main(
        "score",
        str(out),
        "--layout",
        "spurious-imagenet",
        "--real",
        str(tmp_path / "val"),
        "-c",
        "fake",
        "--json",
        "-",
    )
    assert code == 0, err
    data = json.loads(stdout)
    assert data["n_images"] == 3 and data["classes"][0]["index"] == 94
    assert data["classifiers"]["fake"]["mean_spurious_rate"] == 1.0


def test_detector_output_is_checked(tmp_path, folders):
    import torch

    class Wrong(torch.nn.Module):
        def forward(self, images, query):
            return images.mean(dim=(1, 2, 3)) * 3  # above 1

    from _plugin_helpers import make_plugin_module

    from spurcli import hookimpl

    module = make_plugin_module("bad-detector", classifiers={"fk2": lambda w: FakeDet()})

    class FakeDet(torch.nn.Module):
        def forward(self, images):
            return torch.zeros(images.shape[0], 1000)

    @hookimpl
    def register_detectors(register):
        register("wrong", lambda weights: Wrong())

    module.register_detectors = register_detectors
    plugins.get_plugins().register(module, name="bad-detector")
    images, _ = folders
    with pytest.raises(SpurcliError, match="outside \\[0, 1\\]: a bug in the plugin"):
        curate(images, tmp_path / "d", _config(classifiers=["fk2"], detectors=["wrong"]))
    assert not (tmp_path / "d").exists()  # atomic: nothing half-written


def test_report_shows_kept_and_rejected_per_reason(fake_plugin, folders, tmp_path):
    from spurcli.experiment.report import write_report

    images, refs = folders
    result = curate(images, tmp_path / "d", _config(references=refs, evaluate_with=["fake:1"]))
    page = write_report(tmp_path / "r.html", [], curations=[result]).read_text()
    for heading in ("Kept (1 of 1 shown)", "Rejected: object-present (2 of 2 shown)"):
        assert heading in page
    assert "Rejected: near-copy" in page and "Rejected: unreadable" in page
    assert page.index("held-out") < page.index("selection (biased)")


def test_config_checks(tmp_path):
    from spurcli.evaluate.curate import check_curate_config

    with pytest.raises(UsageError, match="--min-fooled"):
        check_curate_config(_config(min_fooled=2), tmp_path / "a", tmp_path / "b")
    with pytest.raises(UsageError, match="outside the images folder"):
        check_curate_config(_config(), tmp_path, tmp_path / "out")
    with pytest.raises(UsageError, match="cannot be combined"):
        check_curate_config(_config(detectors=["none", "fake"]), tmp_path / "a", tmp_path / "b")


def test_curate_with_the_builtin_owlv2_on_random_weights(fake_plugin, folders, tmp_path, cli_main):
    pytest.importorskip("spurcli_owlv2")
    images, _ = folders
    code, stdout, err = cli_main(
        *("curate", str(images), "--target", "94", "--out", str(tmp_path / "d"), "-c", "fake"),
        *("--detector-weights", "owlv2=random", "--json", "-"),
    )
    assert code == 0, err
    sheet = json.loads(stdout)
    assert sheet["models"]["detectors"][0] == {
        "name": "owlv2",
        "weights": "random",
        "plugin": "spurcli-owlv2",
        "random": True,
    }
    assert "random weights" in (tmp_path / "d" / "datasheet.md").read_text()
    rows = [json.loads(x) for x in (tmp_path / "d" / "verdicts.jsonl").read_text().splitlines()]
    readable = [r for r in rows if "unreadable" not in r["reasons"]]
    assert len(readable) == 5 and all(0 <= r["presence"]["owlv2"] <= 1 for r in readable)


def test_run_stage_curates_the_sfsl_set_once(fake_plugin, tmp_path):
    from spurcli.experiment.freshness import Stages
    from spurcli.experiment.plan import load_experiment
    from spurcli.experiment.stages import curate_stage

    config = tmp_path / "exp.toml"
    config.write_text(
        'out = "out"\nreplicates = 1\nmodel = "tiny"\ntarget = 94\nclass_noun = "flower"\n'
        'instance_dir = "refs"\n'
        '[compare]\nclassifiers = ["fake"]\n'
        '[curate]\nclassifiers = ["fake"]\ndetectors = ["fake"]\nextractor = "fake"\n'
        "max_similarity = 0.99\n"
    )
    exp = load_experiment(config)
    assert exp.curate.references == tmp_path / "out" / "references" / "train"
    assert exp.curate.target == 94 and exp.curate.overwrite
    for name, colour in COLOURS.items():
        _image(exp.set_dir("sfsl") / f"{name}.png", colour)
    _image(exp.curate.references / "ref.png", COLOURS["copy"])
    stages = Stages()
    curate_stage(exp, stages, True)
    assert stages.done == {"curate": "ran"}
    data = json.loads((tmp_path / "out" / "curated.json").read_text())
    assert [v["file"] for v in data["kept"]] == ["red.png"]
    assert set(data["rejected"]) == {"object-present", "not-fooling", "near-copy"}
    curate_stage(exp, stages, True)
    assert stages.done == {"curate": "skipped"}
    exp.curate.max_presence = 1.0  # a changed setting redoes the stage
    curate_stage(exp, stages, True)
    assert stages.done == {"curate": "ran"} and "max_presence" in stages.reasons["curate"]
    no_table = tmp_path / "plain.toml"
    no_table.write_text(config.read_text().split("[curate]")[0])
    assert load_experiment(no_table).curate is None  # off unless present


# ------------------------------------------------------------------------------------------------
# the output folder: owned, locked, only its own files replaced


def test_overwrite_never_deletes_files_curate_did_not_make(fake_plugin, folders, tmp_path):
    images, _ = folders
    mine = tmp_path / "u"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    (mine / ".bashrc").write_text("y")
    with pytest.raises(UsageError, match="not a spurcli curate folder"):
        curate(images, mine, _config(overwrite=True))
    assert sorted(p.name for p in mine.iterdir()) == [".bashrc", "thesis.txt"]  # not even a marker


def test_overwrite_replaces_only_the_previous_datasets_files(fake_plugin, folders, tmp_path):
    images, _ = folders
    out = tmp_path / "d"
    curate(images, out, _config(mode="link"))  # links inside: a second curate may replace them
    (out / "notes.txt").write_text("added by hand")
    (out / ".tmp-dataset.deadbeef").mkdir()  # what a curate killed during its copy leaves
    result = curate(images, out, _config(overwrite=True))
    assert (out / "notes.txt").read_text() == "added by hand"
    assert not list(out.glob(".tmp-*"))
    kept = sorted(p.name for p in out.glob("class_spurious_94_*/*"))
    assert kept == sorted(v.file for v in result.kept) and not any(
        p.is_symlink() for p in out.rglob("*")
    )


def test_a_second_curate_into_a_folder_in_use_is_refused_before_the_work(
    fake_plugin, folders, tmp_path
):
    from spurcli.fileio import output_folder

    images, _ = folders
    out = tmp_path / "d"
    curate(images, out, _config())
    loaded = len(fake_plugin.calls)
    # another curate holds it (a lock on its own file descriptor)
    busy = pytest.raises(SpurcliError, match="is in use by another spurcli curate")
    with output_folder(out, "curate"), busy:
        curate(images, out, _config(overwrite=True))
    assert len(fake_plugin.calls) == loaded  # refused before any model loaded


def test_a_failed_first_curate_leaves_no_folder(fake_plugin, folders, tmp_path):
    images, _ = folders
    out = tmp_path / "new"
    with pytest.raises(SpurcliError):
        curate(images, out, _config(strict=True))  # broken.png: an error under --strict
    assert not out.exists()


def decompression_bomb(path: Path, side: int = 40000) -> None:
    """A PNG header claiming side x side pixels (1.6 G at 40000): Pillow refuses to open it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_skipped_by_name_and_the_rest_curated(
    fake_plugin, folders, tmp_path
):
    images, _ = folders
    decompression_bomb(images / "bomb.png")
    result = curate(images, tmp_path / "d", _config())
    bomb = next(v for v in result.verdicts if v.file == "bomb.png")
    assert bomb.reasons == ["unreadable"] and "bomb.png" in bomb.message
    assert (tmp_path / "d" / "datasheet.json").is_file()


def test_a_folder_a_killed_curate_left_empty_needs_no_overwrite(fake_plugin, folders, tmp_path):
    images, _ = folders
    out = tmp_path / "d"
    out.mkdir()
    (out / ".spurcli-folder").write_text('{"kind": "curate"}')  # killed before any dataset
    (out / ".tmp-dataset.0123").mkdir()
    curate(images, out, _config())
    assert (out / "datasheet.json").is_file() and not list(out.glob(".tmp-*"))
