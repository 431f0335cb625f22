"""`spurcli finetune` at scale, on the tiny Stable Diffusion: LoRA, taesd for SFSL, trackers, and
per-term gradient norms (see docs/finetune-scale.md).

A LoRA run saves diffusers' LoRA format that plain diffusers loads; its checkpoints hold only the
adapters and resume bit-identically; `sample` takes a LoRA run. Gradient-norm logging leaves the
update bit-identical; TensorBoard's event file is read back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from _finetune_helpers import fast_config, make_refs, same_weights, weights
from safetensors.torch import load_file

from spurcli.errors import SpurcliError, UsageError
from spurcli.generate.finetune import finetune
from spurcli.generate.pipelines import build_tiny_pipeline, load_pipeline, load_taesd, resolve_model
from spurcli.generate.training import Interrupted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Path:
    return make_refs(tmp_path_factory.mktemp("refs"))


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("class-images")


def lora_config(refs: Path, out: Path, class_dir: Path, **changes):
    return fast_config(refs, out, class_dir=class_dir, **{"lora_rank": 4, "lr": 1e-2, **changes})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, refs, class_dir) -> Path:
    """4 LoRA steps (UNet + text encoder) with SFSL and prior, grad norms every 2 steps."""
    out = tmp_path_factory.mktemp("runs") / "lora"
    return finetune(lora_config(refs, out, class_dir, log_grad_norms_every=2))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _lora_tensors(run: Path) -> dict:
    return load_file(run / "lora" / "pytorch_lora_weights.safetensors")


def _image(pipe, seed: int = 0):
    out = pipe(
        "a photo of sks flower",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )
    return torch.from_numpy(out.images[0])


# ------------------------------------------------------------------------------------------------
# LoRA


def test_lora_run_saves_adapters_in_diffusers_format(lora_run):
    run = json.loads((lora_run / "spurcli-run.json").read_text())
    assert run["status"] == "finished" and run["steps_done"] == 4
    card = run["lora"]
    assert card["rank"] == 4 and card["alpha"] == 4 and card["base_model"] == "tiny"
    assert card["weights"] == "lora/pytorch_lora_weights.safetensors"
    assert "to_q" in card["unet_targets"] and "q_proj" in card["text_encoder_targets"]
    assert not (lora_run / "pipeline").exists()  # the adapters, not a full pipeline
    tensors = _lora_tensors(lora_run)
    assert any(k.startswith("unet.") for k in tensors)
    assert any(k.startswith("text_encoder.") for k in tensors)
    assert all("lora" in k for k in tensors)
    assert all(v.dtype == torch.float32 for v in tensors.values())


def test_plain_diffusers_loads_the_adapters(lora_run):
    """A diffusers user: the base pipeline + load_lora_weights; spurcli's loader agrees."""
    pipe = build_tiny_pipeline()  # the base model, as a user would load it from the hub
    base_image = _image(pipe)
    pipe.load_lora_weights(lora_run / "lora")
    tuned_image = _image(pipe)
    assert not torch.allclose(tuned_image, base_image, atol=1e-3)  # the adapters were trained
    ref = resolve_model(lora_run)
    assert ref.kind == "run" and ref.identifier == "sks"
    fused = load_pipeline(lora_run)  # spurcli: base + adapters fused
    torch.testing.assert_close(_image(fused), tuned_image, atol=1e-4, rtol=0)
    base = build_tiny_pipeline()  # the fused text encoder changed too (its adapters trained)
    changed = fused.text_encoder.state_dict()
    assert any(not torch.equal(v, changed[k]) for k, v in base.text_encoder.state_dict().items())


def test_sample_accepts_a_lora_run(lora_run, tmp_path):
    from spurcli.generate.sample import SampleConfig, sample

    config = SampleConfig(
        model=str(lora_run),
        prompts=["a [V] flower"],
        n=1,
        out=tmp_path / "s",
        steps=2,
        height=32,
        width=32,
    )
    result = sample(config)
    manifest = [json.loads(x) for x in (tmp_path / "s" / "manifest.jsonl").read_text().splitlines()]
    assert manifest[0]["prompt"] == "a sks flower"  # the run's identifier
    assert manifest[0]["model"] == str(lora_run.resolve())
    assert result is not None


def test_lora_checkpoint_holds_only_adapters(lora_run):
    checkpoint = lora_run / "checkpoints" / "step-4"
    unet = load_file(checkpoint / "unet.safetensors")
    assert unet and all("lora_" in k for k in unet)
    n_unet = sum(p.numel() for p in build_tiny_pipeline().unet.parameters())
    assert sum(v.numel() for v in unet.values()) < n_unet / 5
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    n_state = sum(s["exp_avg"].numel() for s in optimizer["state"].values())
    te = load_file(checkpoint / "text_encoder.safetensors")
    assert n_state == sum(v.numel() for v in [*unet.values(), *te.values()])


def test_lora_interrupted_and_resumed_equals_uninterrupted(lora_run, refs, class_dir, tmp_path):
    out = tmp_path / "run"
    cfg = lora_config(refs, out, class_dir, log_grad_norms_every=2, checkpoint_every=0)

    def stop_at_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        finetune(cfg, on_step=stop_at_3)
    finetune(dataclasses.replace(cfg, resume="latest"))
    a, b = _lora_tensors(out), _lora_tensors(lora_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert _log(out) == _log(lora_run)


def test_lora_options_checkpointing_bf16_frozen_text_encoder(refs, class_dir, tmp_path):
    """LoRA on the UNet only, custom targets, dropout, bf16 autocast, gradient checkpointing."""
    cfg = lora_config(
        refs,
        tmp_path / "a",
        class_dir,
        steps=2,
        train_text_encoder=False,
        lora_targets=["to_q", "to_v"],
        lora_alpha=8,
        lora_dropout=0.1,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        log_grad_norms_every=1,
    )
    out = finetune(cfg)
    tensors = _lora_tensors(out)
    assert tensors and all(k.startswith("unet.") for k in tensors)
    assert {k.split(".")[-4] for k in tensors} == {"to_q", "to_v"}
    assert all(math.isfinite(line["grad_norm_instance"]) for line in _log(out))
    run = json.loads((out / "spurcli-run.json").read_text())
    assert run["lora"]["alpha"] == 8 and run["lora"]["text_encoder_targets"] == []
    load_pipeline(out)  # UNet-only adapters load too


def test_lora_bad_targets_are_one_line(refs, class_dir, tmp_path):
    cfg = lora_config(refs, tmp_path / "a", class_dir, lora_targets=["no_such_module"])
    with pytest.raises(UsageError, match="--lora-targets"):
        finetune(cfg)
    with pytest.raises(UsageError, match="--lora-rank must not be negative"):
        lora_config(refs, tmp_path / "b", class_dir, lora_rank=-1).check()


# ------------------------------------------------------------------------------------------------
# per-term gradient norms


def test_grad_norms_logged_every_n_steps(lora_run):
    lines = _log(lora_run)
    keys = {"grad_norm_instance", "grad_norm_prior", "grad_norm_sfsl", "grad_norm"}
    assert [sorted(keys & line.keys()) for line in lines] == [[], sorted(keys), [], sorted(keys)]
    for line in lines[1::2]:
        assert all(math.isfinite(line[k]) and line[k] > 0 for k in keys)


def test_grad_norms_leave_the_update_bit_identical(refs, class_dir, tmp_path):
    """Full fine-tuning with norms on every step vs off: same weights, same losses; and with
    --sfsl-weight 0 the SFSL norm is 0."""
    runs = {}
    for every in (0, 1):
        cfg = fast_config(refs, tmp_path / f"n{every}", class_dir=class_dir, steps=2)
        runs[every] = finetune(dataclasses.replace(cfg, log_grad_norms_every=every))
    assert same_weights(weights(runs[0]), weights(runs[1]))
    strip = [{k: v for k, v in line.items() if not k.startswith("grad")} for line in _log(runs[1])]
    assert strip == _log(runs[0])
    assert _log(runs[1])[0]["grad_norm_sfsl"] > 0
    cfg = fast_config(refs, tmp_path / "off", class_dir=class_dir, steps=1, sfsl_weight=0)
    line = _log(finetune(dataclasses.replace(cfg, log_grad_norms_every=1)))[0]
    assert line["grad_norm_sfsl"] == 0 and line["grad_norm_instance"] > 0


def test_term_grad_norms_against_backward():
    """`term_grad_norms` = the norm of each term's own gradient, taken alone."""
    from spurcli.generate.losses import term_grad_norms

    torch.manual_seed(0)
    w = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    x = torch.randn(7, 5)
    out = x @ w[0] + w[1]
    terms = {"instance": out.pow(2).mean(), "sfsl": 0.3 * out.sin().sum()}
    got = term_grad_norms(terms, w, ("instance", "prior", "sfsl"), scale=1024.0)
    want = []
    for name in ("instance", "sfsl"):
        grads = torch.autograd.grad(terms[name], w, retain_graph=True)
        want.append(torch.cat([g.flatten() for g in grads]).norm())
    torch.testing.assert_close(got, torch.stack([want[0], torch.tensor(0.0), want[1]]))
    assert all(p.grad is None for p in w)  # .grad untouched


# ------------------------------------------------------------------------------------------------
# taesd for SFSL


def test_taesd_decoder_for_sfsl(refs, class_dir, tmp_path):
    vae_run = fast_config(refs, tmp_path / "vae", class_dir=class_dir, steps=1)
    taesd_run = dataclasses.replace(
        vae_run, output_dir=tmp_path / "taesd", sfsl_decoder="taesd", sfsl_taesd="random"
    )
    a, b = _log(finetune(vae_run))[0], _log(finetune(taesd_run))[0]
    assert b["loss_sfsl"] > 0 and b["loss_sfsl"] != a["loss_sfsl"]  # another decoder
    assert b["loss_instance"] == a["loss_instance"]  # the rest of the step is the same
    run = json.loads((tmp_path / "taesd" / "spurcli-run.json").read_text())
    assert run["config"]["sfsl_decoder"] == "taesd"


def test_load_taesd_from_a_folder_and_offline_hub(tmp_path):
    vae = build_tiny_pipeline().vae
    model = load_taesd("random", vae)
    assert model.config.latent_channels == 4 and model.config.decoder_block_out_channels[0] == 8
    model.save_pretrained(tmp_path / "taesd")
    again = load_taesd(str(tmp_path / "taesd"))
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    latents = torch.randn(1, 4, 4, 4)
    assert again.decode(latents).sample.shape == (1, 3, 32, 32)
    with pytest.raises(SpurcliError, match="not available offline"):
        load_taesd("madebyollin/no-such-taesd")
    with pytest.raises(SpurcliError, match="cannot load taesd"):
        load_taesd(str(tmp_path))  # a folder without a model


# ------------------------------------------------------------------------------------------------
# trackers


def test_tensorboard_event_file_has_losses_norms_and_images(refs, class_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = fast_config(
        refs,
        tmp_path / "tb",
        class_dir=class_dir,
        steps=2,
        report_to="tensorboard",
        log_grad_norms_every=2,
        validate_every=2,
    )
    out = finetune(cfg)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for key in ("loss", "loss_instance", "loss_prior", "loss_sfsl", "lr", "grad_norm_sfsl"):
        assert key in tags["scalars"], key
    losses = [e.value for e in events.Scalars("loss")]
    assert losses == pytest.approx([line["loss"] for line in _log(out)], rel=1e-6)
    assert [e.step for e in events.Scalars("grad_norm_prior")] == [2]
    assert "validation/00" in tags["images"]
    image = events.Images("validation/00")[0]
    assert (image.width, image.height, image.step) == (32, 32, 2)


# ------------------------------------------------------------------------------------------------
# several processes


@pytest.mark.slow
def test_lora_with_two_processes_and_grad_norms(refs, tmp_path):
    """LoRA under torchrun (2 CPU processes, gloo), gradient norms on every step: the adapters
    load in plain diffusers, and the run is the same objective as 1 process with the whole batch
    (as for full fine-tuning in test_finetune.py)."""
    import subprocess
    import sys

    from _finetune_helpers import SUBPROCESS_ENV, config_args

    out = tmp_path / "run"
    cfg = fast_config(
        refs,
        out,
        steps=2,
        lora_rank=4,
        lr=1e-2,
        checkpoint_every=1,
        num_class_images=3,
        log_grad_norms_every=1,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "spurcli",
        "-q",
        "finetune",
        *config_args(cfg),
    ]
    done = subprocess.run(command, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "spurcli-run.json").read_text())
    assert run["world_size"] == 2 and run["steps_done"] == 2 and run["lora"]["rank"] == 4
    assert not (out / "pipeline").exists()
    checkpoint = out / "checkpoints" / "step-2"
    assert {p.name for p in checkpoint.glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert all("lora_" in k for k in load_file(checkpoint / "unet.safetensors"))
    two = _lora_tensors(out)
    assert any(k.startswith("text_encoder.") for k in two)
    pipe = build_tiny_pipeline()  # a plain diffusers user loads the adapters
    base_image = _image(pipe)
    pipe.load_lora_weights(out / "lora")
    assert not torch.allclose(_image(pipe), base_image, atol=1e-3)
    # One process with batch 2 (global samples 0 and 1 = rank 0's and rank 1's): the same losses,
    # per-term and whole gradient norms (each averaged over the processes first, as DDP does),
    # and adapters, up to summation order.
    one = finetune(
        dataclasses.replace(
            cfg,
            output_dir=tmp_path / "one",
            batch_size=2,
            class_dir=out / "class-images",
            checkpoint_every=0,
        )
    )
    norm_keys = {"grad_norm_instance", "grad_norm_prior", "grad_norm_sfsl", "grad_norm"}
    for got, want in zip(_log(one), _log(out), strict=True):
        assert norm_keys <= want.keys()
        assert got == pytest.approx(want, rel=1e-4)
    b1 = finetune(
        dataclasses.replace(
            cfg, output_dir=tmp_path / "b1", class_dir=out / "class-images", checkpoint_every=0
        )
    )

    def flat(run: Path) -> torch.Tensor:
        return torch.cat([t.flatten() for _, t in sorted(_lora_tensors(run).items())])

    diff_same = (flat(out) - flat(one)).abs().mean()  # ~3e-8
    diff_other = (flat(out) - flat(b1)).abs().mean()  # ~8e-3: another batch composition
    assert diff_same < 1e-6 < 1e-4 < diff_other, (diff_same, diff_other)
