"""spurcli plugin: the MadryLab adversarially robust ResNet-50 (ImageNet, L2, eps = 3).

    spurcli finetune cfg.toml --extractor robust-resnet50              # the SFSL feature space
    spurcli score imgs/ --target 94 --classifiers robust-resnet50 \
        --weights robust-resnet50=imagenet_l2_3_0.pt

    import torch
    from spurcli.plugins import extractors
    f = extractors().load("robust-resnet50", weights="random").module
    f(torch.rand(2, 3, 64, 64)).shape                                   # (2, 2048); f.dim == 2048

Default weights: ``resnet50_l2_eps3.ckpt`` from the hub repo ``madrylab/robust-imagenet-models``
(robust-models-transfer, 62.8% clean accuracy). The robustness library's own
``imagenet_l2_3_0.pt`` (57.9%, the model Salient/Spurious ImageNet used) is not on the hub: pass
it as a local file. Both are ``robustness`` checkpoints: a dict with ``model`` (the
DataParallel-wrapped AttackerModel: ``module.model.*`` = a torchvision ResNet-50,
``module.attacker.model.*`` a second copy, ``module.normalizer.*`` the ImageNet mean/std),
``optimizer``, ``schedule``, ``epoch``, ``amp`` and ``nat_prec1``/``adv_prec1``. They are read
directly (weights-only, zip or legacy format); the ``robustness`` package itself no longer imports
with current torchvision. A plain ResNet-50 state dict (with or without ``module.``) works too.
Inputs in [0, 1]; resizing (shorter side 256, centre 224, as robustness evaluated) and the
ImageNet normalisation happen inside.
"""

from __future__ import annotations

from typing import Any

from spurcli import hookimpl
from spurcli.errors import SpurcliError
from spurcli.imagenet import IMAGENET_EVAL

NAME = "robust-resnet50"
ALIASES = ("madry-l2-eps3",)
HUB_REPO = "madrylab/robust-imagenet-models"
HUB_FILE = "resnet50_l2_eps3.ckpt"
DIM = 2048  # ResNet-50 pooled features
# robustness's ImageNet test transform: Resize(256), CenterCrop(224), then its normalizer.
PREPROCESS = IMAGENET_EVAL
# Parts of robustness's AttackerModel that are not the classifier: the attacker holds a second
# reference to the same network, the normalizer only the mean/std applied here anyway.
DROPPED = ("attacker.", "normalizer.")


@hookimpl
def register_classifiers(register):
    register(
        NAME,
        make_classifier,
        aliases=ALIASES,
        description="MadryLab robust ResNet-50, ImageNet L2 eps=3",
        default_weights=f"hub:{HUB_REPO}/{HUB_FILE}",
    )


@hookimpl
def register_feature_extractors(register):
    register(
        NAME,
        make_extractor,
        aliases=ALIASES,
        description="MadryLab robust ResNet-50 pooled features (2048-d), ImageNet L2 eps=3",
        default_weights=f"hub:{HUB_REPO}/{HUB_FILE}",
    )


def make_classifier(weights: str | None) -> Any:
    from spurcli.preprocess import preprocessed

    return preprocessed(build(weights), **PREPROCESS)


def make_extractor(weights: str | None) -> Any:
    from torch import nn

    from spurcli.preprocess import preprocessed

    net = build(weights)
    net.fc = nn.Identity()  # the 2048-d average-pooled features, before the classifier
    return preprocessed(net, dim=DIM, **PREPROCESS)


def build(weights: str | None) -> Any:
    """A torchvision ResNet-50 (eval, float32, CPU) with the robust, a local or random weights."""
    import torch
    from torchvision.models import resnet50

    from spurcli.preprocess import seeded
    from spurcli.weights import hub_file, is_random, load_state_dict

    if is_random(weights):
        with seeded():
            return resnet50().eval()
    path = weights if weights is not None else hub_file(HUB_REPO, HUB_FILE, model=NAME)
    # Built on the meta device and then given the file's tensors: no time spent on a random
    # init that would be overwritten (about a second for ResNet-50 on a CPU).
    with torch.device("meta"):
        net = resnet50()
    # load_state_dict unwraps the checkpoint's `model` (or `state_dict`) entry and reads it
    # weights-only: the optimizer, schedule and accuracy entries are never unpickled as code.
    net.load_state_dict(
        resnet_state(load_state_dict(path), net.state_dict(), str(path)), assign=True
    )
    return net.eval().float()


def resnet_state(state: dict[str, Any], target: dict[str, Any], source: str) -> dict[str, Any]:
    """The ResNet-50 part of a robustness (or plain) state dict, checked key by key."""
    import torch

    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    if any(k.startswith(DROPPED) for k in state) or all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    # BatchNorm's step counters do not change the outputs; older saves lack them.
    counters = {k: torch.zeros((), dtype=torch.long) for k in target if k.endswith("_tracked")}
    state = {**counters, **state}
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k} {tuple(state[k].shape)} (needs {tuple(v.shape)})"
        for k, v in target.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        problems = [
            _some(f"{len(missing)} missing", missing),
            _some(f"{len(unexpected)} unexpected", unexpected),
            _some(f"{len(wrong)} of the wrong shape", wrong),
        ]
        raise SpurcliError(
            f"{source} does not hold ResNet-50 weights (expected a robustness checkpoint with "
            f"module.model.* keys or a plain ResNet-50 state dict): "
            + "; ".join(p for p in problems if p)
        )
    return state


def _some(label: str, items: list[str], n: int = 3) -> str:
    if not items:
        return ""
    more = ", ..." if len(items) > n else ""
    return f"{label} ({', '.join(items[:n])}{more})"
