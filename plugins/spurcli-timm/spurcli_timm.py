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

Each model is a `spurcli.preprocess.Preprocessed`: timm's eval transform for the model (its data
config), done in torch in front of the network, so any (B, 3, H, W) batch in [0, 1] goes in;
"random" weights come from `spurcli.preprocess.seeded`, identical in every process and run.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from spurcli import hookimpl
from spurcli.errors import SpurcliError, UsageError

RESNET = "resnet50.a1_in1k"
VIT = "vit_base_patch16_224.augreg2_in21k_ft_in1k"


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
        description="any timm ImageNet-1k or -21k classifier: timm:<name> or timm:<name>.<tag>",
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
    """timm model ``variant`` as an ImageNet classifier taking any image size in [0, 1]: a 1k
    head, or a 21k one (21843 or 21841 outputs; core reads its 1k classes' columns)."""
    from spurcli.evaluate.spurious_imagenet import ACCEPTED_OUTPUTS
    from spurcli.preprocess import preprocessed

    net = create(variant, weights, name=name or f"timm:{variant}")
    if net.num_classes not in ACCEPTED_OUTPUTS:
        raise SpurcliError(
            f"timm model '{variant}' predicts {net.num_classes} classes; a classifier needs "
            f"{' or '.join(str(n) for n in ACCEPTED_OUTPUTS)} outputs (ImageNet-1k, or an "
            "ImageNet-21k head): use it as a feature extractor, or pick an ImageNet tag "
            "(`timm.list_pretrained('<name>.*in1k')`)"
        )
    return preprocessed(net, **data_config(net), test_size=protocol_size(net))


def make_extractor(weights: str | None, variant: str) -> Any:
    """timm model ``variant`` as a feature extractor: pooled pre-logits features (B, dim)."""
    from spurcli.preprocess import PreLogits, preprocessed

    net = create(variant, weights, name=f"timm:{variant}")
    dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return preprocessed(PreLogits(net), dim=dim, **data_config(net), test_size=protocol_size(net))


def create(variant: str, weights: str | None, *, name: str) -> Any:
    """The timm network ``variant`` (eval, float32, CPU) with ``weights`` loaded.

    ``name`` is what the user called it, so that errors say which ``--weights`` to pass.
    """
    import timm
    from timm.models import split_model_name_tag

    from spurcli.preprocess import seeded
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

    from spurcli.preprocess import seeded
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


def protocol_size(net: Any) -> int:
    """The side the Spurious ImageNet protocol evaluates ``net`` at (its test_input_size)."""
    from spurcli.evaluate.spurious_imagenet import protocol_input_size

    return protocol_input_size(getattr(net, "pretrained_cfg", None) or {})


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
    from spurcli.weights import load_error_text

    return load_error_text(exc)


# --- what earlier versions of this plugin shared with the others -----------------------------


def __getattr__(name: str) -> Any:
    # These lived here before they moved into core; third-party plugins may still import them.
    if name in ("Preprocess", "Preprocessed", "PreLogits", "preprocessed", "seeded"):
        from spurcli import preprocess

        return getattr(preprocess, name)
    if name == "IMAGENET_EVAL":
        from spurcli.imagenet import IMAGENET_EVAL

        return IMAGENET_EVAL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
