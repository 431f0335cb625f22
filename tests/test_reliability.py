"""Nothing stale, nothing lost, nothing overwritten: the guarantees of docs/reliability.md, by class.

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
    from spurcli.train import finetune

    out = tmp_path / "run"
    with pytest.raises(SpurcliError, match="non-finite in the update of step 1") as info:
        finetune(dreambooth(refs, out, steps=1, lr=1e38, max_grad_norm=0))
    assert "last good checkpoint: none" in str(info.value)
    assert not (out / "pipeline").exists() and not (out / "checkpoints").exists()


def test_weights_poisoned_by_an_update_name_only_a_finite_checkpoint(refs, tmp_path, monkeypatch):
    # An update that writes NaN while the loss before it is finite: the old guard (the loss
    # only) saved it as a checkpoint and named it "last good".
    from spurcli import train

    real = train._optimizer

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

    monkeypatch.setattr(train, "_optimizer", poisoning)
    out = tmp_path / "run"
    with pytest.raises(SpurcliError, match="update of step 3") as info:
        train.finetune(dreambooth(refs, out, steps=4, checkpoint_every=1, keep_checkpoints=0))
    assert str(out / "checkpoints" / "step-2") in str(info.value)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    log = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2]


def test_last_good_checkpoint_skips_one_with_nan_weights(tmp_path):
    from safetensors.torch import save_file

    from spurcli.checkpoints import last_good_checkpoint

    for step, value in ((1, 1.0), (2, float("nan"))):
        folder = tmp_path / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}")
        save_file({"w": torch.full((3,), value)}, folder / "unet.safetensors")
    assert last_good_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"


def test_sample_refuses_a_model_with_nan_weights(spurcli, tmp_path):
    from spurcli.diffusion import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    with torch.no_grad():
        next(pipe.unet.parameters()).view(-1)[0] = float("nan")
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    code, _, err = spurcli("sample", tmp_path / "model", "-p", "x", "--out", tmp_path / "s")
    assert code == 1 and len(err) == 1, err
    assert "UNet weights contain NaN" in err[0]
    assert not list((tmp_path / "s").rglob("*.png"))  # no black images
