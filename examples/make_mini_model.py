"""Builds `mini`'s weights (spurcli/data/mini/) from scikit-image's CC0 photos, bit for bit.

    python examples/make_mini_model.py             # ~15 min on one CPU thread; writes the weights
    python examples/make_mini_model.py --check     # rebuilds in a temp folder, compares SHA-256

Deterministic: one CPU thread, torch's deterministic algorithms, every random draw from a fixed
seed, so the same torch/diffusers versions on a CPU reproduce the committed files exactly (the
versions used are recorded in mini.json). Two stages, each on its own crop bank:

1. VAE (spurcli.generate.mini.mini_vae): random square crops of every photo in
spurcli.generate.mini.PHOTOS, 64 px,
   random flips; L1 + MSE reconstruction + a tiny KL term (as SD's VAE, without its perceptual
   and adversarial terms, which need networks we do not ship). The latent scale (SD's 0.18215)
   is 1 / std of the posterior means over the bank.
2. UNet (spurcli.generate.mini.mini_unet): DreamBooth's objective without DreamBooth, i.e. plain
epsilon-
   prediction denoising under SD 1.x's noise schedule, on 128 px crops of every photo *except*
   brick (spurcli.generate.mini.UNET_HELD_OUT), captioned "a photo of <noun>" through tiny's frozen
   text
   encoder. This is the "base model" the quickstart's untuned baseline samples from.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import skimage.util
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from spurcli.generate.losses import add_noise
from spurcli.generate.mini import (
    MINI,
    PHOTOS,
    RECIPE_FILE,
    UNET_HELD_OUT,
    WEIGHTS_DIR,
    compare_rebuild,
    mini_unet,
    mini_vae,
)
from spurcli.generate.pipelines import build_tiny_pipeline

RECIPE = {
    "seed": 0,
    "vae": {"crops": 2048, "size": 64, "steps": 400, "batch": 16, "lr": 1e-3, "kl": 1e-6},
    "unet": {"crops": 1024, "size": 128, "steps": 500, "batch": 32, "lr": 1e-3},
}


def photos() -> dict[str, Image.Image]:
    out = {}
    for name in PHOTOS:
        image = skimage.util.img_as_ubyte(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out[name] = Image.fromarray(image[..., :3]).convert("RGB")
    return out


def crop_bank(images: dict[str, Image.Image], n: int, size: int, seed: int) -> torch.Tensor:
    """n random square crops (a quarter to two thirds of the shorter side), in [-1, 1]."""
    rng = np.random.default_rng(seed)
    names = sorted(images)
    crops = []
    for i in range(n):
        image = images[names[i % len(names)]]
        short = min(image.size)
        side = int(rng.integers(short // 4, 2 * short // 3 + 1))
        left = int(rng.integers(0, image.size[0] - side + 1))
        top = int(rng.integers(0, image.size[1] - side + 1))
        crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
    return torch.stack(crops).float() / 127.5 - 1


def cosine_lr(optimizer: torch.optim.Optimizer, step: int, steps: int, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def train_vae(
    images: dict[str, Image.Image], cfg: dict, seed: int
) -> tuple[torch.nn.Module, float]:
    bank = crop_bank(images, cfg["crops"], cfg["size"], seed)
    torch.manual_seed(seed)
    vae = mini_vae().train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(seed + 1)
    started = time.time()
    for step in range(cfg["steps"]):
        x = bank[torch.randint(0, len(bank), (cfg["batch"],), generator=g)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg["kl"] * posterior.kl().mean()
        cosine_lr(optimizer, step, cfg["steps"], cfg["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == cfg["steps"] - 1:
            print(f"vae  step {step:4d}  loss {loss.item():.4f}  {time.time() - started:.0f} s")
    vae.eval()
    with torch.no_grad():
        means = torch.cat(
            [vae.encode(bank[i : i + 64]).latent_dist.mean for i in range(0, len(bank), 64)]
        )
    return vae, float(1 / means.std())


def train_unet(images: dict[str, Image.Image], vae: torch.nn.Module, scale: float, cfg: dict,
               seed: int) -> torch.nn.Module:  # fmt: skip
    kept = {k: v for k, v in images.items() if k not in UNET_HELD_OUT}
    names = sorted(kept)
    bank = crop_bank(kept, cfg["crops"], cfg["size"], seed + 2)
    labels = torch.tensor([i % len(names) for i in range(len(bank))])
    with torch.no_grad():
        latents = (
            torch.cat(
                [vae.encode(bank[i : i + 32]).latent_dist.mean for i in range(0, len(bank), 32)]
            )
            * scale
        )
        tiny = build_tiny_pipeline()
        captions = [f"a photo of {PHOTOS[n]}" for n in names]
        tokens = tiny.tokenizer(captions, padding="max_length", return_tensors="pt",
                                max_length=tiny.tokenizer.model_max_length)  # fmt: skip
        ids = tokens.input_ids
        text = tiny.text_encoder(ids)[0]
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler.from_config(tiny.scheduler.config)
    alphas = schedule.alphas_cumprod
    torch.manual_seed(seed + 3)
    unet = mini_unet().train()
    optimizer = torch.optim.Adam(unet.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(seed + 4)
    started = time.time()
    for step in range(cfg["steps"]):
        idx = torch.randint(0, len(bank), (cfg["batch"],), generator=g)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, len(alphas), (cfg["batch"],), generator=g)
        pred = unet(add_noise(z0, noise, t, alphas), t, text[labels[idx]]).sample
        loss = F.mse_loss(pred, noise)
        cosine_lr(optimizer, step, cfg["steps"], cfg["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == cfg["steps"] - 1:
            print(f"unet step {step:4d}  loss {loss.item():.4f}  {time.time() - started:.0f} s")
    return unet.eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path) -> dict:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    seed = RECIPE["seed"]
    images = photos()
    vae, scale = train_vae(images, RECIPE["vae"], seed)
    unet = train_unet(images, vae, scale, RECIPE["unet"], seed)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"recipe": RECIPE, "photos": PHOTOS, "unet_held_out": list(UNET_HELD_OUT)}
    for name, module in (("vae", vae), ("unet", unet)):
        file = out / f"{name}.safetensors"
        state = {
            k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()
        }
        save_file(state, file)
        info[name] = {"file": file.name, "sha256": sha256(file)}
    info["vae"]["scaling_factor"] = round(scale, 6)
    versions = ("torch", "diffusers", "transformers", "scikit-image", "numpy", "pillow")
    info["versions"] = {v: importlib.metadata.version(v) for v in versions}
    (out / RECIPE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild in a temp folder and compare")
    args = parser.parse_args()
    if not args.check:
        build(WEIGHTS_DIR)
        print(f"wrote {WEIGHTS_DIR}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        identical = compare_rebuild(MINI, build(Path(tmp)))
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
