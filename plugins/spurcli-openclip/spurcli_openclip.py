"""spurcli plugin: OpenCLIP models as zero-shot ImageNet classifiers, image embedders, and
zero-shot detectors of a class object (``clip-presence``, for `spurcli curate`).

    spurcli score imgs/ --target 94 --classifiers clip,open_clip:ViT-B-16/laion2b_s34b_b88k
    spurcli compare a/ b/ --target 94 --extractors clip

    import torch
    from spurcli.plugins import extractors
    f = extractors().load("open_clip:ViT-B-32", weights="random").module
    f(torch.rand(2, 3, 64, 64)).shape                   # (2, 512) unit vectors; f.dim == 512

``clip`` is open_clip's ViT-B-32 with OpenAI's weights (tag ``openai``), turned into a classifier
over the 1000 ImageNet-1k classes the way the CLIP paper did it: each class name (open_clip's
``IMAGENET_CLASSNAMES``) goes through the 80 ``OPENAI_IMAGENET_TEMPLATES`` ("a photo of a {}.",
...), the normalised text embeddings are averaged and normalised again, and the logits are
``100 * cos(image embedding, class embedding)``. ``open_clip:<arch>/<tag>`` does the same for any
open_clip model and pretrained tag (``open_clip.list_pretrained()``). As extractors, both return the
normalised image embedding.

That zero-shot head costs 80,000 text encodings (minutes on a GPU, tens of minutes on a CPU), so
it is computed once and cached as safetensors under ``$SPURCLI_CACHE`` (default
``~/.cache/spurcli``), keyed by a hash of the architecture, the text tower's weights, the templates
and the class names: a second load reads it, and any change of weights makes a new one.

As a detector, ``clip-presence`` (ViT-B-32 ``openai``; ``clip-presence:<arch>/<tag>`` for any
other) answers "is the class object in the image?" zero-shot: the image embedding's cosine to
the class's prompts (the 80 templates over each of the query's names, averaged), to the spurious
feature's prompts (the same templates over the feature text) and to a neutral prompt ("a
photo."); presence = ``sigmoid(100 * (cos_class - max(cos_feature, cos_neutral)))``, so 0.5
means the class prompt ties with the best alternative (undecided) and the 100 is CLIP's logit
scale. The text embeddings are computed once per query and kept.

Weights: None = the tag's file from the hub (a clear error offline), a local file (the tag, if
given, still sets QuickGELU and preprocessing), or ``"random"`` (the tag may be left out).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from typing import Any

from spurcli import hookimpl
from spurcli.errors import SpurcliError, UsageError

NAME = "clip"
PRESENCE = "clip-presence"
NEUTRAL = "a photo."  # the "neither class nor feature" side of clip-presence
ARCH, TAG = "ViT-B-32", "openai"
CLIP_HUB = "timm/vit_base_patch32_clip_224.openai"  # where open_clip keeps the `openai` weights
LOGIT_SCALE = 100.0  # CLIP's learned temperature, fixed as in open_clip's zero-shot evaluation
CLASSES_PER_BATCH = 10  # 800 texts per text-encoder call
HEAD_FORMAT = "spurcli-clip-zeroshot-v1"  # part of the cache key: bump when the head changes
# open_clip's resize modes in timm's crop vocabulary (see spurcli.preprocess.Preprocess)
CROP_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}


@hookimpl
def register_classifiers(register):
    register(
        NAME,
        make_clip,
        description=f"open_clip {ARCH} {TAG}, zero-shot over ImageNet-1k (80 OpenAI templates)",
        default_weights=f"hub:{CLIP_HUB}",
    )
    register(
        "open_clip:*",
        make_classifier,
        description="any open_clip model, zero-shot over ImageNet-1k: open_clip:<arch>/<tag>",
        default_weights="hub (the pretrained tag's file)",
    )


@hookimpl
def register_feature_extractors(register):
    register(
        NAME,
        make_clip_extractor,
        description=f"open_clip {ARCH} {TAG} normalised image embeddings (512-d)",
        default_weights=f"hub:{CLIP_HUB}",
    )
    register(
        "open_clip:*",
        make_extractor,
        description="normalised image embeddings of any open_clip model: open_clip:<arch>/<tag>",
        default_weights="hub (the pretrained tag's file)",
    )


@hookimpl
def register_detectors(register):
    register(
        PRESENCE,
        make_clip_presence,
        description=f"open_clip {ARCH} {TAG} zero-shot: class prompts vs feature and neutral",
        default_weights=f"hub:{CLIP_HUB}",
    )
    register(
        f"{PRESENCE}:*",
        make_presence,
        description=f"{PRESENCE} with any open_clip model: {PRESENCE}:<arch>/<tag>",
        default_weights="hub (the pretrained tag's file)",
    )


def make_clip_presence(weights: str | None) -> Any:
    return make_presence(weights, f"{ARCH}/{TAG}", name=PRESENCE)


def make_presence(weights: str | None, variant: str, name: str | None = None) -> Any:
    """open_clip ``<arch>/<tag>`` as a zero-shot presence detector (see the module docstring)."""
    import open_clip
    from spurcli_openclip_modules import Presence

    from spurcli.preprocess import Preprocess

    arch, model, prep = create(variant, weights, name=name or f"{PRESENCE}:{variant}")
    preprocess = Preprocess(
        prep["input_size"],
        prep["mean"],
        prep["std"],
        prep["crop_pct"],
        prep["interpolation"],
        prep["crop_mode"],
    )
    return Presence(preprocess, model, open_clip.get_tokenizer(arch)).eval()


def presence_prompts(query: Any) -> dict[str, list[str]]:
    """The texts of each side of the `ObjectQuery` comparison: class, feature, neutral."""
    import open_clip

    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    return {
        "class": [t.format(name) for name in query.names for t in templates],
        "feature": [t.format(query.feature) for t in templates] if query.feature else [],
        "neutral": [NEUTRAL],
    }


def make_clip(weights: str | None) -> Any:
    return make_classifier(weights, f"{ARCH}/{TAG}", name=NAME)


def make_clip_extractor(weights: str | None) -> Any:
    return make_extractor(weights, f"{ARCH}/{TAG}", name=NAME)


def make_classifier(weights: str | None, variant: str, name: str | None = None) -> Any:
    """open_clip ``<arch>/<tag>`` as a zero-shot ImageNet-1k classifier: (B,3,H,W) -> (B,1000)."""
    import open_clip
    from spurcli_openclip_modules import ZeroShot

    from spurcli.preprocess import preprocessed

    arch, model, prep = create(variant, weights, name=name or f"open_clip:{variant}")
    head = zero_shot_head(model, open_clip.get_tokenizer(arch), arch)
    # Only the image tower is kept: the text tower's work is all in `head`.
    return preprocessed(ZeroShot(model.visual, head), **prep)


def make_extractor(weights: str | None, variant: str, name: str | None = None) -> Any:
    """open_clip ``<arch>/<tag>`` image tower: normalised embeddings (B, dim)."""
    import open_clip
    from spurcli_openclip_modules import Embed

    from spurcli.preprocess import preprocessed

    arch, model, prep = create(variant, weights, name=name or f"open_clip:{variant}")
    dim = open_clip.get_model_config(arch)["embed_dim"]
    return preprocessed(Embed(model.visual), dim=dim, **prep)


def create(variant: str, weights: str | None, *, name: str) -> tuple[str, Any, dict[str, Any]]:
    """(arch, open_clip model in eval/float32/CPU, preprocessing kwargs for `preprocessed`)."""
    import open_clip

    from spurcli.preprocess import seeded
    from spurcli.weights import is_random

    arch, _, tag = variant.partition("/")
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see open_clip.list_models())"
        raise UsageError(f"unknown open_clip architecture '{arch}'{hint}")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag and not cfg:
        raise UsageError(
            f"open_clip {arch} has no pretrained tag '{tag}'; tags: {', '.join(tags) or 'none'}"
        )
    if weights is None and not tag:
        raise UsageError(
            f"'{name}' needs a pretrained tag for its default weights: open_clip:{arch}/<tag> "
            f"(tags: {', '.join(tags) or 'none'}), or pass a local file or random weights"
        )
    options = {
        # the tag's training setup, also for a local copy of its file or a random stand-in
        "force_quick_gelu": bool(cfg.get("quick_gelu", False)),
        "force_preprocess_cfg": {
            k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg
        },
    }
    if is_random(weights):
        with seeded():
            model = open_clip.create_model(arch, pretrained=None, **options)
    else:
        path = os.fspath(weights) if weights is not None else _download(cfg, variant, name)
        try:  # open_clip reads safetensors, or torch.load(weights_only=True)
            model = open_clip.create_model(arch, pretrained=path, **options)
        except Exception as exc:
            from spurcli.weights import load_error_text

            first = load_error_text(exc)
            raise SpurcliError(f"{path} does not hold open_clip {arch} weights: {first}") from None
    pcfg = open_clip.get_model_preprocess_cfg(model)
    size = pcfg["size"]
    prep = {
        "input_size": (size, size) if isinstance(size, int) else tuple(size),
        "mean": tuple(pcfg["mean"]),
        "std": tuple(pcfg["std"]),
        "interpolation": pcfg.get("interpolation", "bicubic"),
        "crop_mode": CROP_MODES.get(pcfg.get("resize_mode", "shortest"), "center"),
        "crop_pct": 1.0,  # CLIP resizes the shorter side to the input size, then crops
    }
    return arch, model.eval().float(), prep


def _download(cfg: dict[str, Any], variant: str, name: str) -> str:
    """Local path of a pretrained tag's weights (hub download or cache; clear error offline)."""
    from spurcli.weights import hub_file

    if cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" (default file name) or "org/repo/file.bin"
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        if filename == "open_clip_pytorch_model.bin":
            try:  # repos that have it also carry a safetensors copy: prefer it
                return hub_file(repo, "open_clip_model.safetensors", model=name)
            except SpurcliError:
                pass
        return hub_file(repo, filename, model=name)
    url = cfg.get("url")
    if not url:
        raise SpurcliError(f"open_clip:{variant} has no download source; pass a local file")
    import open_clip

    from spurcli.weights import file_identity, record, weights_hint

    try:
        path = open_clip.download_pretrained_from_url(url)
    except Exception as exc:
        raise SpurcliError(
            f"weights for '{name}' are not available: need {url} ({type(exc).__name__}); "
            f"download it where online and pass the local file (e.g. {weights_hint(name)})"
        ) from exc
    record({**file_identity(path), "source": "url", "url": url})
    return path


# --- the zero-shot head and its cache ---------------------------------------------------------


def zero_shot_head(model: Any, tokenizer: Any, arch: str) -> Any:
    """Class embeddings (1000, D) for ImageNet-1k, from the cache or computed once and cached."""
    import open_clip
    from safetensors.torch import load_file, save_file

    from spurcli.console import log
    from spurcli.fileio import atomic_path
    from spurcli.weights import cache_dir  # spurcli's cache, shared with the hash cache

    classnames = list(open_clip.IMAGENET_CLASSNAMES)
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    key = head_key(model, arch, classnames, templates)
    path = cache_dir() / "clip-zeroshot" / f"{arch.replace('/', '-')}-{key[:24]}.safetensors"
    if path.is_file():
        try:
            head = load_file(str(path))["head"]
            if head.shape[0] == len(classnames):
                return head
        except Exception as exc:  # a damaged cache file is rebuilt, never trusted
            log.warning("ignoring unreadable zero-shot head cache %s: %s", path, exc)
    log.info(
        "computing the zero-shot head of %s (%d classes x %d templates), once; cached in %s",
        arch,
        len(classnames),
        len(templates),
        path,
    )
    # The factory hands back a CPU model, but the head is worth a GPU when there is one:
    # seconds there against tens of minutes on a CPU.
    head = compute_head(model.to(_fastest_device()), tokenizer, classnames, templates).cpu()
    model.to("cpu")
    with atomic_path(path) as tmp:
        save_file({"head": head.contiguous()}, str(tmp), metadata={"arch": arch, "key": key})
    return head


def head_key(model: Any, arch: str, classnames: list[str], templates: list[str]) -> str:
    """Hash of everything the head depends on: the text tower's tensors, prompts, names.

    Hashing the weights themselves (not a file name or tag) makes a local copy, a hub download
    and a "random" init with the same values share one cache entry, and any change a new one.
    """
    import torch

    h = hashlib.sha256()
    h.update(json.dumps([HEAD_FORMAT, arch, classnames, templates]).encode())
    for name, tensor in model.state_dict().items():
        if name.startswith("visual.") or name in ("logit_scale", "logit_bias"):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def compute_head(model: Any, tokenizer: Any, classnames: list[str], templates: list[str]) -> Any:
    """CLIP prompt ensembling: per class, the normalised mean of its normalised template texts."""
    import torch
    import torch.nn.functional as F

    from spurcli.console import track

    rows = []
    device = next(model.parameters()).device
    starts = range(0, len(classnames), CLASSES_PER_BATCH)
    with torch.no_grad():
        for start in track(starts, "CLIP zero-shot head", total=len(starts)):
            names = classnames[start : start + CLASSES_PER_BATCH]
            texts = [t.format(c) for c in names for t in templates]
            emb = encode_text(model, tokenizer(texts).to(device))
            rows.append(F.normalize(emb.view(len(names), len(templates), -1).mean(1), dim=-1))
    return torch.cat(rows).float()


def _fastest_device() -> Any:
    import torch

    if torch.cuda.is_available():  # this process's GPU (set per rank in multi-GPU runs)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def encode_text(model: Any, ids: Any) -> Any:
    """``model.encode_text(ids, normalize=True)``, without the compute spent on padding.

    For open_clip's standard CLIP text tower (causal mask, features taken at the end-of-text
    token) nothing after the batch's last end-of-text token can reach any pooled feature, so the
    batch is cut there: ~20 instead of 77 tokens for these prompts, ~4x less work. The
    positional embedding and mask are sliced to match for this call and restored after.
    """
    import open_clip
    import torch

    n = int(ids.argmax(dim=-1).max()) + 1  # end-of-text has the highest token id
    mask = getattr(model, "attn_mask", None)
    causal = (
        mask is not None
        and mask.ndim == 2
        and torch.equal(torch.isinf(mask), torch.ones_like(mask, dtype=torch.bool).triu(1))
    )
    if not (
        type(model) is open_clip.CLIP
        and getattr(model, "text_pool_type", None) == "argmax"
        and causal
        and n < ids.shape[1]
    ):
        return model.encode_text(ids, normalize=True)
    pos = model.positional_embedding
    try:
        model.positional_embedding = torch.nn.Parameter(pos[:n], requires_grad=False)
        model.attn_mask = mask[:n, :n]
        return model.encode_text(ids[:, :n], normalize=True)
    finally:
        model.positional_embedding = pos
        model.attn_mask = mask
