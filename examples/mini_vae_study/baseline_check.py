"""The untuned baseline with a new VAE: are its samples still *not* class 807?

    HF_HUB_OFFLINE=1 python examples/mini_vae_study/baseline_check.py \
        runs/mini-vae-study/VARIANT [--retrain-unet]

Builds `mini` (spurcli.generate.mini.build_embedded_pipeline) with the variant's VAE swapped in, in
memory
(nothing in spurcli/data/mini changes). Without --retrain-unet the committed UNet is kept; its
latents were learned through the *old* VAE, so that pairing is only a smoke test. With it, the
UNet is retrained exactly as make_mini_model.py's stage 2 (same recipe and seeds, brick held
out) on the new VAE's latents, which is what integrating the VAE into `mini` would require; the
UNet is saved next to the VAE (VARIANT/unet.safetensors). Then 24 samples of the brick world's
instance prompt ("a photo of sks wall", 20 steps, 128 px, seed 0, batches of 8, as the
untuned-baseline arm) are scored by effnet-lite0 as `spurcli score` feeds them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from evaluate import classify, names  # noqa: E402
from train import load_vae  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--retrain-unet", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", type=Path, help="write the 24 samples here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from spurcli.generate.mini import build_embedded_pipeline, mini_unet

    pipe = build_embedded_pipeline()
    vae = load_vae(args.folder)
    info = {"folder": str(args.folder), "unet": "committed (old latent space)"}
    if args.retrain_unet:
        unet_file = args.folder / "unet.safetensors"
        if unet_file.is_file():
            unet = mini_unet()
            unet.load_state_dict(load_file(unet_file))
            unet.eval()
            info["unet"] = "retrained (loaded)"
        else:
            from make_mini_model import RECIPE, photos, train_unet

            torch.use_deterministic_algorithms(True)
            cpu0, t0 = time.process_time(), time.time()
            unet = train_unet(
                photos(), vae, vae.config.scaling_factor, RECIPE["unet"], RECIPE["seed"]
            )
            info["unet"] = "retrained"
            info["unet_cpu_seconds"] = round(time.process_time() - cpu0, 1)
            info["unet_wall_seconds"] = round(time.time() - t0, 1)
            save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, unet_file)
            torch.use_deterministic_algorithms(False)
        pipe.register_modules(unet=unet)
    pipe.register_modules(vae=vae)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    pipe.vae_scale_factor = factor
    pipe.image_processor.config.vae_scale_factor = factor
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    images = []
    with torch.no_grad():
        for _ in range(3):
            images += pipe(["a photo of sks wall"] * 8, num_inference_steps=20, height=128,
                           width=128, generator=g).images  # fmt: skip
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(args.save / f"{i:02d}.png")
    top1, p = classify(images)
    info.update(k807=f"{int((top1 == 807).sum())}/24", mean_p807=float(p.mean()),
                top1=names(top1))  # fmt: skip
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
