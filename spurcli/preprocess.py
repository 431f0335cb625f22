"""A network behind its eval transform, done in torch: any image batch in [0, 1] goes in.

    import torch
    from spurcli.imagenet import IMAGENET_EVAL
    from spurcli.preprocess import Preprocess, Preprocessed, preprocessed
    model = preprocessed(torch.nn.Flatten(), **IMAGENET_EVAL)   # shorter side 256, centre 224
    model(torch.rand(2, 3, 300, 400)).shape                     # (2, 3 * 224 * 224)
    model.preprocess.normalise(x)                               # only (x - mean) / std

    # A plugin's factory, the plain way (see examples/plugin-template):
    def make_classifier(weights):
        net = build_my_network(weights)                         # (B, 3, 224, 224) -> (B, 1000)
        return Preprocessed(Preprocess((224, 224), mean, std, crop_pct=0.875), net)

Every built-in classifier and extractor is a `Preprocessed`: the resize, centre crop and
normalisation its weights were trained with (timm's data config, open_clip's preprocess,
robustness's test transform) as torch operations. That keeps two things possible that a PIL
transform would rule out: the SFSL loss sends its gradient through the extractor's
pre-processing, and a scoring protocol that prescribes its own resize (`score --preprocess`)
can replace the resize and keep the model's normalisation (`Preprocess.normalise`).

Plugins import this module inside their factories, never at import time: registration must not
import torch (`spurcli plugins` stays fast).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spurcli.errors import SpurcliError

# timm/open_clip name PIL filters; torch antialiases only bilinear and bicubic, which are the
# closest match for the PIL-only ones (lanczos, hamming, box).
TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
CROP_MODES = ("center", "squash", "border")


def resized_shape(h: int, w: int, box: tuple[int, int], mode: str) -> tuple[int, int]:
    """Size to resize an (h, w) image to before cropping or padding it to its final size.

    "center" covers ``box`` keeping the aspect ratio (torchvision's Resize(int) for a square
    box: the shorter side becomes the box side, the longer one is truncated), "border" fits
    inside it, "squash" is the box.
    """
    bh, bw = box
    if mode == "squash":
        return bh, bw
    scale = (min if mode == "border" else max)(bh / h, bw / w)
    return (bh if scale == bh / h else int(h * scale), bw if scale == bw / w else int(w * scale))


def center_crop(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Centre crop to (th, tw), padding with black first where the image is smaller."""
    ph, pw = max(th - x.shape[-2], 0), max(tw - x.shape[-1], 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    h, w = x.shape[-2:]
    top, left = round((h - th) / 2), round((w - tw) / 2)
    return x[..., top : top + th, left : left + tw]


class Preprocess(nn.Module):
    """(B, 3, H, W) in [0, 1], any size -> resized, centre-cropped, normalised (B, 3, h, w).

    The shorter side goes to ``size / crop_pct`` (antialiased, like PIL), then the centre
    ``size`` crop, then ``(x - mean) / std``; all differentiable. ``crop_mode``: "center"
    (timm's default), "squash" (resize to the box, no crop) or "border" (fit inside the box and
    pad with black).
    """

    def __init__(
        self,
        size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        crop_pct: float = 1.0,
        interpolation: str = "bicubic",
        crop_mode: str = "center",
    ) -> None:
        super().__init__()
        self.size = (int(size[-2]), int(size[-1]))
        self.crop_pct = float(crop_pct or 1.0)
        self.mode = TORCH_MODES.get(interpolation, "bicubic")
        self.crop_mode = crop_mode if crop_mode in CROP_MODES else "center"
        # Buffers follow the module across .to(device) and are saved in state dicts.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.resize_and_crop(images))

    def resize_and_crop(self, images: torch.Tensor) -> torch.Tensor:
        """The geometric part of the transform: still in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise SpurcliError(
                f"expected images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}"
            )
        x = images.to(self.mean.dtype)
        th, tw = self.size
        # crop_pct > 1 (rare) would make the box smaller than the crop: never shrink below it
        box = (max(th, math.floor(th / self.crop_pct)), max(tw, math.floor(tw / self.crop_pct)))
        new = resized_shape(x.shape[-2], x.shape[-1], box, self.crop_mode)
        if new != tuple(x.shape[-2:]):
            smooth = self.mode in ("bilinear", "bicubic")
            dtype = x.dtype
            if x.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
                x = x.float()  # torch's CPU antialiased resize has no fp16/bf16 kernel
            x = F.interpolate(
                x,
                size=new,
                mode=self.mode,
                antialias=smooth,
                align_corners=False if smooth else None,
            ).to(dtype)
            if self.mode == "bicubic":  # bicubic overshoots; PIL clips to the pixel range
                x = x.clamp(0.0, 1.0)
        return center_crop(x, th, tw)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Only ``(x - mean) / std``: for images already brought to the input size."""
        return (images.to(self.mean.dtype) - self.mean) / self.std

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, crop_pct={self.crop_pct}, mode={self.mode}, "
            f"crop_mode={self.crop_mode}"
        )


class Preprocessed(nn.Module):
    """``preprocess`` then ``net``: what every built-in classifier and extractor returns.

    ``dim`` (feature extractors): the width of the features, read by SFSL and `compare`.
    ``test_size``: the side a protocol that brings its own resize feeds the network at (timm's
    ``test_input_size``, which the released Spurious ImageNet code uses); None: the height of
    ``preprocess.size``.
    ``channels_last``: on a CPU, hand the network its batch in channels-last memory order,
    which makes torch run its convolutions channels-last (the same values up to float
    rounding; the weights and state dict stay as they are). Much faster for depthwise and 1x1
    convolutions: an effnet-lite classifier's pass takes 0.52-0.78 of its time
    (docs/benchmarks.md). Other devices keep torch's default order: this was measured on CPUs
    only, and cuDNN's float32 depthwise kernels need not gain from it.
    """

    channels_last: bool = False  # a class default too, for an instance made without __init__

    def __init__(
        self,
        preprocess: Preprocess,
        net: nn.Module,
        dim: int | None = None,
        test_size: int | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.net = net
        self.test_size = int(test_size or preprocess.size[0])
        self.channels_last = channels_last
        if dim is not None:
            self.dim = int(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run_net(self.preprocess(images))

    def run_net(self, batch: torch.Tensor) -> torch.Tensor:
        """The network on a batch already pre-processed."""
        if self.channels_last and batch.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.net(batch)

    def extra_repr(self) -> str:
        return "channels_last=True" if self.channels_last else ""


class NormalisedOnly(nn.Module):
    """A `Preprocessed` model fed images already resized and cropped by someone else (a scoring
    protocol): only its normalisation, then its network. ``size``: the side it expects."""

    def __init__(self, model: Preprocessed) -> None:
        super().__init__()
        self.model = model
        self.size = model.test_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.run_net(self.model.preprocess.normalise(images))


class PreLogits(nn.Module):
    """A timm-style classifier's pooled features, just before its last linear layer."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def preprocessed(
    net: nn.Module,
    *,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
    crop_mode: str = "center",
    dim: int | None = None,
    test_size: int | None = None,
    channels_last: bool = False,
) -> Preprocessed:
    """``net`` behind `Preprocess`, from a timm-style data config (``input_size`` (3, h, w) or
    (h, w), ``mean``, ``std``, ``crop_pct``, ``interpolation``, ``crop_mode``), in eval mode."""
    prep = Preprocess(input_size, mean, std, crop_pct, interpolation, crop_mode)
    return Preprocessed(prep, net, dim, test_size, channels_last).eval()


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Random init under a fixed seed, without touching the caller's RNG state.

    Every process of a multi-process run must build the same "random" model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
