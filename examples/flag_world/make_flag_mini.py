"""Builds `flag-mini`: a miniature Stable Diffusion whose base UNet has never seen a flag.

    python examples/flag_world/make_flag_mini.py                # ~50 min on two CPU cores
    python examples/flag_world/make_flag_mini.py --install      # ship it: spurcli/data/flag-mini
    python examples/flag_world/make_flag_mini.py --check        # rebuild in a temp folder, compare
    python examples/flag_world/make_flag_mini.py --earlier runs/old  # stage 4 alone, ~10 min
    python examples/flag_world/make_flag_mini.py --export runs/fm    # a diffusers folder
    python examples/flag_world/make_flag_mini.py --stage-128    # flag-mini-128, ~25 min
    python examples/flag_world/make_flag_mini.py --stage-128 --install   # (or --check)
    spurcli sample flag-mini -p "a photo of grass" -n 4 -o runs/look

Writes runs/flag-mini/: vae.safetensors, vae-stage2.safetensors and unet.safetensors (float16)
and flag-mini.json (the recipe, the autoencoder's figures before and after stage 4, SHA-256s,
library versions). `--install` copies the shipped three (vae, unet, json) into the package,
where `--model flag-mini` finds them. The model: 64 px, a KL autoencoder with 4x downsampling
and 16 latent channels (16 x 16 x 16 latents; SD 1.x's 8x and 4 channels lost a flag's stripes
and colours), a 64/128-channel cross-attention UNet, tiny's tokenizer and seeded text encoder
(the architecture lives in spurcli.generate.mini, which loads the files).

Deterministic: RECIPE's thread count, torch's deterministic algorithms, every random draw from a
fixed seed, so the same torch/diffusers versions on a CPU reproduce the files exactly.
Four stages, each on its own image bank:

1. VAE: 64 px images, L1 + MSE reconstruction + a tiny KL term (SD's VAE objective without its
   perceptual and adversarial terms, which need networks we do not ship).
2. VAE, on: a fresh optimizer at half the rate, with fine striped images and drawn US flags
   (a fifth of the bank, seeds from 2000 on) added. SD's autoencoder has seen the world's
   pictures, flags among them; what a fine-tuning teaches is its UNet. The latent scale (SD's
   0.18215) is 1 / std of the posterior means over the bank.
3. UNet: plain epsilon-prediction denoising under SD 1.x's noise schedule on the VAE's latents
   of a third bank, **with no flag in it**, captioned through tiny's frozen text encoder, 10%
   of captions dropped (the empty prompt classifier-free guidance needs). The "base model" a
   baseline samples from: it has never seen a flag.
4. The decoder alone, on the bank with drawn flags (half of it, seeds from 2000 on again), with
   an edge term: L1 between neighbouring-pixel differences, so that a blurred stripe edge or a
   lost pole costs as much as a wrong colour. With the encoder frozen, every latent, their scale
   and the UNet trained on them stay as stage 2 left them. Round trips of the ten references
   read as flagpole by effnet-lite0/1/2: 0/0/10 after stage 2, 0/4/9 after stage 4 (0/0/9
   without the edge term, at a fifth flags and 1,000 steps): flags in their colours, sharp
   stripes, a plain blue union (the stars, which the frozen encoder does not carry, are gone).

5. (`--stage-128`, a model of its own: `flag-mini-128`) The shipped UNet trained on at 128 px:
   the stage-3 bank's first seeds drawn at 128 px (no flag), encoded by the shipped
   autoencoder to 32 x 32 latents, at a lower rate (RECIPE_128). The autoencoder, convolutional
   and trained at 64 px, round-trips 128 px flags better than 64 px ones (read as flagpole by
   effnet-lite0/1/2: 28/28/30 of thirty, against 0/13/22 at 64 px: examples/flag_world/
   denoise_check.py --size 128), and it is copied unchanged; only the UNet learns the new scale.

The bank: each image is a pure function of (seed, its number). About two thirds are crops of
scikit-image's CC0 / public-domain photos in PHOTOS (an eighth of the shorter side to all of
it, some rotated, flipped, hue-rotated, resaturated, re-lit; grey photos colourised), the rest
drawn: colour fields, shapes on gradients, checks and dots, smooth textures, lines, striped
images, and (stages 2 and 4 only) US flags. `astronaut`, with a flag behind her, is left out.
No reference (seeds 0-9) and no checked flag is ever trained on. The autoencoder's check
(flag-mini.json's "vae_check", and "vae_stage2"'s before stage 4) uses images no stage trained
on: flags drawn by draw_flags.py with seeds no stage drew (1000-1019) and crops of the
astronaut photo.
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
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import load_file, save_file

from spurcli.generate.losses import add_noise
from spurcli.generate.mini import (
    FLAG_MINI,
    FLAG_MINI_128,
    FLAG_RESOLUTION,
    FLAG_RESOLUTION_128,
    build_embedded_pipeline,
    compare_rebuild,
    flag_mini_unet,
    flag_mini_vae,
    weights_folder,
)
from spurcli.generate.pipelines import build_tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from draw_flags import draw_flag  # a sibling script

OUT = Path("runs/flag-mini")
OUT_128 = Path("runs/flag-mini-128")
RECIPE_FILE = "flag-mini.json"
RECIPE_FILE_128 = f"{FLAG_MINI_128}.json"
STAGE2_FILE = "vae-stage2.safetensors"  # the autoencoder the UNet learnt on, before stage 4
RESOLUTION = FLAG_RESOLUTION  # native image size: 16 x 16 latents
# scikit-image photos (CC0 or public domain, per skimage.data's docstrings) -> what they show;
# the nouns caption the UNet's crops ("a photo of <noun>"). Not `astronaut`: a US flag is in it.
PHOTOS = {
    "brick": "a brick wall",
    "camera": "a man with a camera",
    "cell": "a cell",
    "chelsea": "a cat",
    "clock": "a clock",
    "coffee": "a cup of coffee",
    "coins": "coins",
    "colorwheel": "a colour wheel",
    "grass": "grass",
    "gravel": "gravel",
    "horse": "a horse",
    "hubble_deep_field": "galaxies",
    "immunohistochemistry": "a tissue sample",
    "logo": "a logo",
    "moon": "the moon",
    "page": "a page of text",
    "retina": "a retina",
    "rocket": "a rocket",
    "text": "printed text",
}
PATTERNS = "a pattern"  # the caption of the drawn images


RECIPE = {
    "seed": 0,
    "threads": 2,
    "bank": {"photo_share": 0.65},
    "vae": {"images": 6000, "steps": 3000, "batch": 16, "lr": 1e-3, "warmup": 50, "kl": 1e-6},
    # stage 2: on with fine stripes (a flag's stripes came back blurred) and drawn flags added
    # (an encoder that never saw one blurred them); the UNet's bank (stage 3) has no flag
    "vae_finish": {
        "images": 6000,
        "stripe_share": 0.3,
        "flag_share": 0.2,
        "steps": 1500,
        "batch": 16,
        "lr": 5e-4,
        "warmup": 50,
        "kl": 1e-6,
    },
    "unet": {
        "images": 8000,
        "stripe_share": 0.15,
        "steps": 2500,
        "batch": 32,
        "lr": 1e-3,
        "warmup": 100,
        "drop_caption": 0.1,
    },
    # stage 4: the decoder alone, with drawn flags added (seeds from FLAG_SEEDS on); the
    # frozen encoder keeps the latents, their scale and the UNet trained on them as they are
    "decoder": {
        "images": 3000,
        "stripe_share": 0.3,
        "flag_share": 0.5,
        "decoder_only": True,
        "edge": 2.0,
        "steps": 3000,
        "batch": 16,
        "lr": 5e-4,
        "warmup": 50,
    },
}
# stage 5, flag-mini-128: the shipped flag-mini's UNet trained on at 128 px (32 x 32 latents of
# the same autoencoder, which round-trips 128 px flags better than 64 px ones) on the stage-3
# bank's first images drawn at 128 px: still no flag. Lower rate, no restart from scratch: it
# starts from a UNet that already denoises, only the scale of what it draws is new.
RECIPE_128 = {
    "threads": 2,
    "unet": {
        "size": FLAG_RESOLUTION_128,
        "images": 4000,
        "stripe_share": 0.15,
        "steps": 1200,
        "batch": 16,
        "lr": 5e-4,
        "warmup": 50,
        "drop_caption": 0.1,
    },
}
HELD_OUT_FLAGS = 20  # drawn flags (seeds 1000..1019) for the autoencoder's check
FLAG_SEEDS = 2000  # stages 2 and 4's flags: apart from the references (0-9) and the check's
Pixels = np.ndarray  # uint8, (size, size, 3)


def photos(names: tuple[str, ...] = tuple(PHOTOS)) -> dict[str, Image.Image]:
    """scikit-image's photos by name, as RGB (grey ones tripled, alpha dropped)."""
    out = {}
    for name in names:
        image = skimage.util.img_as_ubyte(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out[name] = Image.fromarray(image[..., :3]).convert("RGB")
    return out


def recolour(image: Image.Image, rng: np.random.Generator, colourise: bool) -> Image.Image:
    """Hue rotated (or, for a grey photo, set), saturation and brightness/contrast changed."""
    hsv = np.asarray(image.convert("HSV")).astype(np.float64)
    if colourise:
        hsv[..., 0] = rng.uniform(0, 255)
        hsv[..., 1] = rng.uniform(0, 200)
    else:
        if rng.random() < 0.7:
            hsv[..., 0] = (hsv[..., 0] + rng.uniform(0, 255)) % 256
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    contrast, light = rng.uniform(0.7, 1.3), rng.uniform(-30, 30)
    hsv[..., 2] = np.clip((hsv[..., 2] - 128) * contrast + 128 + light, 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def photo_crop(photo: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    short = min(photo.size)
    side = int(rng.integers(max(16, short // 8), short + 1))
    angle = rng.uniform(-30, 30) if rng.random() < 0.4 else 0.0
    left = int(rng.integers(0, photo.size[0] - side + 1))
    top = int(rng.integers(0, photo.size[1] - side + 1))
    crop = photo.crop((left, top, left + side, top + side))
    if angle:  # rotate, then cut away the corners the rotation left empty
        crop = crop.rotate(angle, resample=Image.Resampling.BICUBIC)
        margin = int(side * 0.15)
        crop = crop.crop((margin, margin, side - margin, side - margin))
    crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    grey = np.asarray(photo).std(axis=-1).mean() < 1
    if grey or rng.random() < 0.6:
        crop = recolour(crop, rng, colourise=grey and rng.random() < 0.7)
    return crop


def colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in rng.integers(0, 256, 3))
    return r, g, b


def drawn(rng: np.random.Generator, size: int) -> Image.Image:
    """One of five procedural families, drawn at 4x and scaled down."""
    big = size * 4
    family = int(rng.integers(0, 5))
    image = Image.new("RGB", (big, big), colour(rng))
    draw = ImageDraw.Draw(image)
    if family == 0:  # a smooth colour field
        cells = int(rng.integers(2, 8))
        field = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        image = Image.fromarray(field).resize((big, big), Image.Resampling.BICUBIC)
    elif family == 1:  # ellipses and polygons on a gradient
        t = np.linspace(0, 1, big)[:, None, None]
        a, b = np.array(colour(rng)), np.array(colour(rng))
        image = Image.fromarray((a * (1 - t) + b * t + np.zeros((big, big, 3))).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 12))):
            x, y = rng.integers(0, big, 2)
            r = rng.integers(big // 20, big // 3)
            x2, y2 = x + r, y + rng.integers(big // 20, big // 3)
            box = [
                int(min(x - r, x2)),
                int(min(y - r, y2)),
                int(max(x - r, x2)),
                int(max(y - r, y2)),
            ]
            if rng.random() < 0.5:
                draw.ellipse(box, fill=colour(rng))
            else:
                corners = int(rng.integers(3, 7))
                draw.polygon(
                    [tuple(int(v) for v in rng.integers(0, big, 2)) for _ in range(corners)],
                    fill=colour(rng),
                )
    elif family == 2:  # checks and dots, tilted
        step = int(rng.integers(big // 24, big // 4))
        other = colour(rng)
        for y in range(0, big, step):
            for x in range(0, big, step):
                if rng.random() < 0.5 or (x // step + y // step) % 2:
                    if rng.random() < 0.5:
                        draw.rectangle([x, y, x + step, y + step], fill=other)
                    else:
                        q = step // 4
                        draw.ellipse([x + q, y + q, x + 3 * q, y + 3 * q], fill=other)
        image = image.rotate(rng.uniform(-45, 45), resample=Image.Resampling.BICUBIC)
    elif family == 3:  # a smooth random texture
        cells = int(rng.integers(6, 16))
        field = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        image = Image.fromarray(field).resize((big, big), Image.Resampling.BICUBIC)
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 3)))
    else:  # lines
        for _ in range(int(rng.integers(5, 40))):
            ends = [tuple(int(v) for v in rng.integers(0, big, 2)) for _ in range(2)]
            draw.line(ends, fill=colour(rng), width=int(rng.integers(1, big // 16)))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def striped(rng: np.random.Generator, size: int) -> Image.Image:
    """Bands of two or three random colours, 1.5-7 px wide at 64 px, tilted, maybe waved, over
    the whole image or a rectangle of it: the fine periodic detail (awnings, shirts, blinds)
    the other families lack and a 4x autoencoder most easily blurs."""
    big = size * 4
    colours = np.array([colour(rng) for _ in range(int(rng.integers(2, 4)))], np.float64)
    width = rng.uniform(6, 28)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:big, 0:big].astype(np.float64)
    across = x * np.cos(angle) + y * np.sin(angle)
    along = -x * np.sin(angle) + y * np.cos(angle)
    if rng.random() < 0.6:  # a wave, as of cloth
        across += rng.uniform(0, 3 * width) * np.sin(along * rng.uniform(0.005, 0.04))
    bands = colours[(across // width).astype(int) % len(colours)]
    if rng.random() < 0.5:  # on a rectangle over a plain or graded background
        t = np.linspace(0, 1, big)[:, None, None]
        back = np.array(colour(rng)) * (1 - t) + np.array(colour(rng)) * t + np.zeros_like(bands)
        x0, y0 = rng.integers(0, big // 2, 2)
        x1, y1 = (
            x0 + rng.integers(big // 4, big - x0 + 1),
            y0 + rng.integers(big // 4, big - y0 + 1),
        )
        back[y0:y1, x0:x1] = bands[y0:y1, x0:x1]
        bands = back
    image = Image.fromarray(bands.astype(np.uint8))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def bank(
    n: int, size: int, seed: int, photo_share: float, stripe_share: float = 0.0
) -> tuple[Pixels, list[str]]:
    """n images and their captions; image i depends on (seed, i) only. The last
    round(n * stripe_share) are striped ones (seeds (seed, 1, i): the rest are unchanged)."""
    images = photos()
    names = sorted(PHOTOS)
    pixels = np.empty((n, size, size, 3), np.uint8)
    captions = []
    stripes = round(n * stripe_share)
    for i in range(n - stripes, n):
        pixels[i] = np.asarray(striped(np.random.default_rng([seed, 1, i]), size))
    for i in range(n - stripes):
        rng = np.random.default_rng([seed, i])
        if rng.random() < photo_share:
            name = names[int(rng.integers(len(names)))]
            pixels[i] = np.asarray(photo_crop(images[name], rng, size))
            captions.append(f"a photo of {PHOTOS[name]}")
        else:
            pixels[i] = np.asarray(drawn(rng, size))
            captions.append(PATTERNS)
    return pixels, [*captions, *[PATTERNS] * stripes]


def to_unit(pixels: Pixels) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: dict) -> None:
    """Linear warm-up, then cosine decay to 0."""
    warm = min(1.0, (step + 1) / cfg["warmup"])
    cosine = 0.5 * (1 + math.cos(math.pi * step / cfg["steps"]))
    for group in optimizer.param_groups:
        group["lr"] = cfg["lr"] * warm * cosine


def log(stage: str, step: int, steps: int, loss: float, started: float) -> None:
    if step % 250 == 0 or step == steps - 1:
        print(f"{stage} step {step:5d}  loss {loss:.4f}  {time.time() - started:.0f} s", flush=True)


def with_flags(pixels: Pixels, share: float) -> Pixels:
    """The bank with drawn flags added, `share` of the whole (seeds FLAG_SEEDS, +1, ...)."""
    n = round(len(pixels) * share / (1 - share))
    flags = [np.asarray(draw_flag(FLAG_SEEDS + i, RESOLUTION)) for i in range(n)]
    return np.concatenate([pixels, np.stack(flags)]) if flags else pixels


def edge_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between neighbouring-pixel differences: what L1 + MSE let blur (a star, a thin pole,
    a stripe's edge) costs as much as a colour error."""
    return F.l1_loss(recon.diff(dim=-1), x.diff(dim=-1)) + F.l1_loss(
        recon.diff(dim=-2), x.diff(dim=-2)
    )


def train_vae(
    cfg: dict, seed: int, photo_share: float, start: dict | None = None
) -> tuple[torch.nn.Module, float]:
    """One stage: from random weights (seeded) or from `start`, with a fresh optimizer.

    cfg["flag_share"] adds drawn flags to the bank. With cfg["decoder_only"] (stage 4) only the
    decoder learns: the encoder, hence every latent and their scale, stays as `start` had it."""
    pixels, _ = bank(cfg["images"], RESOLUTION, seed, photo_share, cfg.get("stripe_share", 0.0))
    pixels = with_flags(pixels, cfg.get("flag_share", 0.0))
    decoder_only = cfg.get("decoder_only", False)
    data = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(seed)
    vae = flag_mini_vae().train()
    if start is not None:
        vae.load_state_dict(start)
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=cfg["lr"])
    g = torch.Generator().manual_seed(seed + 1)
    started = time.time()
    for step in range(cfg["steps"]):
        x = data[torch.randint(0, len(data), (cfg["batch"],), generator=g)].float() / 127.5 - 1
        with torch.set_grad_enabled(not decoder_only):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        if cfg.get("edge"):
            loss = loss + cfg["edge"] * edge_loss(recon, x)
        if not decoder_only:
            loss = loss + cfg["kl"] * posterior.kl().mean()
        set_lr(optimizer, step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log("vae ", step, cfg["steps"], loss.item(), started)
    vae.eval()
    with torch.no_grad():
        means = torch.cat(
            [
                vae.encode(to_unit(pixels[i : i + 256])).latent_dist.mean
                for i in range(0, len(pixels), 256)
            ]
        )
    return vae, float(1 / means.std())


def round_trip(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)


def chroma(x: torch.Tensor) -> float:
    """Mean distance of a pixel from its own grey: 0 for a grey image."""
    return float((x - x.mean(dim=1, keepdim=True)).abs().mean())


def check_vae(vae: torch.nn.Module, seed: int) -> dict:
    """Reconstruction figures on images neither stage trained on, and on the training bank."""
    flags = np.stack([np.asarray(draw_flag(1000 + i, RESOLUTION)) for i in range(HELD_OUT_FLAGS)])
    astronaut = photos(("astronaut",))["astronaut"]
    rng = np.random.default_rng([seed, 99])
    crops = np.stack([np.asarray(photo_crop(astronaut, rng, RESOLUTION)) for _ in range(20)])
    seen, _ = bank(64, RESOLUTION, seed, RECIPE["bank"]["photo_share"])
    out = {}
    for name, pixels in (("drawn US flags", flags), ("astronaut crops", crops), ("bank", seen)):
        x = to_unit(pixels)
        recon = round_trip(vae, x)
        out[name] = {
            "images": len(x),
            "l1": round(float((recon - x).abs().mean()), 4),
            "psnr_db": round(float(10 * torch.log10(4 / F.mse_loss(recon, x))), 2),
            "chroma_in": round(chroma(x), 4),
            "chroma_out": round(chroma(recon), 4),
        }
    return out


def train_unet(
    vae: torch.nn.Module,
    scale: float,
    cfg: dict,
    seed: int,
    photo_share: float,
    start: dict | None = None,
) -> torch.nn.Module:
    """Stage 3 (from seeded random weights) or stage 5 (from `start`, the stage-3 UNet, on
    cfg["size"] px images: the same bank's seeds, drawn larger; its own random draws)."""
    size = cfg.get("size", RESOLUTION)
    pixels, captions = bank(
        cfg["images"], size, seed + 2, photo_share, cfg.get("stripe_share", 0.0)
    )
    texts = [*sorted(set(captions)), ""]  # the last one: a dropped caption
    labels = torch.tensor([texts.index(c) for c in captions])
    tiny = build_tiny_pipeline()
    # encoded in the chunks each stage first ran with: a batch's size can change float rounding
    chunk = 256 if start is None else 64
    with torch.no_grad():
        latents = scale * torch.cat(
            [
                vae.encode(to_unit(pixels[i : i + chunk])).latent_dist.mean
                for i in range(0, len(pixels), chunk)
            ]
        )
        ids = tiny.tokenizer(
            texts,
            padding="max_length",
            return_tensors="pt",
            max_length=tiny.tokenizer.model_max_length,
        ).input_ids
        text = tiny.text_encoder(ids)[0]
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler.from_config(tiny.scheduler.config).alphas_cumprod
    torch.manual_seed(seed + 3)
    unet = flag_mini_unet(size).train()
    if start is not None:
        unet.load_state_dict(start)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], weight_decay=0.01)
    g = torch.Generator().manual_seed(seed + (4 if start is None else 40))
    started, smoothed = time.time(), None
    for step in range(cfg["steps"]):
        index = torch.randint(0, len(latents), (cfg["batch"],), generator=g)
        z0 = latents[index]
        if torch.rand(1, generator=g) < 0.5:
            z0 = z0.flip(-1)  # a mirrored latent decodes to (nearly) the mirrored image
        label = labels[index].clone()
        label[torch.rand(cfg["batch"], generator=g) < cfg["drop_caption"]] = len(texts) - 1
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, len(alphas), (cfg["batch"],), generator=g)
        loss = F.mse_loss(unet(add_noise(z0, noise, t, alphas), t, text[label]).sample, noise)
        set_lr(optimizer, step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        log("unet", step, cfg["steps"], smoothed, started)
    return unet.eval()


def library_versions() -> dict[str, str]:
    """The libraries whose versions decide the bytes a build writes."""
    names = ("torch", "diffusers", "transformers", "scikit-image", "numpy", "pillow")
    return {name: importlib.metadata.version(name) for name in names}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(module: torch.nn.Module, file: Path) -> str:
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(state, file)
    return sha256(file)


def float16(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights as they are stored (float16), back in float32."""
    return {k: v.detach().to(torch.float16).float() for k, v in module.state_dict().items()}


def build(
    out: Path,
    only_vae: bool = False,
    first_vae: Path | None = None,
    earlier: Path | None = None,
) -> dict:
    """Every stage into `out`. `first_vae`: skip stage 1 (start stage 2 from that file);
    `earlier`: skip stages 1-3 (take an earlier build's stage-2 autoencoder, its scale and
    its UNet from that folder) and run stage 4 alone."""
    torch.set_num_threads(RECIPE["threads"])
    torch.use_deterministic_algorithms(True)
    seed, share = RECIPE["seed"], RECIPE["bank"]["photo_share"]
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"recipe": RECIPE, "photos": PHOTOS}
    if earlier is None:
        if first_vae is None:
            start = float16(train_vae(RECIPE["vae"], seed, share)[0])
        else:  # stage 1's weights (float16), e.g. an earlier build's before stage 2
            start = {k: v.float() for k, v in load_file(first_vae).items()}
        vae, scale = train_vae(RECIPE["vae_finish"], seed + 5, share, start)
        stage2 = save(vae, out / STAGE2_FILE)
    else:
        vae, scale, stage2 = load_stage2(earlier)
        (out / STAGE2_FILE).write_bytes((earlier / stage2_file(earlier)).read_bytes())
    info["vae_stage2"] = {"file": STAGE2_FILE, "sha256": stage2, "check": check_vae(vae, seed)}
    if not only_vae:
        if earlier is None:
            unet = train_unet(vae, scale, RECIPE["unet"], seed, share)
            digest = save(unet, out / "unet.safetensors")
        else:
            (out / "unet.safetensors").write_bytes((earlier / "unet.safetensors").read_bytes())
            digest = sha256(out / "unet.safetensors")
        info["unet"] = {"file": "unet.safetensors", "sha256": digest}
    # stage 4 starts from the stage-2 weights as stored, so both paths above give the same
    vae = train_vae(RECIPE["decoder"], seed + 6, share, float16(vae))[0]
    info["vae_check"] = check_vae(vae, seed)
    print(json.dumps(info["vae_check"], indent=1))
    info["vae"] = {"file": "vae.safetensors", "sha256": save(vae, out / "vae.safetensors")}
    info["vae"]["scaling_factor"] = round(scale, 6)
    info["versions"] = library_versions()
    (out / RECIPE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def stage2_file(folder: Path) -> str:
    """An earlier build's stage-2 autoencoder: its own file, or (a build from before stage 4)
    its vae.safetensors."""
    return STAGE2_FILE if (folder / STAGE2_FILE).exists() else "vae.safetensors"


def load_stage2(folder: Path) -> tuple[torch.nn.Module, float, str]:
    """An earlier build's stage-2 autoencoder (float16 weights), its latent scale and sha256."""
    info = json.loads((folder / RECIPE_FILE).read_text(encoding="utf-8"))
    vae = flag_mini_vae()
    state = load_file(folder / stage2_file(folder))
    vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return vae.eval(), info["vae"]["scaling_factor"], sha256(folder / stage2_file(folder))


def build_128(out: Path, base: Path | None = None) -> dict:
    """Stage 5 into `out`: flag-mini-128 from flag-mini's shipped weights (or `base`, a
    flag-mini build's folder). The autoencoder is flag-mini's, copied unchanged."""
    torch.set_num_threads(RECIPE_128["threads"])
    torch.use_deterministic_algorithms(True)
    base = base or weights_folder(FLAG_MINI)
    info_base = json.loads((base / RECIPE_FILE).read_text(encoding="utf-8"))
    pipe = build_embedded_pipeline(FLAG_MINI, folder=base)
    scale = info_base["vae"]["scaling_factor"]
    seed, share = RECIPE["seed"], RECIPE["bank"]["photo_share"]
    start = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}  # float16-exact
    unet = train_unet(pipe.vae, scale, RECIPE_128["unet"], seed, share, start=start)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vae.safetensors").write_bytes((base / "vae.safetensors").read_bytes())
    info = {
        "recipe": RECIPE_128,
        "base": {"model": FLAG_MINI, "unet_sha256": info_base["unet"]["sha256"]},
        "vae": {**info_base["vae"], "sha256": sha256(out / "vae.safetensors")},
        "unet": {"file": "unet.safetensors", "sha256": save(unet, out / "unet.safetensors")},
    }
    info["versions"] = library_versions()
    (out / RECIPE_FILE_128).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def install(out: Path, name: str = FLAG_MINI) -> Path:
    """Copies a build's weights and recipe into spurcli/data/<name>/ (`--model <name>`)."""
    folder = weights_folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    for file in ("vae.safetensors", "unet.safetensors", f"{name}.json"):
        (folder / file).write_bytes((out / file).read_bytes())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="rebuild in a temp folder, compare with the shipped"
    )
    parser.add_argument("--only", choices=["vae"], help="train the autoencoder alone")
    parser.add_argument(
        "--first-vae", type=Path, help="skip stage 1: start stage 2 from this VAE (safetensors)"
    )
    parser.add_argument(
        "--earlier", type=Path, help="skip stages 1-3: take them from this earlier build"
    )
    parser.add_argument("--out", type=Path, help=f"where the weights go ({OUT}, {OUT_128})")
    parser.add_argument(
        "--install", action="store_true", help="only copy out's weights to spurcli/data/"
    )
    parser.add_argument("--export", type=Path, help="only write out's weights as diffusers folder")
    parser.add_argument(
        "--stage-128",
        action="store_true",
        help="flag-mini-128: stage 5 alone, from the shipped flag-mini (--earlier: that build)",
    )
    args = parser.parse_args()
    name = FLAG_MINI_128 if args.stage_128 else FLAG_MINI
    out = args.out or (OUT_128 if args.stage_128 else OUT)
    if args.install:
        print(f"wrote {install(out, name)}")
        return
    if args.export:
        build_embedded_pipeline(name, folder=out).save_pretrained(
            args.export, safe_serialization=True
        )
        print(f"wrote {args.export}")
        return
    if args.stage_128:
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                sys.exit(0 if compare_rebuild(name, build_128(Path(tmp), args.earlier)) else 1)
        build_128(out, args.earlier)
        print(f"wrote {out}; `--stage-128 --install` makes it `--model {name}`")
        return
    if not args.check:
        only_vae = args.only == "vae"
        build(out, only_vae=only_vae, first_vae=args.first_vae, earlier=args.earlier)
        print(f"wrote {out}; `--install` makes it `--model {name}`")
        return
    with tempfile.TemporaryDirectory() as tmp:
        identical = compare_rebuild(FLAG_MINI, build(Path(tmp)))
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
