"""Nothing stale, nothing lost, nothing overwritten: docs/reliability.md's guarantees, by class.

- non-finite numbers: settings, weights after every update, checkpoints, sampled models
- output folders: one writer at a time (two real processes), owned, no symlinks, temporaries
- errors: broken and poisoned checkpoints, full disks, read-only paths, signals: one line
- text from users is data: rich markup, control characters, CSV formulas, mathtext, bidi
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _finetune_helpers import fast_config, make_refs

from spurcli.errors import SpurcliError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Path:
    return make_refs(tmp_path_factory.mktemp("refs"), n=2)


@pytest.fixture
def spurcli(cli_main):
    """``spurcli(...) -> (code, stdout, stderr lines without INFO/WARNING logs)``, quiet."""

    def run(*args):
        code, out, err = cli_main("-q", *map(str, args))
        lines = [line for line in err.splitlines() if line.strip()]
        return code, out, [line for line in lines if not line.startswith(("INFO", "WARNING"))]

    return run


def dreambooth(refs: Path, out: Path, **changes) -> object:
    """The fastest finetune: no prior images, no SFSL."""
    base = fast_config(refs, out, prior_weight=0, num_class_images=0, sfsl_weight=0)
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------------------------------------
# non-finite numbers


@pytest.mark.parametrize(
    "args",
    [
        ["--lr", "inf"],
        ["--lr", "nan"],
        ["--set", "class_guidance=nan"],
        ["--set", "prior_weight=inf"],
        ["--sfsl-weight", "-1"],
    ],
)
def test_finetune_refuses_non_finite_and_negative_settings(spurcli, refs, tmp_path, args):
    code, _, err = spurcli(
        "finetune", "--model", "tiny", "--instance-dir", refs, "--class-noun", "flower",
        "--target", "94", "--output-dir", tmp_path / "out", *args,
    )  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert "finite" in err[0] or "negative" in err[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("guidance", ["inf", "nan", "-2"])
def test_sample_refuses_a_guidance_that_is_not_finite(spurcli, tmp_path, guidance):
    code, _, err = spurcli("sample", "tiny", "-p", "x", "--guidance", guidance, "--out", tmp_path)
    assert code == 2 and len(err) == 1 and "--guidance" in err[0], err


def test_a_huge_lr_stops_at_the_first_update_instead_of_saving_nan(refs, tmp_path):
    # 1e38 passes every check (it is finite), and one AdamW step takes the weights to ~1e38:
    # before the guard a 1-step run finished (exit 0) with a pipeline of inf/NaN weights.
    from spurcli.generate.finetune import finetune

    out = tmp_path / "run"
    with pytest.raises(SpurcliError, match="non-finite in the update of step 1") as info:
        finetune(dreambooth(refs, out, steps=1, lr=1e38, max_grad_norm=0))
    assert "last good checkpoint: none" in str(info.value)
    assert not (out / "pipeline").exists() and not (out / "checkpoints").exists()


def test_weights_poisoned_by_an_update_name_only_a_finite_checkpoint(refs, tmp_path, monkeypatch):
    # An update that writes NaN while the loss before it is finite: the old guard (the loss
    # only) saved it as a checkpoint and named it "last good".
    from spurcli.generate import training as finetune_module
    from spurcli.generate.finetune import finetune

    real = finetune_module._optimizer

    def poisoning(cfg, groups):
        optimizer = real(cfg, groups)
        calls = []

        def poison(optimizer, args, kwargs):
            calls.append(1)
            if len(calls) == 3:
                with torch.no_grad():
                    groups[0]["params"][0].view(-1)[0] = float("nan")

        optimizer.register_step_post_hook(poison)
        return optimizer

    monkeypatch.setattr(finetune_module, "_optimizer", poisoning)
    out = tmp_path / "run"
    with pytest.raises(SpurcliError, match="update of step 3") as info:
        finetune(dreambooth(refs, out, steps=4, checkpoint_every=1, keep_checkpoints=0))
    assert str(out / "checkpoints" / "step-2") in str(info.value)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    log = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2]


def test_last_good_checkpoint_skips_one_with_nan_weights(tmp_path):
    from safetensors.torch import save_file

    from spurcli.generate.checkpoints import last_good_checkpoint

    for step, value in ((1, 1.0), (2, float("nan"))):
        folder = tmp_path / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}")
        save_file({"w": torch.full((3,), value)}, folder / "unet.safetensors")
    assert last_good_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"


def test_sample_refuses_a_model_with_nan_weights(spurcli, tmp_path):
    from spurcli.generate.pipelines import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    with torch.no_grad():
        next(pipe.unet.parameters()).view(-1)[0] = float("nan")
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    code, _, err = spurcli("sample", tmp_path / "model", "-p", "x", "--out", tmp_path / "s")
    assert code == 1 and len(err) == 1, err
    assert "UNet weights contain NaN" in err[0]
    assert not list((tmp_path / "s").rglob("*.png"))  # no black images


# ------------------------------------------------------------------------------------------------
# output folders: one writer, owned, no symlinks, no leftovers

SAMPLE = ["sample", "tiny", "-p", "a red flower", "--steps", "2", "--height", "32", "--width", "32"]


def _holder_pid(folder: Path) -> int | None:
    from spurcli.fileio import FOLDER_FILE

    try:
        return json.loads((folder / FOLDER_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(spurcli, tmp_path):
    import signal
    import subprocess
    import time

    from _finetune_helpers import SUBPROCESS_ENV, spurcli_command

    out = tmp_path / "s"
    slow = [*SAMPLE, "-n", "400", "-b", "1", "--steps", "20", "--out", str(out)]
    first = subprocess.Popen(
        spurcli_command("-q", *slow), env=SUBPROCESS_ENV, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while _holder_pid(out) != first.pid or not list(out.rglob("*.png")):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.2)
        second = subprocess.run(
            spurcli_command("-q", *SAMPLE, "-n", "1", "--out", str(out)),
            env=SUBPROCESS_ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by another spurcli sample (pid {first.pid}" in lines[0]
        first.send_signal(signal.SIGTERM)  # ends like Ctrl-C: one line, exit 130
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        assert err.strip().splitlines() == [
            "error: interrupted; finished results are kept: run the same command to continue"
        ]
    finally:
        first.kill()
    assert not list(out.rglob(".tmp-*"))  # the interrupted write cleaned up after itself
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--steps", "20", "--out", out)  # lock released
    assert code == 0, err


def test_a_folder_of_the_users_own_files_is_never_written(spurcli, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", mine)
    assert code == 2 and len(err) == 1 and "is not empty (thesis.tex)" in err[0], err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]  # not even a marker left
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", tmp_path / "home")
    assert code == 2 and "refusing to write into" in err[0], err
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", "/")
    assert code == 2 and "refusing to write into" in err[0], err


def test_a_result_of_another_kind_is_refused(spurcli, refs, tmp_path):
    from spurcli.fileio import output_folder

    with output_folder(tmp_path / "run", "finetune"):
        pass
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", tmp_path / "run")
    assert code == 2 and "holds a spurcli finetune result, not a sample one" in err[0], err


def test_old_results_without_a_marker_are_still_theirs(tmp_path):
    from spurcli.fileio import FOLDER_FILE, output_folder
    from spurcli.generate.sample import is_sample_folder
    from spurcli.records import MANIFEST

    (tmp_path / MANIFEST).write_text("")
    with output_folder(tmp_path, "sample", recognise=is_sample_folder):
        pass
    assert json.loads((tmp_path / FOLDER_FILE).read_text())["kind"] == "sample"


@pytest.mark.parametrize("link", ["a-red-flower", "manifest.jsonl", "a-red-flower/000000.png"])
def test_a_symlink_inside_an_output_folder_is_refused(spurcli, tmp_path, link):
    out, elsewhere = tmp_path / "s", tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", out)
    assert code == 0, err
    target = out / link
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(elsewhere if "." not in link else elsewhere / "x")
    code, _, err = spurcli(*SAMPLE, "-n", "2", "--out", out)
    assert code == 1 and len(err) == 1 and "is a symbolic link inside the output folder" in err[0]
    assert list(elsewhere.iterdir()) == []  # nothing written (or deleted) through the link


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_run(spurcli, tmp_path):
    out = tmp_path / "s"
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", out)
    assert code == 0, err
    (out / ".tmp-manifest.jsonl.0123456789ab").write_text("half")
    (out / ".old-pipeline.xyz" / "pipeline" / "unet").mkdir(parents=True)
    (out / "a-red-flower" / ".tmp-000001.png.0123456789ab").write_bytes(b"half")
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", out)
    assert code == 0, err
    assert not [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".old-"))]


def test_finetune_output_inside_the_references_is_refused(spurcli, tmp_path):
    refs = make_refs(tmp_path / "refs", n=1)
    code, _, err = spurcli(
        "finetune", "--model", "tiny", "--instance-dir", refs, "--class-noun", "flower",
        "--target", "94", "--output-dir", refs / "run",
    )  # fmt: skip
    assert code == 2 and len(err) == 1 and "would train on its own outputs" in err[0], err
    assert not (refs / "run").exists()


def test_weight_files_keep_the_umask_permissions(tmp_path):
    import os
    import stat

    from safetensors.torch import save_file

    from spurcli.fileio import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "ckpt") as tmp:
            save_file({"w": torch.zeros(2)}, tmp / "unet.safetensors")
            torch.save({"a": 1}, tmp / "optimizer.pt")
    finally:
        os.umask(old)
    for name in ("unet.safetensors", "optimizer.pt"):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755


def test_result_paths_are_checked_before_the_work(spurcli, tmp_path, fake_plugin):
    (tmp_path / "file").write_text("")
    images = make_refs(tmp_path / "images", n=1)
    for option, path, message in [
        ("--json", tmp_path / "file" / "x.json", "File exists; something is in the way"),
        ("--csv", tmp_path, "is a folder; give a file name"),
    ]:
        code, _, err = spurcli("score", images, "-t", "94", "-c", "fake", option, path)
        assert code in (1, 2) and len(err) == 1 and message in err[0], err
    assert fake_plugin.calls == []  # refused before any classifier was loaded


# ------------------------------------------------------------------------------------------------
# errors that name the file and what to do


@pytest.fixture
def checkpointed(refs, tmp_path):
    """A 2-step run with checkpoints step-1 and step-2 (and a finished pipeline)."""
    from spurcli.generate.finetune import finetune

    out = tmp_path / "run"
    finetune(dreambooth(refs, out, steps=2, checkpoint_every=1, keep_checkpoints=0))
    return out


class Payload:
    """Unpickling this runs a command: what a poisoned checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_broken_and_poisoned_checkpoints_are_one_line_and_never_run(refs, checkpointed, tmp_path):
    import pickle

    from safetensors.torch import save_file

    from spurcli.generate.finetune import finetune

    step2 = checkpointed / "checkpoints" / "step-2"
    marker = tmp_path / "payload-ran"
    cfg = dreambooth(refs, checkpointed, steps=3, checkpoint_every=1, keep_checkpoints=0)
    cases = {
        "optimizer.pt": (lambda f: f.write_bytes(pickle.dumps(Payload(marker))), "pickled Python"),
        "unet.safetensors": (lambda f: f.write_bytes(f.read_bytes()[:1000]), "truncated"),
        "text_encoder.safetensors": (
            lambda f: save_file({"w": torch.zeros(2)}, f),
            "holds the weights of another model",
        ),
        "state.json": (lambda f: f.write_text("{"), "not a spurcli checkpoint record"),
    }
    for name, (damage, message) in cases.items():
        backup = (step2 / name).read_bytes()
        damage(step2 / name)
        with pytest.raises(SpurcliError) as info:
            finetune(dataclasses.replace(cfg, resume=str(step2)))
        text = str(info.value)
        assert str(step2 / name) in text and message in text, text
        assert "\n" not in text and "weights_only" not in text and "Error" not in text
        (step2 / name).write_bytes(backup)
    assert not marker.exists()  # the pickled payload never ran


def test_resume_latest_skips_a_checkpoint_that_does_not_load(refs, checkpointed, caplog):
    from spurcli.generate.finetune import finetune

    step2 = checkpointed / "checkpoints" / "step-2" / "unet.safetensors"
    step2.write_bytes(step2.read_bytes()[:500])  # a save killed half-way (an old version's)
    cfg = dreambooth(refs, checkpointed, steps=3, checkpoint_every=1, keep_checkpoints=0)
    finetune(dataclasses.replace(cfg, resume="latest"))
    assert "skipping checkpoint" in caplog.text and str(step2) in caplog.text
    log = [
        json.loads(line)["step"] for line in (checkpointed / "log.jsonl").read_text().splitlines()
    ]
    assert log == [1, 2, 3]  # resumed from step-1: step 2 was redone


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(spurcli, tmp_path, monkeypatch):
    import errno

    from PIL import Image

    real = Image.Image.save
    calls = []

    def full(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) > 1:  # the first image fits, the disk is full at the second
            real(self, fp, *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "s"
    code, _, err = spurcli(*SAMPLE, "-n", "2", "-b", "1", "--out", out)
    assert code == 1 and len(err) == 1, err
    assert "No space left on device; the disk is full: free some space" in err[0]
    assert [p.name for p in out.rglob("*.png")] == ["000000.png"]  # no half-written second
    assert not list(out.rglob(".tmp-*"))


def test_a_misspelled_table_is_an_error_for_finetune_too(spurcli, tmp_path):
    (tmp_path / "exp.toml").write_text("[finetun]\nsteps = 1\n")
    code, _, err = spurcli("finetune", tmp_path / "exp.toml")
    assert code == 2 and len(err) == 1
    assert "unknown table [finetun]; did you mean [finetune]" in err[0]


def test_run_checks_every_table_before_the_first_stage(spurcli, refs, tmp_path, fake_plugin):
    (tmp_path / "exp.toml").write_text(
        f'out = "{tmp_path / "exp"}"\nmodel = "tiny"\ntarget = 94\nclass_noun = "flower"\n'
        f'instance_dir = "{refs}"\n[sample]\nn = 0\n[compare]\nclassifiers = ["fake"]\n'
    )
    code, _, err = spurcli("run", tmp_path / "exp.toml")
    assert code == 2 and len(err) == 1 and "-n must be a positive number" in err[0], err
    assert not (tmp_path / "exp").exists()  # nothing ran, not even the fine-tuning


# ------------------------------------------------------------------------------------------------
# text from users is data, never markup

HOSTILE_A = '<img src=x onerror="document.title=1">[red]A[/] $\\frac{1}{$ \x1b[2J'
HOSTILE_B = '\u202eevil.exe\u202c =HYPERLINK("http://x") $x$'


@pytest.fixture
def hostile(tmp_path, fake_plugin):
    """A comparison whose labels and file names carry markup of every sink."""
    from _compare_helpers import RED, solid

    from spurcli.evaluate.compare import CompareConfig, compare

    a, b = tmp_path / "a", tmp_path / "b"
    solid(a / "=cmd|' calc'!A1.png", RED[0], (32, 32))
    solid(a / "+[bold]x[/bold].png", RED[1], (32, 32))
    solid(b / "\u05e9\u05dc\u05d5\u05dd.png", RED[2], (32, 32))
    config = CompareConfig(target=94, classifiers=["fake"], extractors=["fake"])
    return compare(a, b, config, labels=(HOSTILE_A, HOSTILE_B))


def test_hostile_labels_reach_rich_tables_as_typed(hostile):
    from rich.console import Console

    out = Console(record=True, width=400, color_system=None)
    for table in hostile.tables():
        out.print(table)
    text = out.export_text()
    assert "[red]A[/]" in text  # printed, not interpreted
    assert "\x1b" not in text and "\\x1b[2J" in text  # shown, not obeyed
    assert "\u202e" not in text and "\\u202e" in text


def test_csv_cells_never_start_a_formula_and_read_back_exactly(hostile, tmp_path):
    import csv

    from spurcli.evaluate.score import score_folders
    from spurcli.experiment.stages import read_rows

    path = tmp_path / "rows.csv"

    (result,) = score_folders([tmp_path / "a"], 94, ["fake"])
    result.write_csv(path)
    with open(path, newline="", encoding="utf-8") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]
    images = {row["image"] for row in read_rows(path)}
    assert images == {"=cmd|' calc'!A1.png", "+[bold]x[/bold].png"}


def test_a_log_line_shows_control_characters_instead_of_obeying_them(capsys):
    import logging

    from spurcli import console

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        console.configure()
        logging.getLogger("spurcli.test").warning("prompt %s", "a\x1b]0;owned\x07b")
    finally:
        root.handlers = saved
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b]0;owned\\x07b" in err


def _chromium() -> str | None:
    import os
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI"):
        pytest.fail("CI must have chromium (apt-get install -y chromium)")
    return found


def test_hostile_labels_in_the_report_rendered_by_chromium(hostile, tmp_path):
    import subprocess
    import tempfile

    from spurcli.experiment.report import write_report

    chromium = _chromium()
    if chromium is None:
        pytest.skip("needs chromium (apt-get install -y chromium)")
    path = write_report(tmp_path / "report.html", [hostile], title=HOSTILE_A)
    html = path.read_text(encoding="utf-8")
    assert "<bdi>&lt;img src=x" in html  # escaped and direction-isolated
    assert "\\frac" in html and "$x$" in html  # matplotlib drew the dollars as text
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
    # The browser's own parse of the page: the label is text, not an element with a handler.
    from html.parser import HTMLParser

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found = []

        def handle_starttag(self, tag, attrs):
            self.found.append((tag, dict(attrs)))

    parser = Tags()
    parser.feed(dom)
    assert not [attrs for _, attrs in parser.found if "onerror" in attrs]
    assert "&lt;img src=x onerror=" in dom and "<title>1</title>" not in dom
    assert "\\x1b[2J" in dom and "\x1b" not in dom  # shown, not a raw escape


# ------------------------------------------------------------------------------------------------
# the rest: unique prompt folders, no padding of small jobs, stale prior images


def test_prompt_folders_are_unique_by_construction():
    import hashlib

    from spurcli.generate.sample import prompt_folders

    hashed = f"a-b-{hashlib.sha1(b'a b').hexdigest()[:8]}"
    prompts = [hashed, "a b", "a-b", "A B", "a  b"]  # the first is literally the second's hash
    taken = {"a-b-2": "an old prompt"}
    folders = prompt_folders(prompts, taken)
    assert len(set(folders.values())) == len(prompts)
    assert not set(folders.values()) & set(taken)
    assert prompt_folders(prompts, {v: k for k, v in folders.items()}) == folders  # stable


def test_a_one_image_job_is_not_padded_to_the_batch_size(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from spurcli.generate.sample import SampleConfig, sample

    rows = []
    real = StableDiffusionPipeline.__call__

    def spy(self, *args, **kwargs):
        rows.append(kwargs["prompt_embeds"].shape[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy)
    config = SampleConfig(prompts=["x"], n=1, out=tmp_path, steps=1, batch_size=8, height=32,
                          width=32)  # fmt: skip
    sample(config)
    assert rows == [1]


def test_prior_images_of_another_prompt_are_regenerated(refs, tmp_path, caplog):
    from PIL import Image

    from spurcli.generate.finetune import finetune

    class_dir = tmp_path / "priors"
    base = dreambooth(refs, tmp_path / "one", steps=1, prior_weight=1.0, num_class_images=1,
                      class_dir=class_dir)  # fmt: skip
    finetune(base)
    prior = class_dir / "class-00000.png"
    assert Image.open(prior).text["prompt"] == "a photo of flower"
    finetune(dataclasses.replace(base, output_dir=tmp_path / "two", class_noun="tree"))
    assert "regenerating them" in caplog.text
    assert Image.open(prior).text["prompt"] == "a photo of tree"


def test_a_pipeline_folder_of_pickled_bin_files_is_refused(spurcli, tmp_path):
    from spurcli.generate.pipelines import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(tmp_path / "model", safe_serialization=False)
    code, _, err = spurcli("sample", tmp_path / "model", "-p", "x", "--out", tmp_path / "s")
    assert code == 1 and len(err) == 1, err
    assert "model.bin is a pickled weights file, which spurcli never loads" in err[0]
    assert not list((tmp_path / "s").rglob("*.png"))


def test_negative_counts_are_refused(spurcli, tmp_path, fake_plugin):
    from _compare_helpers import make_sets

    a, b = make_sets(tmp_path)
    code, _, err = spurcli("compare", a, b, "-t", "94", "-c", "fake", "--report-images", "-1")
    assert code == 2 and len(err) == 1 and "--report-images must not be negative" in err[0], err
    assert fake_plugin.calls == []


def test_the_manifest_counts_exactly_the_images_on_disk(spurcli, tmp_path):
    out = tmp_path / "s"
    code, _, err = spurcli(*SAMPLE, "-n", "3", "--out", out)
    assert code == 0, err
    (out / "a-red-flower" / "000001.png").unlink()  # deleted by hand
    manifest = out / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + manifest.read_text().splitlines()[0] + "\n")
    code, _, err = spurcli(*SAMPLE, "-n", "2", "--out", out)
    assert code == 0, err
    records = [json.loads(line)["file"] for line in manifest.read_text().splitlines()]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert sorted(records) == on_disk == [f"a-red-flower/00000{i}.png" for i in range(3)]


def test_markdown_values_cannot_add_structure_and_code_spans_hold_any_text(tmp_path):
    """datasheet.md: a prompt or file name is text, never a heading, link, HTML or table cell."""
    from spurcli.text import markdown_code, markdown_text, render_markdown

    forged = "x\n## Results\n| 1.000 | <img src=x> [a](http://e) *b* `c` &lt;"
    text = markdown_text(forged)
    assert "\n" not in text and "## Results" in text  # one line: no heading can start
    for raw in ("|", "<", "[", "*", "`", "&"):
        assert raw not in text.replace("\\" + raw, "")  # every special character escaped
    span = markdown_code("a `b` | c")
    assert span == "``a `b` \\| c``"  # a longer fence than any backtick run inside; | escaped
    assert markdown_code("`x`") == "`` `x` ``"
    (tmp_path / "t.md.j2").write_text("| {{ v }} | {{ v|code }} | {{ n }} |\n")
    out = render_markdown(tmp_path, "t.md.j2", v="a|b<c>", n=3)
    assert out == "| a\\|b\\<c\\> | `a\\|b<c>` | 3 |\n"


# ------------------------------------------------------------------------------------------------
# nothing lost: a resume that cannot use the run refuses and touches nothing


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` and its bytes (the lock marker's pid and time aside)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".spurcli-folder"
    }


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"lora_rank": 4, "steps": 4, "checkpoint_every": 2}, {"lora_rank": 8, "steps": 6}),
        ({"lora_rank": 4}, {"lora_rank": 0}),
        ({}, {"lora_rank": 4}),
        ({}, {"train_text_encoder": False}),
        ({"lora_rank": 4, "checkpoint_every": 0}, {"lora_rank": 0, "steps": 3}),
    ],
    ids=["rank-4-to-8", "lora-to-full", "full-to-lora", "text-encoder-off", "finished-no-ckpt"],
)
def test_a_resume_with_other_weights_refuses_and_touches_nothing(refs, tmp_path, before, after):
    from spurcli.generate.finetune import finetune

    out = tmp_path / "run"
    cfg = dreambooth(
        refs, out, **{"steps": 2, "checkpoint_every": 1, "keep_checkpoints": 0, **before}
    )
    finetune(cfg)
    saved = folder_state(out)
    with pytest.raises(SpurcliError) as info:
        finetune(dataclasses.replace(cfg, resume="latest", **after))
    text = str(info.value)
    assert "\n" not in text and "saved with other weights" in text, text
    assert folder_state(out) == saved  # no checkpoint, adapter, pipeline or record changed


def test_resume_latest_refuses_when_no_checkpoint_loads(refs, checkpointed):
    from spurcli.generate.finetune import finetune

    for step in (1, 2):
        unet = checkpointed / "checkpoints" / f"step-{step}" / "unet.safetensors"
        unet.write_bytes(unet.read_bytes()[:500])
    before = {p.name: p.read_bytes() for p in (checkpointed / "pipeline" / "unet").iterdir()}
    cfg = dreambooth(refs, checkpointed, steps=3, checkpoint_every=1, keep_checkpoints=0)
    with pytest.raises(SpurcliError, match=r"no checkpoint in .* loads"):
        finetune(dataclasses.replace(cfg, resume="latest"))
    after = {p.name: p.read_bytes() for p in (checkpointed / "pipeline" / "unet").iterdir()}
    assert after == before  # the finished pipeline was not overwritten by a run from step 0


def test_resume_latest_names_the_checkpoint_it_resumed_from(refs, checkpointed, caplog):
    import logging

    from spurcli.generate.finetune import finetune

    step2 = checkpointed / "checkpoints" / "step-2" / "unet.safetensors"
    step2.write_bytes(step2.read_bytes()[:500])
    cfg = dreambooth(refs, checkpointed, steps=3, checkpoint_every=1, keep_checkpoints=0)
    with caplog.at_level(logging.INFO, logger="spurcli.generate.checkpoints"):
        finetune(dataclasses.replace(cfg, resume="latest"))
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed")]
    assert resumed == [f"resumed from {checkpointed / 'checkpoints' / 'step-1'} (step 1)"], resumed


@pytest.mark.parametrize("change", ["edit", "add"])
def test_a_resume_after_the_references_changed_is_refused(refs, tmp_path, change):
    import shutil

    from PIL import Image

    from spurcli.generate.finetune import finetune

    mine = tmp_path / "refs"
    shutil.copytree(refs, mine)
    out = tmp_path / "run"
    cfg = dreambooth(mine, out, steps=2, checkpoint_every=1, keep_checkpoints=0)
    finetune(cfg)
    card = (out / "spurcli-run.json").read_bytes()
    if change == "edit":
        first = sorted(mine.iterdir())[0]
        Image.new("RGB", (44, 36), (1, 2, 3)).save(first)
    else:
        Image.new("RGB", (44, 36), (1, 2, 3)).save(mine / "new.png")
    with pytest.raises(SpurcliError, match=r"are not those .* was trained on"):
        finetune(dataclasses.replace(cfg, resume="latest", steps=3))
    assert (out / "spurcli-run.json").read_bytes() == card


def test_checking_a_result_path_leaves_nothing_behind(tmp_path):
    from spurcli.fileio import check_output_file

    check_output_file(tmp_path / "out" / "scores.json", "--json")
    check_output_file(tmp_path / "out" / "rows.csv", "--csv")
    assert list((tmp_path / "out").iterdir()) == []  # no 0-byte .tmp-probe-* file


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["sample", "tiny", "-p", "x", "--steps", "1000000000"], "--steps"),
        (["sample", "tiny", "-p", "x", "--height", "1000000000"], "--height"),
        (["sample", "tiny", "-p", "x", "-n", "2000000000"], "-n"),
        (["sample", "tiny", "-p", "x", "--guidance", "1e38"], "--guidance"),
        (["sample", "tiny", "-p", "x", "--set", "steps=10000000000000000000000"], "--steps"),
        (["finetune", "--model", "tiny", "--lora-rank", "100000"], "--lora-rank"),
        (["finetune", "--model", "tiny", "--steps", "100000000000"], "--steps"),
        (["compare", "A", "B", "-t", "94", "-c", "fake", "--bootstrap", "99" * 6], "--bootstrap"),
        (["score", "A", "-t", "94", "-c", "fake", "-b", "10000000"], "--batch-size"),
    ],
)  # fmt: skip
def test_every_count_and_size_has_a_bound_checked_before_the_work(
    spurcli, refs, tmp_path, fake_plugin, args, option
):
    from _compare_helpers import make_sets

    a, b = make_sets(tmp_path)
    args = [{"A": a, "B": b}.get(x, x) for x in args]
    if args[0] == "finetune":
        args += ["--instance-dir", refs, "--class-noun", "flower", "--target", "94"]
        args += ["--output-dir", tmp_path / "out"]
    else:
        args += ["--out" if args[0] == "sample" else "--json", tmp_path / "out"]
    code, _, err = spurcli(*args)
    assert code == 2 and len(err) == 1 and option in err[0] and "at most" in err[0], err
    assert not (tmp_path / "out").exists() and fake_plugin.calls == []


def test_a_decompression_bomb_in_a_prompt_folder_does_not_stop_sample(spurcli, tmp_path):
    from test_curate import decompression_bomb

    out = tmp_path / "s"
    code, _, err = spurcli(*SAMPLE, "-n", "1", "--out", out)
    assert code == 0, err
    folder = next(p.parent for p in out.rglob("*.png"))
    decompression_bomb(folder / "bomb.png")
    code, _, err = spurcli(*SAMPLE, "-n", "2", "--out", out)
    assert code == 0, err


def test_compare_prints_its_caption_lines_as_lines(spurcli, tmp_path, fake_plugin):
    from _compare_helpers import make_sets

    a, b = make_sets(tmp_path)
    code, out, err = spurcli(
        "compare", a, b, "-t", "94", "-c", "fake", "-e", "", "--bootstrap", "10"
    )
    assert code == 0, err
    assert "\\x0a" not in out and "95% intervals" in out


def test_an_interrupted_finetune_says_to_continue_with_resume(spurcli, refs, tmp_path, monkeypatch):
    from spurcli.errors import Signalled
    from spurcli.generate import finetune

    def interrupted(cfg):
        raise Signalled("SIGINT")  # what Ctrl-C raises (cli._sigterm_interrupts)

    monkeypatch.setattr(finetune, "finetune", interrupted)
    args = ["--model", "tiny", "--instance-dir", refs, "--class-noun", "flower", "--target", "94"]
    code, _, err = spurcli("finetune", *args, "--output-dir", tmp_path / "out")
    assert code == 130 and len(err) == 1 and "--resume latest" in err[0], err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora-alpha", "8"], "--lora-alpha scales LoRA adapters: it needs --lora-rank"),
        (["--identifier", " "], "--identifier must not be empty"),
        (["--instance-prompt", "a photo of {noun}"], "has no [V]"),
    ],
)
def test_settings_that_would_do_nothing_are_refused(spurcli, refs, tmp_path, args, message):
    code, _, err = spurcli(
        "finetune", "--model", "tiny", "--instance-dir", refs, "--class-noun", "flower",
        "--target", "94", "--output-dir", tmp_path / "out", *args,
    )  # fmt: skip
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_set_for_a_table_the_run_config_lacks_is_refused(tmp_path):
    from test_run import CONFIG, write_config

    from spurcli.errors import UsageError
    from spurcli.experiment.plan import load_experiment

    with pytest.raises(UsageError, match=r"has no \[curate\] table"):
        load_experiment(write_config(tmp_path, CONFIG), sets=["curate.limit=-1"])


def test_plugin_weight_errors_are_one_whole_line_without_torchs_advice(tmp_path):
    import pickle

    from safetensors.torch import save_file

    from spurcli import plugins

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Payload(tmp_path / "ran")))
    with pytest.raises(SpurcliError) as info:
        plugins.detectors().load("owlv2", evil)  # a file: never taken for a hub id
    assert "is a file; OWLv2 weights are a folder" in str(info.value)
    folder = tmp_path / "owl"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(evil.read_bytes())
    with pytest.raises(SpurcliError) as info:
        plugins.detectors().load("owlv2", folder)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    assert "Unpickling" not in str(info.value)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(SpurcliError) as info:
        plugins.classifiers().load("timm:test_resnet", wrong)
    text = str(info.value)
    assert "\n" not in text and not text.rstrip().endswith(":"), text
    assert not (tmp_path / "ran").exists()


def test_a_features_file_holding_a_pickle_is_refused_by_name(tmp_path):
    import numpy as np

    from spurcli.evaluate.similarity import Features

    path = tmp_path / "features.npz"
    np.savez(path, names=np.array([{"evil": 1}], dtype=object), values=np.zeros((1, 2)))
    with pytest.raises(SpurcliError) as info:
        Features.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_sampling_that_goes_non_finite_stops_instead_of_saving_black_images(tmp_path):
    from spurcli.generate.config import SampleConfig
    from spurcli.generate.pipelines import load_pipeline, resolve_model
    from spurcli.generate.sample import sample

    ref = resolve_model("tiny")
    pipe = load_pipeline(ref)
    # finite weights, but the decoder overflows (what --guidance 1e38 did to the latents)
    pipe.vae.decoder.register_forward_hook(lambda module, args, out: out * float("nan"))
    cfg = SampleConfig(model="tiny", prompts=["a red flower"], n=1, steps=2, height=32, width=32)
    cfg.out = tmp_path / "s"
    with pytest.raises(SpurcliError, match="NaN or infinite pixels"):
        sample(cfg, pipe=pipe, model_ref=ref)
    assert not list((tmp_path / "s").rglob("*.png"))


def test_a_full_disk_while_checkpointing_is_one_line_with_the_path(refs, tmp_path, monkeypatch):
    from spurcli.generate import checkpoints
    from spurcli.generate.finetune import finetune

    real_save = torch.save
    calls = []

    def full_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 3:  # the first checkpoint is written, the second finds the disk full
            raise RuntimeError(
                "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed "
                "writing file data/0: file write failed"
            )
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(SpurcliError) as info:
        finetune(dreambooth(refs, out, steps=2, checkpoint_every=1, keep_checkpoints=0))
    text = str(info.value)
    assert "\n" not in text and "step-2" in text and "the disk is full" in text, text
    assert "--resume latest" in text and str(out / "checkpoints" / "step-1") in text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]


def test_class_images_inside_the_reference_folder_are_refused(spurcli, refs, tmp_path):
    import shutil

    mine = tmp_path / "refs"
    shutil.copytree(refs, mine)
    code, _, err = spurcli(
        "finetune", "--model", "tiny", "--instance-dir", mine, "--class-noun", "flower",
        "--target", "94", "--output-dir", tmp_path / "out", "--class-dir", mine / "class",
    )  # fmt: skip
    assert code == 2 and len(err) == 1 and "would be read as reference images" in err[0], err
    assert not (tmp_path / "out").exists() and not (mine / "class").exists()
