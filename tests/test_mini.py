"""The embedded `mini` model: loads by name, its VAE works, SFSL's gradient reaches the UNet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spurcli.generate.finetune import finetune
from spurcli.generate.mini import (
    FLAG_MINI,
    FLAG_MINI_128,
    MINI,
    WEIGHTS_DIR,
    compare_rebuild,
    recipe,
)
from spurcli.generate.pipelines import load_pipeline, resolve_model
from tests._finetune_helpers import fast_config, make_refs


@pytest.fixture(scope="module")
def mini():
    return load_pipeline("mini")


def photo_batch(size: int) -> torch.Tensor:
    """Three CC0 photo crops in [-1, 1]: coffee, chelsea, brick."""
    import skimage.data
    from PIL import Image

    crops = []
    for name in ("coffee", "chelsea", "brick"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        side = min(image.size) // 2
        crop = image.crop((0, 0, side, side)).resize((size, size), Image.LANCZOS)
        crops.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
    return torch.stack(crops).float() / 127.5 - 1


def test_mini_resolves_by_name_and_records_its_recipe():
    ref = resolve_model("mini")
    assert (ref.kind, ref.location) == ("mini", "mini")
    info = recipe()
    assert info["unet_held_out"] == ["brick"]
    for name in ("vae", "unet"):  # the committed files are the ones the recipe hashes
        from spurcli.images import sha256_file

        assert sha256_file(WEIGHTS_DIR / info[name]["file"]) == info[name]["sha256"]
    assert json.loads((WEIGHTS_DIR / "mini.json").read_text())["versions"]["torch"]


@pytest.mark.parametrize("name", [MINI, FLAG_MINI, FLAG_MINI_128])
def test_compare_rebuild_says_which_part_differs(name, capsys):
    committed = recipe(name)
    assert compare_rebuild(name, committed)
    changed = {**committed, "unet": {**committed["unet"], "sha256": "0" * 64}}
    assert not compare_rebuild(name, changed)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"vae: identical ({committed['vae']['sha256'][:16]})",
                         f"unet: identical ({committed['unet']['sha256'][:16]})"]  # fmt: skip
    assert lines[2:] == [f"vae: identical ({committed['vae']['sha256'][:16]})",
                         f"unet: DIFFERENT ({'0' * 16})"]  # fmt: skip


def test_mini_autoencoder_reconstructs_photos_and_tiny_does_not(mini):
    x = photo_batch(128)
    errors = {}
    for name, pipe in (("mini", mini), ("tiny", load_pipeline("tiny"))):
        with torch.no_grad():
            recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        errors[name] = float((recon - x).abs().mean())
    assert errors["mini"] < 0.25, errors  # mean absolute error in [-1, 1] units (0.18 measured)
    assert errors["tiny"] > 2 * errors["mini"], errors


def test_mini_generates_at_its_native_size(mini):
    image = mini("a photo of grass", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (128, 128, 3)
    assert np.isfinite(image).all() and image.std() > 0.01


def test_sfsl_gradient_reaches_the_unet_through_the_mini_decoder(mini):
    from spurcli.generate.losses import SFSL, sfsl_loss

    torch.manual_seed(0)
    extractor = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.Flatten(), torch.nn.LazyLinear(16)
    )
    extractor(torch.zeros(1, 3, 128, 128))
    x0 = torch.randn(2, 4, 16, 16, requires_grad=True)
    sfsl = SFSL(extractor.requires_grad_(False), torch.randn(2, 16), weight=1.0)
    loss = sfsl_loss(sfsl, mini.vae, x0, torch.tensor([10, 900]), torch.tensor([0, 1]))
    (grad,) = torch.autograd.grad(loss, x0)
    assert float(grad.abs().sum()) > 0


def test_a_short_finetune_of_mini_runs_and_loads(tmp_path):
    refs = make_refs(tmp_path / "refs", n=2)
    cfg = fast_config(refs, tmp_path / "run", model="mini", resolution=64, steps=2,
                      checkpoint_every=0, num_class_images=1)  # fmt: skip
    out = finetune(cfg)
    pipe = load_pipeline(out)
    assert pipe.unet.config.sample_size == 16
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[-1]["loss_sfsl"] > 0
