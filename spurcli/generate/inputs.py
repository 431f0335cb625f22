"""What a finetune run reads and loads before it trains: the class, the prompts, the reference
images (so a typo fails in seconds), the base pipeline, its noise schedule, the SFSL extractor."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spurcli import imagenet, plugins
from spurcli.errors import SpurcliError
from spurcli.generate.config import FinetuneConfig
from spurcli.generate.modules import set_training_attention_slicing
from spurcli.generate.pipelines import load_pipeline, model_identity, resolve_model
from spurcli.generate.prompts import fill_prompt
from spurcli.images import read_folder
from spurcli.records import FINETUNE_CARD

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What a run reads before anything slow (so that a typo fails in seconds)."""

    target: Any  # the ImageNet class (`spurcli.imagenet.ImageNetClass`)
    instance_prompt: str
    class_prompt: str
    references: list[tuple[Path, Any]]  # (file, PIL image) of each reference image


def read_inputs(cfg: FinetuneConfig) -> Inputs:
    """The class, the prompts with the identifier filled in, the reference images."""

    target = imagenet.resolve_class(cfg.target)  # type: ignore[arg-type]
    instance_prompt = fill_prompt(cfg.instance_prompt, cfg.identifier, cfg.class_noun)
    class_prompt = fill_prompt(cfg.class_prompt, cfg.identifier, cfg.class_noun)
    references, _ = read_folder(cfg.instance_dir, strict=True)  # type: ignore[arg-type]
    if cfg.sfsl_weight != 0:  # an unknown name fails now, with suggestions (unused without)
        plugins.extractors().resolve(cfg.extractor)
    return Inputs(target, instance_prompt, class_prompt, references)


@dataclass
class Models:
    """The base model and the SFSL extractor, loaded (the trained parts not yet prepared)."""

    pipe: Any  # the base StableDiffusionPipeline: its unet, text_encoder, vae, tokenizer
    model_id: dict[str, Any] | None  # `base_identity`; None on other processes unless hub
    noise_scheduler: Any  # DDPM, from the base model's scheduler config
    extractor: Any | None  # the SFSL feature extractor, frozen, in the compute dtype; None: no SFSL
    extractor_info: dict[str, Any] | None  # the run record's "extractor"


def load_training_models(cfg: FinetuneConfig, out: Path, accelerator: Any) -> Models:
    """The base pipeline (the hub commit a resumed run started from), the SFSL extractor."""
    from diffusers import DDPMScheduler

    device, weight_dtype = accelerator.device, compute_dtype(cfg)
    base = base_model(cfg, out)
    pipe = load_pipeline(base)
    main = accelerator.is_main_process
    model_id = base_identity(base, out, cfg) if main or base.kind == "hub" else None
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    extractor, extractor_info = None, None
    if cfg.sfsl_weight != 0:
        loaded = plugins.extractors().load(cfg.extractor, cfg.extractor_weights)
        extractor = loaded.module.eval().requires_grad_(False).to(device, weight_dtype)
        extractor_info = {
            "name": loaded.name,
            "weights": loaded.weights,
            "weights_id": loaded.weights_id,
            "plugin": loaded.plugin,
            "dim": getattr(loaded.module, "dim", None),
        }
    if str(cfg.attention_slicing) != "off":
        # Query slices recomputed in backward (diffusers' own slicing saves nothing in training);
        # the VAE too: its mid-block attention is 4096 x 4096 per image at 512 px.
        set_training_attention_slicing(pipe.unet, cfg.attention_slicing)
        set_training_attention_slicing(pipe.vae, cfg.attention_slicing)
        pipe.vae.enable_slicing()  # and decode one image of a batch at a time
    return Models(pipe, model_id, noise_scheduler, extractor, extractor_info)


def compute_dtype(cfg: FinetuneConfig) -> torch.dtype:
    """The dtype of the frozen parts (--mixed-precision); trained weights stay fp32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)


def base_model(cfg: FinetuneConfig, out: Path) -> Any:
    """The `ModelRef` to fine-tune: ``cfg.model`` at ``cfg.revision``; a resumed run that did not
    pin one stays on the hub commit it started from, even if the hub's main moved since (a
    preempted cluster job resumed a day later must not mix two base models)."""

    started = _started_commit(cfg, out)
    return resolve_model(cfg.model, revision=cfg.revision or started)


def base_identity(base: Any, out: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    """`model_identity` of the loaded base model; a resumed run must be on its first commit."""

    identity = model_identity(base)
    started = _started_commit(cfg, out)
    if started and identity.get("revision") != started:
        raise SpurcliError(
            f"{out} was started from {cfg.model} at commit {started}, but --revision "
            f"{cfg.revision} is commit {identity.get('revision')}; resume with --revision "
            f"{started} (or no --revision), or fine-tune into a new --output-dir"
        )
    return identity


def _started_commit(cfg: FinetuneConfig, out: Path) -> str | None:
    """The hub commit the run in ``out`` recorded for ``cfg.model``, when resuming it."""
    if not cfg.resume:
        return None
    try:
        card = json.loads((out / FINETUNE_CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    recorded = card.get("model_id") or {}
    if card.get("model") != cfg.model or recorded.get("source") != "hub":
        return None
    return recorded.get("revision")
