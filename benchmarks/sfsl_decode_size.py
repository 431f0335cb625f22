"""What `--sfsl-decode-size` shows the extractor, and what it costs: resize the decoded image
(what spurcli does) or decode a resized latent (what it did before).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/sfsl_decode_size.py     # ~1 min, CPU
    HF_HUB_OFFLINE=1 python benchmarks/sfsl_decode_size.py --size 64 --repeats 5

On `mini` (a VAE that works) with the brick world's references encoded to latents and
effnet-lite0 as the extractor, for a decode size N below the native 128 px:

    full     E(decode(z)): the image as the method describes it
    pixel    E(resize_N(decode(z))): the decoded image resized to N px (differentiable)
    latent   E(decode(resize_{N/8}(z))): the latent resized first (cheaper decoder, another image)

It prints the mean feature cosine between each pair, and the median time of the SFSL loss's
forward + backward to the latents (spurcli.generate.losses.sfsl_loss, weight 1) for each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spurcli.generate.losses import SFSL, decode_to_unit, sfsl_loss, to_latents
from spurcli.generate.pipelines import load_pipeline
from spurcli.images import read_folder, to_tensor

REFERENCES = Path(__file__).resolve().parents[1] / "examples" / "brick_world" / "references"


def latent_resized_loss(sfsl: SFSL, vae: object, z: torch.Tensor, size: int) -> torch.Tensor:
    """The SFSL loss as spurcli computed it before: decode a latent resized to size / 8."""
    side = size // 8
    small = F.interpolate(z, size=(side, side), mode="bilinear", antialias=True)
    f = sfsl.extractor(decode_to_unit(vae, small)).float()
    return (1 - F.cosine_similarity(f, sfsl.reference, dim=1)).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--references", type=Path, default=REFERENCES)
    parser.add_argument("--extractor", default="effnet-lite0")
    parser.add_argument("--size", type=int, default=64, help="the decode size N, in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from spurcli.plugins import extractors

    pipe = load_pipeline(args.model)
    vae = pipe.vae.eval().requires_grad_(False)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = [
        img.convert("RGB").resize((native, native)) for _, img in read_folder(args.references)[0]
    ]
    pixels = torch.stack([to_tensor(img) for img in images])
    extractor = extractors().load(args.extractor).module.eval().requires_grad_(False)
    with torch.no_grad():
        z = to_latents(vae, vae.encode(pixels * 2 - 1).latent_dist.mean)
        reference = extractor(pixels).float()
        decoded = decode_to_unit(vae, z)
        small = F.interpolate(decoded, size=(args.size,) * 2, mode="bilinear", antialias=True)
        side = args.size // 8
        shrunk = F.interpolate(z, size=(side, side), mode="bilinear", antialias=True)
        feats = {
            "full": extractor(decoded).float(),
            "pixel": extractor(small.clamp(0, 1)).float(),
            "latent": extractor(decode_to_unit(vae, shrunk)).float(),
        }

    def cos(a: str, b: str) -> float:
        return float(F.cosine_similarity(feats[a], feats[b], dim=1).mean())

    n = len(images)
    print(f"model {args.model} ({native} px), {n} references, {args.extractor}, N={args.size}")
    for a, b in (("pixel", "latent"), ("full", "pixel"), ("full", "latent")):
        print(f"feature cosine {a:>6} vs {b:<6} {cos(a, b):.3f}")

    def timed(loss_of: object) -> float:
        times = []
        for _ in range(args.repeats + 1):  # the first is a warm-up
            x0 = z.clone().requires_grad_(True)
            start = time.perf_counter()
            loss_of(x0).backward()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    timesteps, index = torch.zeros(len(z), dtype=torch.long), torch.arange(len(z))
    full_sfsl = SFSL(extractor, reference, 1.0)
    pixel_sfsl = SFSL(extractor, reference, 1.0, decode_size=args.size)
    rows = {
        "full": timed(lambda x0: sfsl_loss(full_sfsl, vae, x0, timesteps, index)),
        "pixel": timed(lambda x0: sfsl_loss(pixel_sfsl, vae, x0, timesteps, index)),
        "latent": timed(lambda x0: latent_resized_loss(full_sfsl, vae, x0, args.size)),
    }
    for name, seconds in rows.items():
        ratio = seconds / rows["full"]
        print(f"SFSL forward+backward {name:>6}: {seconds * 1000:7.1f} ms ({ratio:.2f}x full)")


if __name__ == "__main__":
    main()
