"""VAE variants for the brick world: does a sharper miniature VAE keep effnet-lite0's class 807?

    HF_HUB_OFFLINE=1 python examples/mini_vae_study/train.py VARIANT [--out runs/mini-vae-study]
    HF_HUB_OFFLINE=1 python examples/mini_vae_study/evaluate.py runs/mini-vae-study/VARIANT

Each variant is make_mini_model.py's VAE stage (same photos, same crop_bank, same seeds, one CPU
thread, deterministic algorithms) with some settings changed; VARIANTS lists them. Options:

- arch: "mini" (spurcli.generate.mini.mini_vae: 16-32-64-64, 8x) | "wide" (32-64-128-128, 8x) |
  "f4" (16-32-64, 4x downsampling: 32 x 32 x 4 latents at 128 px)
- bank_size / size: crops are made at bank_size px; each step trains on random size x size
  patches of them (bank_size == size: whole crops, as make_mini_model.py). bank_size 128 puts
  the bricks at the scale of the 128 px references, patches of 64 keep the cost of 64 px.
- grad: weight of an L1 loss on horizontal/vertical image differences (edge-aware; no network,
  in particular not the judge effnet-lite0).

Nothing here touches spurcli/data/mini. Weights go to --out/VARIANT/vae.safetensors (float32)
with info.json (recipe, parameter count, CPU seconds, scaling factor).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from make_mini_model import cosine_lr, crop_bank, photos

BASE = {
    "arch": "mini",
    "crops": 2048,
    "bank_size": 64,
    "size": 64,
    "steps": 400,
    "batch": 16,
    "lr": 1e-3,
    "kl": 1e-6,
    "grad": 0.0,
    "warmup": 0,
    "init": None,
}  # fmt: skip  (= make_mini_model.py)
VARIANTS = {
    "base": {},
    "long": {"steps": 1200},
    "scale128": {"bank_size": 128, "steps": 1200},
    "scale128-grad": {"bank_size": 128, "steps": 1200, "grad": 1.0},
    "wide-scale128-grad": {"arch": "wide", "bank_size": 128, "steps": 1200, "grad": 1.0},
    "f4-scale128-grad": {"arch": "f4", "bank_size": 128, "steps": 1200, "grad": 1.0},
    # warm restarts of f4-scale128-grad (a second cosine cycle; seeds as above, so the batches
    # repeat the first cycle's): total cost = 1200 + 900 steps
    "f4-cont": {
        "arch": "f4",
        "bank_size": 128,
        "steps": 900,
        "grad": 1.0,
        "lr": 5e-4,
        "init": "f4-scale128-grad",
    },
    "f4-cont-grad3": {
        "arch": "f4",
        "bank_size": 128,
        "steps": 900,
        "grad": 3.0,
        "lr": 5e-4,
        "init": "f4-scale128-grad",
    },
}


def build_vae(arch: str, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    from spurcli.generate.mini import RESOLUTION, mini_vae

    if arch == "mini":
        return mini_vae(scaling_factor)
    channels = {"wide": (32, 64, 128, 128), "f4": (16, 32, 64), "f4wide": (32, 64, 128)}[arch]
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        layers_per_block=1, norm_num_groups=8, sample_size=RESOLUTION,
        scaling_factor=scaling_factor,
    )  # fmt: skip


def grad_l1(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(recon), dx(x)) + F.l1_loss(dy(recon), dy(x))


def train(cfg: dict, seed: int = 0, out_root: Path = Path("runs/mini-vae-study")):
    images = photos()
    bank = crop_bank(images, cfg["crops"], cfg["bank_size"], seed)
    torch.manual_seed(seed)
    vae = build_vae(cfg["arch"]).train()
    if cfg["init"]:  # warm start from another variant's weights
        vae.load_state_dict(load_file(out_root / cfg["init"] / "vae.safetensors"))
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(seed + 1)
    started, cpu0 = time.time(), time.process_time()
    s, B = cfg["size"], cfg["bank_size"]
    for step in range(cfg["steps"]):
        x = bank[torch.randint(0, len(bank), (cfg["batch"],), generator=g)]
        if s < B:  # one random patch position per batch (cheap, deterministic)
            off = torch.randint(0, B - s + 1, (2,), generator=g)
            x = x[..., off[0] : off[0] + s, off[1] : off[1] + s]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg["kl"] * posterior.kl().mean()
        if cfg["grad"]:
            loss = loss + cfg["grad"] * grad_l1(recon, x)
        cosine_lr(optimizer, step, cfg["steps"], cfg["lr"])
        if step < cfg["warmup"]:
            for group in optimizer.param_groups:
                group["lr"] *= (step + 1) / cfg["warmup"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == cfg["steps"] - 1:
            print(f"vae step {step:5d} loss {loss.item():.4f} {time.time() - started:.0f} s",
                  flush=True)  # fmt: skip
    cpu = time.process_time() - cpu0
    wall = time.time() - started
    vae.eval()
    with torch.no_grad():
        means = torch.cat(
            [vae.encode(bank[i : i + 64]).latent_dist.mean for i in range(0, len(bank), 64)]
        )
    return vae, float(1 / means.std()), cpu, wall


def load_vae(folder: Path):
    info = json.loads((folder / "info.json").read_text())
    vae = build_vae(info["recipe"]["arch"], info["scaling_factor"])
    vae.load_state_dict(load_file(folder / "vae.safetensors"))
    return vae.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--out", default="runs/mini-vae-study")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = {**BASE, **VARIANTS[args.variant]}
    vae, scale, cpu, wall = train(cfg, out_root=Path(args.out))
    out = Path(args.out) / args.variant
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, out / "vae.safetensors")
    info = {"variant": args.variant, "recipe": cfg, "threads": args.threads,
            "params": sum(p.numel() for p in vae.parameters()), "cpu_seconds": round(cpu, 1),
            "wall_seconds": round(wall, 1), "scaling_factor": round(scale, 6),
            "torch": torch.__version__}  # fmt: skip
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
