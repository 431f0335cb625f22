"""`spurcli sample`: seeds, layout, manifest, resume after a kill, batch/process invariance, errors.

All on the `tiny` model at 32-64 px with 2-3 denoising steps; one pipeline for the module.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spurcli.errors import SpurcliError, UsageError
from spurcli.generate.prompts import without_identifier
from spurcli.generate.sample import (
    SEED_SCHEME,
    SampleConfig,
    fill_identifier,
    prompt_folders,
    sample,
    with_recontext,
)
from spurcli.records import MANIFEST, png_record, read_manifest
from spurcli.seeds import derive_seed
from spurcli.text import slugify

PROMPTS = ["a photo of a red flower", "a red feeder"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_pipe():
    from spurcli.generate.pipelines import load_pipeline

    return load_pipeline("tiny")


def config(out: Path, **kw) -> SampleConfig:
    base = dict(prompts=PROMPTS, n=3, out=out, steps=2, batch_size=2, height=32, width=32)
    return SampleConfig(**{**base, **kw})


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))


# --- prompts and seeds ------------------------------------------------------------------------


def test_derived_seeds_are_distinct_pure_and_depend_on_the_base_seed():
    seeds = [derive_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100
    assert seeds == [derive_seed(0, i) for i in range(100)]  # a pure function
    assert not set(seeds) & {derive_seed(1, i) for i in range(100)}  # --seed 1 shares none
    assert all(0 <= s < 2**63 for s in seeds)


def test_recontext_identifier_and_slugs(caplog):
    assert with_recontext(["a photo of [V] flower."]) == [
        "a photo of [V] flower.",
        "a photo of [V] flower on the beach",
        "a photo of [V] flower on Mount Fuji",
        "a photo of [V] flower in a garden",
        "a photo of [V] flower in a market",
    ]
    assert fill_identifier(["a [V] flower"], "sks", tuned=True) == ["a sks flower"]
    assert without_identifier("a photo of [V] flower") == "a photo of flower"
    with pytest.raises(UsageError, match=r"uses \[V\]"):
        fill_identifier(["a [V] flower"], None, tuned=False)
    with caplog.at_level(logging.WARNING):
        assert fill_identifier(["a red flower"], "sks", tuned=True) == ["a red flower"]
    assert "has no [V]" in caplog.text
    assert slugify("A photo of a RED flower!") == "a-photo-of-a-red-flower"
    folders = prompt_folders(["a red flower", "a red flower!"], {})
    assert len(set(folders.values())) == 2  # same slug -> told apart by a hash suffix
    # A folder taken by another prompt (from the manifest) is never shared.
    assert prompt_folders(["a dog"], {"a-dog": "A dog"})["a dog"] != "a-dog"
    assert prompt_folders(["a dog"], {"a-dog": "a dog"}) == {"a dog": "a-dog"}


# --- what a run writes ----------------------------------------------------------------------


def test_layout_manifest_and_png_chunks(tmp_path, tiny_pipe):
    out = tmp_path / "s"
    result = sample(config(out), pipe=tiny_pipe)
    expected = [f"{slugify(p)}/{i:06d}.png" for p in PROMPTS for i in range(3)]
    assert files(out) == sorted(expected) and result.files == expected
    assert (result.generated, result.skipped) == (6, 0)
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [r["file"] for r in manifest] == sorted(expected)  # one line each, sorted
    for record in manifest:
        assert {"file", "prompt", "seed", "steps", "guidance", "scheduler", "model"} <= set(record)
        assert record["seed"] == derive_seed(0, record["prompt"], record["index"])
        assert (record["steps"], record["guidance"], record["model"]) == (2, 7.5, "tiny")
        assert record["scheduler"] == "pndm"  # tiny's own scheduler, by its short name
        assert png_record(out / record["file"]) == record  # the PNG carries its own record
        with Image.open(out / record["file"]) as img:
            assert img.size == (32, 32)
            assert img.text["prompt"] == record["prompt"]
            assert img.text["seed"] == str(record["seed"])


def test_resume_after_a_kill_gives_the_same_files(tmp_path, tiny_pipe):
    full, part = tmp_path / "full", tmp_path / "part"
    sample(config(full, n=4), pipe=tiny_pipe)
    sample(config(part, n=2), pipe=tiny_pipe)
    # Simulate a kill: a leftover temp file, a PNG whose manifest line never got written,
    # a torn last manifest line, and a manifest line whose PNG was deleted.
    folder = part / slugify(PROMPTS[0])
    (folder / ".tmp-000002.png.abc").write_bytes(b"\x89PNG half")
    lines = (part / MANIFEST).read_text().splitlines()
    missing = json.loads(lines[0])["file"]
    deleted = json.loads(lines[1])["file"]
    (part / deleted).unlink()
    (part / MANIFEST).write_text("\n".join(lines[1:]) + '\n{"file": "a-ph')
    result = sample(config(part, n=4), pipe=tiny_pipe)
    assert (result.generated, result.skipped) == (5, 3)  # 2x4 wanted, 3 were still there
    assert files(part) == files(full)
    assert not list(folder.glob(".tmp-*"))
    for file in files(full):  # bit-identical, whatever was made in which batch and run
        assert (full / file).read_bytes() == (part / file).read_bytes(), file
    assert (part / MANIFEST).read_text() == (full / MANIFEST).read_text()
    assert missing in read_manifest(part)
    again = sample(config(part, n=4), pipe=tiny_pipe)  # nothing left to do, no duplicates
    assert (again.generated, again.skipped) == (0, 8)
    assert len((part / MANIFEST).read_text().splitlines()) == 8


def test_batch_size_changes_rounding_only(tmp_path, tiny_pipe):
    """Same seeds, same images; another batch size may move a few 8-bit values by one."""
    one = sample(config(tmp_path / "b1", batch_size=1), pipe=tiny_pipe)
    sample(config(tmp_path / "b3", batch_size=3), pipe=tiny_pipe)
    for file in one.files:
        a, b = pixels(tmp_path / "b1" / file), pixels(tmp_path / "b3" / file)
        assert np.abs(a - b).max() <= 2, file
        assert np.mean(a != b) < 0.01, file
        assert png_record(tmp_path / "b1" / file) == png_record(tmp_path / "b3" / file)
    # ...while different images really differ (the tolerance is not hiding everything).
    first, second = (pixels(tmp_path / "b1" / f) for f in one.files[:2])
    assert np.abs(first - second).mean() > 5


def test_changed_settings_are_refused(tmp_path, tiny_pipe):
    out = tmp_path / "s"
    sample(config(out, n=1), pipe=tiny_pipe)
    with pytest.raises(SpurcliError, match="was made with steps=2, not 3"):
        sample(config(out, n=1, steps=3), pipe=tiny_pipe)
    # Another scheduler is another image, too; the caller's pipeline keeps its scheduler.
    with pytest.raises(SpurcliError, match="scheduler='pndm', not 'ddim'"):
        sample(config(out, n=1, scheduler="ddim"), pipe=tiny_pipe)
    assert type(tiny_pipe.scheduler).__name__ == "PNDMScheduler"


def test_a_chosen_scheduler_never_clips_the_latents(tiny_pipe):
    """DDIM's and DDPM's `clip_sample` defaults to True, for pixels in [-1, 1]; on latents it
    greys every image (measured on flag-mini: effnet-lite2 read 0-2 of 24 of a run's samples
    against 13-14 with its own scheduler). The embedded models' config does not set
    it, and `load_pipeline` swaps the scheduler after diffusers' pipeline fixed its own."""
    import torch

    from spurcli.generate.pipelines import load_pipeline, make_scheduler

    for name in ("ddim", "ddpm"):
        scheduler = make_scheduler(name, tiny_pipe.scheduler.config)
        scheduler.set_timesteps(2)
        t = scheduler.timesteps[0]
        latents = torch.full((1, 4, 8, 8), 3.0)  # latents often lie beyond [-1, 1]
        step = scheduler.step(torch.zeros_like(latents), t, latents)
        assert float(step.pred_original_sample.max()) > 3.0, name  # x0 = x_t / sqrt(alpha_t)
    assert make_scheduler("euler", tiny_pipe.scheduler.config).config.get("clip_sample") is None
    assert load_pipeline("tiny", scheduler="ddim").scheduler.config.clip_sample is False


def test_a_folder_sampled_with_clipped_latents_is_not_continued(tmp_path, tiny_pipe):
    """Images made by DDIM before `make_scheduler` switched clip_sample off were greyed: a
    folder of them (its records without clip_sample) is not continued with unclipped ones."""
    out = tmp_path / "s"
    sample(config(out, n=1, scheduler="ddim"), pipe=tiny_pipe)
    lines = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert {r["clip_sample"] for r in lines} == {False}
    for record in lines:  # as a version before the fix wrote them
        record.pop("clip_sample")
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(SpurcliError, match="made with clip_sample=None, not False"):
        sample(config(out, n=2, scheduler="ddim"), pipe=tiny_pipe)
    sample(config(tmp_path / "p", n=1), pipe=tiny_pipe)  # PNDM has no such setting
    assert not any("clip_sample" in r for r in read_manifest(tmp_path / "p").values())


def test_finetune_run_supplies_the_identifier(tmp_path, tiny_pipe, caplog):
    from spurcli.generate.pipelines import resolve_model

    run = tmp_path / "run"  # what `spurcli finetune` leaves (a pipeline folder is all it takes
    (run / "pipeline").mkdir(parents=True)  # to be recognised; the loaded pipe stands in for it)
    (run / "pipeline" / "model_index.json").write_text("{}")
    (run / "spurcli-run.json").write_text(json.dumps({"identifier": "zwx"}))
    out = tmp_path / "s"
    cfg = SampleConfig(model=str(run), prompts=["a [V] flower", "a tulip"], n=1, out=out, steps=2)
    with caplog.at_level(logging.WARNING):
        result = sample(cfg, pipe=tiny_pipe, model_ref=resolve_model(run))
    assert result.identifier == "zwx"
    assert result.prompts == ["a zwx flower", "a tulip"]
    assert "'a tulip' has no [V]" in caplog.text
    record = read_manifest(out)["a-zwx-flower/000000.png"]
    assert record["model"] == str(run.resolve())
    assert (record["height"], record["width"]) == (64, 64)  # the model's native size


# --- bad input: one line each -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--scheduler", "fast"], 2, "unknown scheduler 'fast'; choose from ddim"),
        (["-n", "0"], 2, "-n must be a positive number"),
        (["--height", "30"], 2, "multiple of 8"),
        (["-p", "a [V] flower"], 2, "not a spurcli finetune run"),
    ],
)
def test_bad_options(cli_main, tmp_path, args, code, message):
    got, _, err = cli_main("sample", "tiny", "-p", "x", "-o", str(tmp_path), *args)
    assert got == code
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_model_and_output(cli_main, tmp_path):
    code, _, err = cli_main("sample", str(tmp_path), "-p", "x")
    assert code == 1 and "not a diffusers pipeline folder" in err
    assert len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cli_main("sample", "tiny", "-p", "x", "--out", str(blocker))
    assert code == 2 and f"the output folder {blocker} is a file" in err
    code, _, err = cli_main("sample", "tiny", "--out", str(tmp_path / "o"))
    assert code == 2 and "no prompt" in err
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing\n\n")
    code, _, err = cli_main("sample", "tiny", "--prompts-file", str(empty), "-o", str(tmp_path))
    assert code == 1 and "holds no prompt" in err


def test_existing_foreign_png_is_refused(tmp_path, tiny_pipe):
    out = tmp_path / "s"
    (out / slugify(PROMPTS[0])).mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(out / slugify(PROMPTS[0]) / "000000.png")
    with pytest.raises(SpurcliError, match="not a spurcli sample folder"):  # the folder guard
        sample(config(out, n=1), pipe=tiny_pipe)
    (out / "manifest.jsonl").write_text("")  # a sample folder, but the PNG is not one of ours
    with pytest.raises(SpurcliError, match="is not a spurcli sample"):
        sample(config(out, n=1), pipe=tiny_pipe)


# --- two processes --------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_write_the_same_files_as_one(tmp_path):
    """torchrun with 2 CPU processes == 1 process (both with one thread each: thread count is
    part of floating-point reproducibility on CPU, and torchrun sets OMP_NUM_THREADS=1)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["-q", "sample", "tiny", "-p", PROMPTS[0], "-p", PROMPTS[1], "-n", "3", "--steps", "2"]
    args += ["-b", "2", "--height", "32", "--width", "32", "--device", "cpu"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    runs = {
        "one": [sys.executable, "-m", "spurcli"],
        "two": [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "spurcli"],
    }
    for name, launcher in runs.items():
        cmd = [*launcher, *args, "--out", str(tmp_path / name), "--json"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)  # printed once, by rank 0
        assert (summary["generated"], summary["skipped"]) == (6, 0)
    assert files(tmp_path / "one") == files(tmp_path / "two") != []
    for file in [*files(tmp_path / "one"), MANIFEST]:
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()


# --- seeds per prompt ---------------------------------------------------------------------------


def test_image_i_of_different_prompts_starts_from_different_noise(tmp_path, tiny_pipe):
    out = tmp_path / "s"
    sample(config(out, n=2), pipe=tiny_pipe)
    records = read_manifest(out).values()
    seeds = [r["seed"] for r in records]
    assert len(seeds) == 4 and len(set(seeds)) == 4  # 2 prompts x 2 images, all independent
    for r in records:
        assert r["seed"] == derive_seed(0, r["prompt"], r["index"])  # no [V]: the prompt itself
        assert r["seed_scheme"] == SEED_SCHEME


def test_a_tuned_prompt_and_its_baseline_without_identifier_share_seeds(tmp_path, tiny_pipe):
    """How `spurcli run` pairs the arms (same prompts, [V] in each) and the baseline (the same
    prompts without [V]): image i of "a photo of [V] flower" and of "a photo of flower", and of
    their recontextualised prompts, start from the same noise."""
    templates = ["a photo of [V] flower", "a [V] feeder"]
    arms = {}
    for name, identifier in (("sfsl", "sks"), ("dreambooth", "sks"), ("other-token", "zwx")):
        cfg = config(tmp_path / name, prompts=templates, identifier=identifier, recontext=True)
        arms[name] = sample(cfg, pipe=tiny_pipe)
    base_prompts = [without_identifier(p) for p in templates]
    baseline = sample(
        config(tmp_path / "base", prompts=base_prompts, recontext=True), pipe=tiny_pipe
    )

    def seeds(result) -> list[int]:
        records = read_manifest(result.out)
        return [records[f]["seed"] for f in result.files]

    assert len(baseline.files) == 2 * 5 * 3 and len(set(seeds(baseline))) == len(baseline.files)
    for result in arms.values():
        assert seeds(result) == seeds(baseline)
    # The seed is (seed, prompt without [V], index): what `spurcli compare` pairs by.
    record = read_manifest(arms["sfsl"].out)["a-photo-of-sks-flower/000001.png"]
    assert record["seed"] == derive_seed(0, "a photo of flower", 1)


def test_a_folder_seeded_by_the_old_scheme_is_not_continued(tmp_path, tiny_pipe):
    out = tmp_path / "s"
    sample(config(out, n=1), pipe=tiny_pipe)
    lines = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    for record in lines:  # as a version before per-prompt seeds wrote it
        record.pop("seed_scheme")
        record["seed"] = derive_seed(0, record["index"])
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(SpurcliError, match=r"seeded by \(seed,index\), not") as info:
        sample(config(out, n=2), pipe=tiny_pipe)
    assert "\n" not in str(info.value) and "new --out folder" in str(info.value)
    assert len(files(out)) == 2  # nothing was added
