"""How much of a drawn flag survives a model's UNet, as each judge reads it.

    python examples/flag_world/denoise_check.py                           # flag-mini, untuned
    python examples/flag_world/denoise_check.py runs/quickstart/replicate-1/finetune  # an arm
    python examples/flag_world/denoise_check.py --size 128       # flags twice the trained size

Draws thirty flags at 64 px (--size; the references' seeds 0-9 and the autoencoder check's
1000-1019, each side as its seed chose), and counts the images each judge (effnet-lite0/1/2
unless --judges) reads as 557 "flagpole": the drawn flags; their round trip through the model's
autoencoder; and, for each --t, the round trip's latents noised to timestep t with a seeded
noise and denoised back by the model's UNet, as the last steps of a sample are drawn (DDIM on
the grid of --steps steps, from the last step at or below t; no guidance, the instance prompt).

What it tells: a judge that reads the round trips but loses the flags the UNet redraws from a
larger t reads details this UNet does not draw, and a sample, drawn from t = 999, is unlikely to
have them however the UNet was fine-tuned (a fine-tune that memorises its own training images
may draw those better: most of these thirty are flags it never saw). Prints one row per image
set: k of n per judge, with the 95% Wilson interval. About 40 s per model on two cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from draw_flags import draw_flag  # a sibling script

FLAGPOLE = 557
SEEDS = list(range(10)) + list(range(1000, 1020))  # the references' and the check's flags
SIZE = 64  # flag-mini's
TIMESTEPS = (100, 200, 400, 700)  # on 20 steps' grid: from 51, 151, 351, 651


def readings(images: Any, judges: list, target: int = FLAGPOLE) -> list[int]:
    """How many of ``images`` (N x 3 x H x W in [-1, 1]) each judge puts ``target`` first for,
    read from PNG files as `spurcli score` reads samples."""
    import torch
    from PIL import Image

    from spurcli.evaluate.config import ImagePass
    from spurcli.evaluate.imagepass import find_items, score_items

    with tempfile.TemporaryDirectory() as folder:
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for i, image in enumerate(pixels):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(Path(folder) / f"{i:03d}.png")
        found = score_items(
            find_items(Path(folder), target=target, real=False), judges, ImagePass()
        )
    return [int((row == target).sum()) for row in found.per_image.top1]


def denoised(
    pipe: Any, latents: Any, t: int, steps: int, prompt: str, seed: int = 0
) -> tuple[Any, int]:
    """``latents`` noised and denoised by the pipeline's UNet on DDIM's grid of ``steps``, from
    its last step at or below ``t`` (returned beside the decoded pixels)."""
    import torch

    from spurcli.generate.pipelines import make_scheduler

    scheduler = make_scheduler("ddim", pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    grid = [int(s) for s in scheduler.timesteps if s <= t]
    if not grid:
        raise ValueError(f"no step of a {steps}-step grid at or below t = {t}")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    z = scheduler.add_noise(latents, noise, torch.tensor([grid[0]] * len(latents)))
    with torch.no_grad():  # as the pipeline encodes a prompt to sample, without guidance
        states = pipe.encode_prompt(prompt, latents.device, len(latents), False)[0]
        for step in grid:
            eps = pipe.unet(z, step, encoder_hidden_states=states).sample
            z = scheduler.step(eps, step, z).prev_sample
        return pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample, grid[0]


def check(
    model: str, judges: list, timesteps: tuple[int, ...], steps: int, prompt: str, size: int = SIZE
) -> list[tuple[str, list[int], int]]:
    """(row, counts per judge, n) for the drawn flags, their round trips and each timestep."""
    import torch

    from spurcli.generate.pipelines import load_pipeline

    pipe = load_pipeline(model)
    drawn = np.stack([np.asarray(draw_flag(seed, size)) for seed in SEEDS])
    images = torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 127.5 - 1
    n = len(images)
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
        round_trips = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    rows = [
        ("drawn", readings(images, judges), n),
        ("round trip", readings(round_trips, judges), n),
    ]
    for t in timesteps:
        back, start = denoised(pipe, latents, t, steps, prompt)
        rows.append((f"noised to t = {start}, denoised", readings(back, judges), n))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="flag-mini", help="model or finetune run")
    parser.add_argument("--judges", default="effnet-lite0,effnet-lite1,effnet-lite2")
    parser.add_argument("--t", default=",".join(map(str, TIMESTEPS)), help="timesteps, 0-999")
    parser.add_argument("--steps", type=int, default=20, help="DDIM grid (a sample's: 20)")
    parser.add_argument("--prompt", default="a photo of sks flag", help="the instance prompt")
    # The autoencoder and UNet are convolutional: other sizes run, outside what they trained on.
    parser.add_argument("--size", type=int, default=SIZE, help="the flags' side in px")
    args = parser.parse_args()

    from spurcli import console
    from spurcli.evaluate.metrics import wilson_interval
    from spurcli.plugins import load_classifiers

    console.configure(quiet=True)
    names = args.judges.split(",")
    judges = load_classifiers(names)
    timesteps = tuple(int(t) for t in args.t.split(","))
    print(f"{args.model}, {args.size} px: read as {FLAGPOLE} flagpole, k/n [95% Wilson interval]")
    print("| images | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for row, counts, n in check(args.model, judges, timesteps, args.steps, args.prompt, args.size):
        cells = []
        for k in counts:
            low, high = wilson_interval(k, n)
            cells.append(f"{k}/{n} [{low:.2f}, {high:.2f}]")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
