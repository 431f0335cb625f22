"""What each finetune step sees: deterministic batches from (seed, micro-step, process).

    from spurcli.generate.training_data import TrainingData, LatentCache
    data = TrainingData(references, class_images, cfg, rank=0, world=1)  # PIL images, resized once
    batch = data.batch(micro_step)        # images, crops, noise, timesteps of that micro-step
    latents = LatentCache(vae, "cpu").latents(batch)  # encoded once per (image, crop), sampled

Every random choice of a sample (which image, its crop, its noise, its timestep, the VAE posterior
sample) comes from a generator seeded by the sample's global number, never from global RNG state.
So a run resumed from a checkpoint draws exactly what the uninterrupted run would have drawn, and
W processes with batch B see the samples one process with batch W * B would see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from PIL import Image

from spurcli.generate.config import FinetuneConfig
from spurcli.generate.losses import to_latents
from spurcli.images import to_tensor


def _seed(*parts: Any) -> int:
    """A 63-bit seed from any parts: independent streams without global RNG state."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int, kind: str, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(_seed("order", kind, seed, epoch))
    return torch.randperm(n, generator=g).tolist()


@dataclass
class Batch:
    """One micro-batch: instance samples first, class samples after them."""

    keys: list[tuple[str, int, int, int]]  # (instance|class, image index, crop top, crop left)
    images: list[torch.Tensor]  # (3, R, R) in [-1, 1], matching keys
    instance_index: torch.Tensor  # (n_instance,) reference index of each instance sample
    prompt_rows: torch.Tensor  # 0 for instance samples, 1 for class samples
    noise: torch.Tensor  # (B, 4, R/8, R/8)
    posterior_noise: torch.Tensor  # the VAE posterior sample's noise, same shape
    timesteps: torch.Tensor  # (B,)
    n_instance: int
    views: torch.Tensor | None = None  # (B, 3) uniform draws: SFSL's random crop (size, place)


class TrainingData:
    """Instance and class images, resized once; every sample is a pure function of its number."""

    def __init__(
        self,
        instance: list[Any],
        classes: list[Any],
        cfg: FinetuneConfig,
        rank: int,
        world: int,
        num_train_timesteps: int = 1000,
        latent_channels: int = 4,
        vae_factor: int = 8,
    ) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world
        # SD 1.x's VAE (and tiny's, mini's): 4 channels at 1/8 of the pixels; others differ
        # (examples/flag_world's: 16 at 1/4), so the caller reads them from the model.
        side = cfg.resolution // vae_factor
        self.latent_shape = (latent_channels, side, side)
        self.sets = {
            "instance": [self._resize(i) for i in instance],
            "class": [self._resize(i) for i in classes],
        }
        self.num_train_timesteps = num_train_timesteps

    def _resize(self, image: Any) -> torch.Tensor:
        """Shorter side to the resolution (bilinear, antialiased, like torchvision's Resize)."""
        r = self.cfg.resolution
        w, h = image.size
        scale = r / min(w, h)
        size = (max(r, round(w * scale)), max(r, round(h * scale)))
        resized = image.resize(size, Image.Resampling.BILINEAR)
        return (to_tensor(resized) * 255).round().to(torch.uint8)  # uint8: 4x less memory

    def _crop(self, image: torch.Tensor, g: torch.Generator | None) -> tuple[int, int]:
        r = self.cfg.resolution
        h, w = image.shape[1:]
        if g is None or self.cfg.center_crop:
            return (h - r) // 2, (w - r) // 2
        top = int(torch.randint(0, h - r + 1, (1,), generator=g))
        left = int(torch.randint(0, w - r + 1, (1,), generator=g))
        return top, left

    def _pixels(self, kind: str, index: int, top: int, left: int) -> torch.Tensor:
        r = self.cfg.resolution
        image = self.sets[kind][index][:, top : top + r, left : left + r]
        return image.float() / 127.5 - 1

    def reference_batch(self) -> torch.Tensor:
        """All reference images, centre-cropped, in [0, 1]: what reference features see."""
        crops = [(i, *self._crop(img, None)) for i, img in enumerate(self.sets["instance"])]
        return torch.stack([(self._pixels("instance", *c) + 1) / 2 for c in crops])

    def batch(self, micro: int) -> Batch:
        """Sample j of process r at micro-step m is the global sample (m * W + r) * B + j of its
        kind; its image, crop, noise and timestep depend on that number only, so W processes
        with batch B see exactly what one process with batch W * B sees."""
        cfg, b = self.cfg, self.cfg.batch_size
        kinds = ["instance"] * b + (["class"] * b if self.sets["class"] else [])
        keys, noise, posterior, timesteps, views = [], [], [], [], []
        for j, kind in enumerate(kinds):
            position = (micro * self.world + self.rank) * b + j % b
            n = len(self.sets[kind])
            index = _permutation(n, cfg.seed, kind, position // n)[position % n]
            g = torch.Generator().manual_seed(_seed("sample", cfg.seed, kind, position))
            keys.append((kind, index, *self._crop(self.sets[kind][index], g)))
            noise.append(torch.randn(self.latent_shape, generator=g))
            posterior.append(torch.randn(self.latent_shape, generator=g))
            timesteps.append(torch.randint(0, self.num_train_timesteps, (1,), generator=g))
            views.append(torch.rand(3, generator=g))  # drawn last: the draws above are as before
            if cfg.noise_offset:  # after every other draw, so that 0 changes none of them
                channels = self.latent_shape[0]
                offset = torch.randn((channels, 1, 1), generator=g)
                noise[-1] = noise[-1] + cfg.noise_offset * offset
        return Batch(
            keys=keys,
            images=[self._pixels(*key) for key in keys],
            instance_index=torch.tensor([k[1] for k in keys[:b]]),
            prompt_rows=torch.tensor([0 if k[0] == "instance" else 1 for k in keys]),
            noise=torch.stack(noise),
            posterior_noise=torch.stack(posterior),
            timesteps=torch.cat(timesteps),
            n_instance=b,
            views=torch.stack(views),
        )


class CropFeatures:
    """The frozen extractor's features of each instance sample's own crop, computed on first use.

    The paired SFSL target: the noised sample is a (random) crop of a reference, so its x0
    estimate is pulled towards the features of that crop, not of the reference's centre crop
    (with --center-crop or square references the two are the same).
    """

    def __init__(self, extractor: Any, device: Any, dtype: torch.dtype, autocast: Any) -> None:
        self.extractor, self.device, self.dtype, self.autocast = extractor, device, dtype, autocast
        self.cache: dict[tuple[str, int, int, int], torch.Tensor] = {}

    @torch.no_grad()
    def features(self, batch: Batch) -> torch.Tensor:
        """(n_instance, D) float32 features of the batch's instance crops, in [0, 1] as the
        reference features see them."""
        rows = []
        n = batch.n_instance
        for key, image in zip(batch.keys[:n], batch.images[:n], strict=True):
            if key not in self.cache:
                pixels = ((image[None] + 1) / 2).to(self.device, self.dtype)
                with self.autocast():
                    self.cache[key] = self.extractor(pixels).float()
            rows.append(self.cache[key])
        return torch.cat(rows)


class LatentCache:
    """The frozen VAE's posterior (mean, std) per (image, crop), computed on first use.

    The VAE never changes, so encoding an image twice is wasted work: with square images or
    --center-crop each image has one crop and the encoder runs once per image for the whole
    run. The posterior is still *sampled* every step, as diffusers does.
    """

    def __init__(self, vae: Any, device: Any) -> None:
        self.vae, self.device = vae, device
        self.cache: dict[tuple[str, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def latents(self, batch: Batch) -> torch.Tensor:
        means, stds = [], []
        for key, image in zip(batch.keys, batch.images, strict=True):
            if key not in self.cache:
                x = image[None].to(self.device, self.vae.dtype)
                dist = self.vae.encode(x).latent_dist
                self.cache[key] = (dist.mean.float(), dist.std.float())
            mean, std = self.cache[key]
            means.append(mean)
            stds.append(std)
        mean, std = torch.cat(means), torch.cat(stds)
        z = mean + std * batch.posterior_noise.to(self.device)
        return to_latents(self.vae, z)  # decode_to_unit undoes exactly this
