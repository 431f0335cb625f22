"""LoRA for `spurcli finetune --lora-rank R`: peft adapters, their checkpoints, diffusers' format.

    from spurcli.generate.lora import add_adapters, adapter_state, save_lora
    add_adapters(unet, text_encoder, cfg)     # freezes the base weights, adds trainable adapters
    state = adapter_state(unet)               # only the adapters' tensors (for a checkpoint)
    save_lora(out / "lora", unet, text_encoder or None)  # pytorch_lora_weights.safetensors
    load_pipeline(run_folder)                 # spurcli.generate.pipelines: base + adapters, fused

The adapters sit on the UNet's attention projections (to_q, to_k, to_v, to_out.0, and add_k/v_proj
where a UNet has them: diffusers' examples/dreambooth/train_dreambooth_lora.py's list) and, when
the text encoder is trained, on CLIP's q/k/v/out_proj; lora_B starts at 0, so step 0 is the base
model. The final file is diffusers' LoRA format, which a plain diffusers user loads with

    pipe = StableDiffusionPipeline.from_pretrained(BASE)
    pipe.load_lora_weights("runs/a/lora")

Adapters are drawn from a generator seeded by the run's seed (never global state), so every
process starts with the same adapters and a resumed run can rebuild them before loading the
checkpoint's values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from spurcli.errors import SpurcliError, UsageError
from spurcli.generate.config import TINY
from spurcli.generate.modules import cast_frozen, quiet_library_progress_bars

LORA_DIR = "lora"  # OUT/lora/ in a LoRA run, in place of OUT/pipeline/
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default file name
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def lora_config(cfg: Any, targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or cfg.lora_rank,  # scale 1 by default, as diffusers' script
        lora_dropout=cfg.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
    )


def add_adapters(unet: Any, text_encoder: Any, cfg: Any, base_dtype: Any = torch.float32) -> None:
    """Freeze ``unet`` and the text encoder in ``base_dtype`` (the compute dtype: frozen weights
    need no fp32 master copy), then add trainable fp32 adapters to them."""

    for model in (unet, text_encoder):
        cast_frozen(model.requires_grad_(False), base_dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the same adapters in every process and on resume
        try:
            unet.add_adapter(lora_config(cfg, cfg.lora_targets or UNET_TARGETS))
        except ValueError as exc:  # peft: none of the target modules is in the model
            raise UsageError(f"--lora-targets: {exc}") from None
        if cfg.train_text_encoder:
            _add_text_encoder_adapter(text_encoder, lora_config(cfg, TEXT_TARGETS))
    for model in (unet, text_encoder):
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # the adapters train in fp32 whatever the base is in


def _add_text_encoder_adapter(text_encoder: Any, config: Any) -> None:
    """peft's own injection, as transformers' `add_adapter` does it (which some transformers
    releases refuse with every released peft); `peft_config` is what peft's state-dict helpers
    read."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, text_encoder, adapter_name="default")
    text_encoder.peft_config = {"default": config}
    text_encoder._hf_peft_config_loaded = True  # transformers: checkpointing keeps input grads


def adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """The adapters' tensors of an (unwrapped) model, peft's names, on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def load_adapter_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """The inverse of `adapter_state`: every adapter tensor must be there, nothing else."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise KeyError(f"adapter tensors differ (missing {missing[:3]}, unexpected {extra[:3]})")
    set_peft_model_state_dict(model, state)


def save_lora(folder: Path, unet: Any, text_encoder: Any | None) -> None:
    """diffusers' LoRA format (``pipe.load_lora_weights(folder)`` reads it), adapters in fp32."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    def layers(model: Any) -> dict[str, torch.Tensor]:
        state = convert_state_dict_to_diffusers(adapter_state(model))
        return {k: v.float() for k, v in state.items()}

    StableDiffusionPipeline.save_lora_weights(
        save_directory=os.fspath(folder),
        unet_lora_layers=layers(unet),
        text_encoder_lora_layers=layers(text_encoder) if text_encoder is not None else None,
        safe_serialization=True,
    )


def lora_base(card: dict[str, Any]) -> tuple[str, str | None]:
    """The base model a LoRA run's adapters apply to, and its commit: the one the run was trained
    on, not whatever the hub's main is now."""
    base = card.get("lora", {}).get("base_model") or card["model"]
    identity = card.get("model_id") or {}
    return base, identity.get("revision") if identity.get("source") == "hub" else None


def fuse_lora(pipe: Any, folder: str | os.PathLike[str], base: str) -> None:
    """The adapters in ``folder`` fused into the base pipeline's weights."""
    quiet_library_progress_bars()
    try:
        pipe.load_lora_weights(os.fspath(folder), weight_name=LORA_WEIGHTS)
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the fused weights stay; the adapter modules go
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SpurcliError(f"cannot apply the LoRA adapters in {folder} to {base}: {exc}") from exc


def run_card(cfg: Any) -> dict[str, Any]:
    """What spurcli-run.json says of a LoRA run: the adapters and the base model they apply to."""
    model = cfg.model
    if model != TINY and Path(model).expanduser().is_dir():
        model = os.fspath(Path(model).expanduser().resolve())  # loadable from any folder
    return {
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha or cfg.lora_rank,
        "dropout": cfg.lora_dropout,
        "unet_targets": cfg.lora_targets or UNET_TARGETS,
        "text_encoder_targets": TEXT_TARGETS if cfg.train_text_encoder else [],
        "base_model": model,
        "base_revision": getattr(cfg, "revision", None),  # hub snapshot pinning, where set
        "weights": f"{LORA_DIR}/{LORA_WEIGHTS}",
    }
