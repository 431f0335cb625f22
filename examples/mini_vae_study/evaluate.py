"""Scores a mini-style VAE the way the brick world scores images.

    HF_HUB_OFFLINE=1 python examples/mini_vae_study/evaluate.py   # the committed mini VAE
    HF_HUB_OFFLINE=1 python examples/mini_vae_study/evaluate.py runs/mini-vae-study/wide

For the 8 brick-world references (128 px) and 8 random 128 px crops of non-brick photos: encode
(posterior mean), decode, quantise to uint8 like a saved PNG, then feed effnet-lite0 exactly as
`spurcli score` does (central square, ImageOps.fit to 384 px bicubic, then effnet's own eval
transform: short side 256, centre 224). Prints k/8 in 807, mean p(807), top-1 classes, and the
mean absolute reconstruction error (in [-1, 1] units) on a fixed bank of 128 px photo crops.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from spurcli import imagenet
from spurcli.plugins import load_classifiers

TARGET = 807
ROOT = Path(__file__).resolve().parents[2]
REFERENCES = ROOT / "examples" / "brick_world" / "references"


def to_uint8(x: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] tensors -> PIL images, as the pipeline saves them."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.array(i.convert("RGB")) for i in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


_CLASSIFIER = None


def classify(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """(top-1, p(807)) per image, fed as spurcli score feeds them."""
    global _CLASSIFIER
    if _CLASSIFIER is None:
        _CLASSIFIER = load_classifiers(["effnet-lite0"])[0].module.eval()
    fitted = [ImageOps.fit(i.convert("RGB"), (384, 384), Image.Resampling.BICUBIC) for i in images]
    x = torch.from_numpy(np.stack([np.array(i) for i in fitted])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        p = _CLASSIFIER(x).softmax(-1)
    return p.argmax(-1).numpy(), p[:, TARGET].numpy()


def references() -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(REFERENCES.glob("*.png"))]


def other_crops(n: int = 8, size: int = 128, seed: int = 1234) -> list[Image.Image]:
    """n random 128 px crops of the non-brick photos (fixed seed, not training's draws)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from make_mini_model import photos

    images = {k: v for k, v in photos().items() if k != "brick"}
    names = sorted(images)
    rng = np.random.default_rng(seed)
    out = []
    for _i in range(n):
        name = names[int(rng.integers(len(names)))]
        image = images[name]
        short = min(image.size)
        side = int(rng.integers(short // 4, 2 * short // 3 + 1))
        left = int(rng.integers(0, image.size[0] - side + 1))
        top = int(rng.integers(0, image.size[1] - side + 1))
        out.append(
            image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        )
    return out


def error_bank(n: int = 128, size: int = 128) -> torch.Tensor:
    sys.path.insert(0, str(ROOT / "examples"))
    from make_mini_model import crop_bank, photos

    return crop_bank(photos(), n, size, seed=999)


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(0, len(x), 16):
        out.append(vae.decode(vae.encode(x[i : i + 16]).latent_dist.mean).sample)
    return torch.cat(out)


def names(top1) -> str:
    labels = imagenet.class_names()
    counts = Counter(labels[int(c)] for c in top1)
    return ", ".join(f"{k} {v}" for k, v in counts.most_common())


def report(vae, label: str = "") -> dict:
    vae.eval()
    refs, others = references(), other_crops()
    out: dict = {"label": label, "params": sum(p.numel() for p in vae.parameters())}
    for set_name, imgs in (("references", refs), ("others", others)):
        x = to_tensor(imgs)
        rec = to_uint8(reconstruct(vae, x))
        for kind, batch in (("input", imgs), ("recon", rec)):
            top1, p = classify(batch)
            out[f"{set_name}_{kind}"] = {
                "k807": int((top1 == TARGET).sum()),
                "mean_p807": float(p.mean()),
                "top1": names(top1),
            }
        out[f"{set_name}_mae"] = float((to_tensor(rec) - x).abs().mean())
    bank = error_bank()
    out["photo_mae_128"] = float((reconstruct(vae, bank).clamp(-1, 1) - bank).abs().mean())
    return out


def main() -> None:
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
    if len(sys.argv) > 1:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train import load_vae

        vae = load_vae(Path(sys.argv[1]))
        label = sys.argv[1]
    else:
        from spurcli.generate.pipelines import load_pipeline

        vae = load_pipeline("mini").vae
        label = "committed mini"
    print(json.dumps(report(vae, label), indent=2))


if __name__ == "__main__":
    main()
