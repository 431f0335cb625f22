"""spurcli plugin: timm image classifiers and feature extractors.

    spurcli score imgs/ --target hummingbird --classifiers resnet,vit,timm:convnext_tiny.fb_in1k
    spurcli compare a/ b/ --target 94 --extractors timm:resnet50.a1_in1k

    import torch
    from spurcli.plugins import classifiers, extractors
    model = classifiers().load("timm:test_resnet", weights="random").module
    model(torch.rand(2, 3, 37, 53)).shape                       # (2, 1000): resizing is inside
    extractors().load("timm:test_vit", weights="random").module.dim   # 64

Names: ``resnet`` (timm ``resnet50.a1_in1k``), ``vit``
(``vit_base_patch16_224.augreg2_in21k_ft_in1k``), ``timm:<any timm model name>`` with or without
a pretrained tag (``timm:resnet18``, ``timm:resnet18.a1_in1k``) as classifiers, and
``timm:<name>`` as extractors (the pre-logits features, ``dim`` = the model's head width).
Weights: None = the model's file on the hub (a clear error offline), a local file (safetensors or
a weights-only torch checkpoint, in timm's layout), or ``"random"``.

The plugin also holds what the other built-in plugins share through their dependency on
spurcli-timm (core stays free of timm): `preprocessed()` puts a network behind a differentiable
torch-side resize, centre crop and normalisation, so any (B, 3, H, W) batch in [0, 1] goes in, and
`seeded()` makes "random" weights identical in every process and run.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import os
import types
from collections.abc import Iterator
from typing import Any

from spurcli import hookimpl
from spurcli.errors import SpurcliError, UsageError

RESNET = "resnet50.a1_in1k"
VIT = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
NUM_CLASSES = 1000  # classifiers must speak ImageNet-1k
# The classic ImageNet eval transform (torchvision's reference, robustness's test set): shorter side
# to 256 (224 / 0.875), centre 224 crop, bilinear, ImageNet mean/std. For `preprocessed(**...)`.
IMAGENET_EVAL = {
    "input_size": (3, 224, 224),
    "crop_pct": 0.875,
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


@hookimpl
def register_classifiers(register):
    register(
        "resnet",
        make_resnet,
        description=f"timm {RESNET}: ResNet-50, ImageNet-1k",
        default_weights=f"hub:timm/{RESNET}",
    )
    register(
        "vit",
        make_vit,
        description=f"timm {VIT}: ViT-B/16, ImageNet-21k then 1k",
        default_weights=f"hub:timm/{VIT}",
    )
    register(
        "timm:*",
        make_classifier,
        description="any timm ImageNet-1k model: timm:<name> or timm:<name>.<tag>",
        default_weights="hub (timm's pretrained file for the name)",
    )


@hookimpl
def register_feature_extractors(register):
    register(
        "timm:*",
        make_extractor,
        description="pre-logits features of any timm model: timm:<name>[.<tag>]",
        default_weights="hub (timm's pretrained file for the name)",
    )


def make_resnet(weights: str | None) -> Any:
    return make_classifier(weights, RESNET, name="resnet")


def make_vit(weights: str | None) -> Any:
    return make_classifier(weights, VIT, name="vit")


def make_classifier(weights: str | None, variant: str, name: str | None = None) -> Any:
    """timm model ``variant`` as an ImageNet-1k classifier taking any image size in [0, 1]."""
    net = create(variant, weights, name=name or f"timm:{variant}")
    if net.num_classes != NUM_CLASSES:
        raise SpurcliError(
            f"timm model '{variant}' predicts {net.num_classes} classes, not the "
            f"{NUM_CLASSES} ImageNet-1k classes: use it as a feature extractor, or pick an "
            "ImageNet-1k tag (`timm.list_pretrained('<name>.*in1k')`)"
        )
    return preprocessed(net, **data_config(net))


def make_extractor(weights: str | None, variant: str) -> Any:
    """timm model ``variant`` as a feature extractor: pooled pre-logits features (B, dim)."""
    net = create(variant, weights, name=f"timm:{variant}")
    dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return preprocessed(_nn().PreLogits(net), dim=dim, **data_config(net))


def create(variant: str, weights: str | None, *, name: str) -> Any:
    """The timm network ``variant`` (eval, float32, CPU) with ``weights`` loaded.

    ``name`` is what the user called it, so that errors say which ``--weights`` to pass.
    """
    import timm
    from timm.models import split_model_name_tag

    from spurcli.weights import is_random, load_state_dict

    if variant.startswith("hf-hub:"):  # timm reads the model's config from the hub repo
        return _create_from_hub_repo(variant, weights, name=name)
    arch, _ = split_model_name_tag(variant)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see `timm.list_models()`)"
        raise UsageError(f"unknown timm model '{variant}'{hint}")
    try:
        if is_random(weights):
            with seeded():
                net = timm.create_model(variant, pretrained=False)
        else:
            path = os.fspath(weights) if weights is not None else _hub_weights(variant, name)
            state = _strip_prefix(load_state_dict(path), "module.")
            # An in-memory state dict as the pretrained source: timm's own loading then applies
            # the model's checkpoint filter (older layouts) and checks every key and shape.
            try:
                net = timm.create_model(
                    variant, pretrained=True, pretrained_cfg_overlay={"state_dict": state}
                )
            except (RuntimeError, KeyError, ValueError) as exc:
                raise SpurcliError(
                    f"{path} does not hold weights of timm model '{variant}': {_first_line(exc)}"
                ) from exc
    except RuntimeError as exc:  # e.g. "Invalid pretrained tag (x) for resnet50."
        tags = timm.list_pretrained(f"{arch}.*")
        hint = f"; tags of {arch}: {', '.join(tags[:8])}" if tags else ""
        reason = _first_line(exc).rstrip(".")
        raise UsageError(f"timm model '{variant}': {reason}{hint}") from exc
    return net.eval().float()


def _create_from_hub_repo(variant: str, weights: str | None, *, name: str) -> Any:
    """``hf-hub:<org>/<repo>`` models: config (and default weights) come from that repo."""
    import timm

    from spurcli.weights import hub_snapshot, is_random, load_state_dict, offline, record

    repo = variant.removeprefix("hf-hub:")
    try:
        with seeded():
            net = timm.create_model(variant, pretrained=weights is None)
    except Exception as exc:
        raise SpurcliError(
            f"timm model '{variant}' is not available{' offline' if offline() else ''}: its "
            f"config and weights come from the hub repo {repo} ({type(exc).__name__}: "
            f"{_first_line(exc)}); download it where online, or use a timm model name"
        ) from exc
    if weights is None:  # timm downloaded them itself: the commit its cache now holds
        record(hub_snapshot(repo))
    if weights is not None and not is_random(weights):
        state = _strip_prefix(load_state_dict(weights), "module.")
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise SpurcliError(
                f"{weights} does not hold weights of timm model '{variant}': {_first_line(exc)}"
            ) from exc
    return net.eval().float()


def data_config(net: Any) -> dict[str, Any]:
    """The eval preprocessing timm trained ``net`` with: input_size, crop_pct, mean, std, ..."""
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(net)


def _hub_weights(variant: str, name: str) -> str:
    """Local path of the model's weights file on the hub (downloaded, or from the cache)."""
    from timm.models import get_pretrained_cfg

    from spurcli.weights import hub_file

    cfg = get_pretrained_cfg(variant)
    if cfg is None or not cfg.hf_hub_id:
        raise SpurcliError(
            f"timm model '{variant}' has no weights on the hub; pass a local file as the "
            f"weights of '{name}' or use random weights"
        )
    if cfg.hf_hub_filename:
        return hub_file(cfg.hf_hub_id, cfg.hf_hub_filename, model=name)
    try:  # every timm hub repo has model.safetensors; a few old ones only pytorch_model.bin
        return hub_file(cfg.hf_hub_id, "model.safetensors", model=name)
    except SpurcliError as first:
        try:
            return hub_file(cfg.hf_hub_id, "pytorch_model.bin", model=name)
        except SpurcliError:
            raise first from None


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Drop ``prefix`` (DataParallel's ``module.``) when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- shared with the other built-in plugins -------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Random init under a fixed seed, without touching the caller's RNG state.

    Every process of a multi-process run must build the same "random" model.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def preprocessed(
    net: Any,
    *,
    input_size: tuple[int, int, int] | tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
    crop_mode: str = "center",
    dim: int | None = None,
) -> Any:
    """``net`` behind a resize, centre crop and normalisation done in torch.

    Images (B, 3, H, W) in [0, 1], any H and W, go in; ``net`` sees what its eval transform
    would give it: the shorter side resized to ``size / crop_pct`` (antialiased, like PIL), then
    the centre ``size`` crop, then ``(x - mean) / std``. Everything is differentiable, so the
    result can sit inside a loss (the SFSL extractor). ``crop_mode``: "center" (timm's default),
    "squash" (resize to the box, no crop) or "border" (fit inside the box and pad with black).
    ``dim``: set on the result for feature extractors.
    """
    size = tuple(int(s) for s in input_size[-2:])
    nn_ = _nn()
    prep = nn_.Preprocess(size, mean, std, crop_pct, interpolation, crop_mode)
    return nn_.Preprocessed(prep, net, dim).eval()


def __getattr__(name: str) -> Any:
    # The torch module classes (Preprocess, Preprocessed, PreLogits) are built on first use so
    # that importing this plugin for registration imports no torch.
    if name in ("Preprocess", "Preprocessed", "PreLogits"):
        return getattr(_nn(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resized_shape(h: int, w: int, box: tuple[int, int], mode: str) -> tuple[int, int]:
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


@functools.cache
def _nn() -> types.SimpleNamespace:
    import torch
    import torch.nn.functional as F
    from torch import nn

    # timm/open_clip name PIL filters; torch antialiases only bilinear and bicubic, which are
    # the closest match for the PIL-only ones (lanczos, hamming, box).
    modes = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}

    class Preprocess(nn.Module):
        """(B,3,H,W) in [0,1], any size -> resized, centre-cropped, normalised (B,3,h,w)."""

        def __init__(self, size, mean, std, crop_pct, interpolation, crop_mode) -> None:
            super().__init__()
            self.size = size
            self.crop_pct = float(crop_pct or 1.0)
            self.mode = modes.get(interpolation, "bicubic")
            self.crop_mode = crop_mode if crop_mode in ("squash", "border") else "center"
            # Buffers follow the module across .to(device) and are saved in state dicts.
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if images.ndim != 4 or images.shape[1] != 3:
                raise SpurcliError(
                    f"expected images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}"
                )
            x = images.to(self.mean.dtype)
            th, tw = self.size
            # crop_pct > 1 (rare) would make the box smaller than the crop: never shrink below it
            box = (max(th, math.floor(th / self.crop_pct)), max(tw, math.floor(tw / self.crop_pct)))
            new = _resized_shape(x.shape[-2], x.shape[-1], box, self.crop_mode)
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
            x = _center(x, th, tw)
            return (x - self.mean) / self.std

        def extra_repr(self) -> str:
            return (
                f"size={self.size}, crop_pct={self.crop_pct}, mode={self.mode}, "
                f"crop_mode={self.crop_mode}"
            )

    def _center(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
        """Centre crop to (th, tw), padding with black first where the image is smaller."""
        ph, pw = max(th - x.shape[-2], 0), max(tw - x.shape[-1], 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
        top, left = round((h - th) / 2), round((w - tw) / 2)
        return x[..., top : top + th, left : left + tw]

    class Preprocessed(nn.Module):
        """``preprocess`` then ``net``: what every built-in classifier and extractor returns."""

        def __init__(self, preprocess: nn.Module, net: nn.Module, dim: int | None) -> None:
            super().__init__()
            self.preprocess = preprocess
            self.net = net
            if dim is not None:
                self.dim = int(dim)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(self.preprocess(images))

    class PreLogits(nn.Module):
        """A timm classifier's pooled features just before the last linear layer."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    return types.SimpleNamespace(
        Preprocess=Preprocess, Preprocessed=Preprocessed, PreLogits=PreLogits
    )
