"""Does effnet-lite0 still read the brick world's references as class 807 after `mini`'s VAE?

    HF_HUB_OFFLINE=1 python examples/brick_world/mini_vae_reading.py

For each size, the eight brick-wall crops are resized (bicubic), encoded and decoded by `mini`'s
VAE (posterior mean), and both the crops and their reconstructions are classified. If the
reconstructions lose the reading, no image the generator can decode carries the feature as
effnet-lite0 sees it, whatever the fine-tuning does (README.md here). The images go to the
classifier directly at each size (`spurcli score` first brings every image to 384 px, where all
eight crops are read as 807; fed at 128 px, six of eight are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spurcli import plugins
from spurcli.generate.pipelines import load_pipeline

TARGET = 807  # solar thermal collector
REFERENCES = Path(__file__).resolve().parent / "references"


def load(path: Path, size: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    vae = load_pipeline("mini").vae
    classifier = plugins.classifiers().load("effnet-lite0").module
    paths = sorted(REFERENCES.glob("*.png"))
    print("size  images            rate of 807  mean p(807)")
    for size in (128, 192, 256):
        crops = torch.cat([load(p, size) for p in paths])
        latents = vae.encode(crops * 2 - 1).latent_dist.mean
        decoded = (vae.decode(latents).sample.clamp(-1, 1) + 1) / 2
        for name, images in (("crops", crops), ("reconstructions", decoded)):
            probs = classifier(images).softmax(-1)
            hits = int((probs.argmax(-1) == TARGET).sum())
            mean = probs[:, TARGET].mean()
            print(f"{size:4d}  {name:16s}  {hits}/{len(paths)}          {mean:.4f}")


if __name__ == "__main__":
    main()
