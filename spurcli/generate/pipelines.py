"""Loading Stable Diffusion: a hub id, a local diffusers folder, a finetune run, `tiny` or `mini`.

    from spurcli.generate.pipelines import load_pipeline, resolve_model
    pipe = load_pipeline("tiny")                      # random tiny SD from config, offline, ~0.1 s
    pipe = load_pipeline("mini")                      # the quickstart's trained SD (spurcli.generate.mini)
    pipe = load_pipeline("runs/hummingbird")          # a `spurcli finetune` output folder
    pipe = load_pipeline("runs/lora")                 # a LoRA run: base model + adapters, fused
    pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", scheduler="dpm")
    ref = resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5", revision="<commit>")
    model_identity(ref)   # {"source": "hub", "repo": ..., "revision": <the resolved commit>}
    image = pipe("a photo of sks flower", num_inference_steps=4, height=64, width=64).images[0]

`tiny` has the structure of Stable Diffusion 1.x (VAE with 8x downsampling and 4 latent channels,
a cross-attention UNet, a CLIP text encoder and a byte-level CLIP tokenizer) at a few hundred
thousand parameters, with weights drawn from a fixed seed, so it is the same model in every process
and on every machine. It exists for tests and smoke runs: its images are noise-like by design.

Pipelines load in float32 unless asked otherwise (float16 is slow or unsupported on CPU), without
the safety checker (this is a research tool that generates and measures images; the checker's
black images would only corrupt the measurements), and never with `trust_remote_code`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError, UsageError
from spurcli.generate.config import MINI, SCHEDULERS, TINY
from spurcli.records import FINETUNE_CARD, PIPELINE_DIR
from spurcli.weights import cached_commit, folder_identity, offline


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from, as resolved from what the user typed."""

    kind: str  # "tiny", "mini", "run" (a finetune output), "local" (a diffusers folder) or "hub"
    location: str  # "tiny", "mini", a folder path (a run's pipeline/ or lora/), or a hub id
    run: dict[str, Any] | None = None  # the run's spurcli-run.json, for kind == "run"
    revision: str | None = None  # hub models only: a branch, tag or commit (None: main)

    @property
    def identifier(self) -> str | None:
        """The token that replaces `[V]` in prompts (only a finetune run has one)."""
        return (self.run or {}).get("identifier")


def resolve_model(model: str | os.PathLike[str], revision: str | None = None) -> ModelRef:
    """Classify ``model`` without loading any weights; ``revision`` pins a hub model."""
    ref = _resolve_model(model)
    if revision is None:
        return ref
    if ref.kind != "hub":
        kinds = {"tiny": "the built-in tiny model", "run": "a finetune run"}
        what = kinds.get(ref.kind, "a local folder")
        raise UsageError(
            f"--revision pins a hub model, but '{os.fspath(model)}' is {what}: its exact "
            "weights are recorded by content hash instead; drop --revision"
        )
    return replace(ref, revision=revision)


def _resolve_model(model: str | os.PathLike[str]) -> ModelRef:
    text = os.fspath(model)
    if text in (TINY, MINI):
        return ModelRef(text, text)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / FINETUNE_CARD).is_file():
            run = json.loads((path / FINETUNE_CARD).read_text(encoding="utf-8"))
            pipeline_dir = path / PIPELINE_DIR
            if run.get("lora") and (path / run["lora"]["weights"]).is_file():
                return ModelRef("run", str(path / Path(run["lora"]["weights"]).parent), run)
            if not (pipeline_dir / "model_index.json").is_file():
                raise SpurcliError(
                    f"{path} is a spurcli run without a finished pipeline ({pipeline_dir} is "
                    "missing); finish it with `spurcli finetune ... --resume latest`"
                )
            return ModelRef("run", str(pipeline_dir), run)
        if (path / "model_index.json").is_file():
            return ModelRef("local", str(path))
        raise SpurcliError(
            f"{path} is not a diffusers pipeline folder (no model_index.json) nor a spurcli run"
        )
    if path.exists():
        raise SpurcliError(f"{path} is a file; a model is a folder, a hub id, 'tiny' or 'mini'")
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_like_path:
        raise SpurcliError(f"model folder not found: {text}")
    return ModelRef("hub", text)


def load_pipeline(
    model: str | os.PathLike[str] | ModelRef,
    *,
    dtype: Any = None,
    scheduler: str | None = None,
) -> Any:
    """A `StableDiffusionPipeline` for ``model`` (see `resolve_model`), on the CPU, in ``dtype``."""
    import torch
    from diffusers import StableDiffusionPipeline

    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    dtype = dtype or torch.float32
    if ref.kind == "run" and (ref.run or {}).get("lora"):
        from spurcli.generate.lora import load_lora_pipeline

        pipe = load_lora_pipeline(ref.location, ref.run, dtype=dtype)  # type: ignore[arg-type]
    elif ref.kind == TINY:
        pipe = build_tiny_pipeline()
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    elif ref.kind == MINI:  # the quickstart's embedded model: spurcli.generate.mini
        from spurcli.generate.mini import build_mini_pipeline

        pipe = build_mini_pipeline()
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    else:
        from huggingface_hub import constants

        local = ref.kind != "hub"
        revision = ref.revision
        if not local and offline():  # an unknown revision is one clear line, before loading
            revision = cached_commit(ref.location, ref.revision)
        quiet_library_progress_bars()
        if local:
            _refuse_pickles(Path(ref.location))
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                ref.location,
                dtype=dtype,
                safety_checker=None,
                requires_safety_checker=False,
                local_files_only=local or offline(),
                # a local folder's weights are safetensors or refused: a pickled .bin can run code
                use_safetensors=True if local else None,
                revision=None if local else revision,
                cache_dir=None if local else constants.HF_HUB_CACHE,  # where model_identity looks
            )
        except Exception as exc:
            if local:
                text = " ".join(str(exc).split())[:300]  # diffusers' messages span lines
                raise SpurcliError(
                    f"cannot load the pipeline in {ref.location}: {text}; is it a complete "
                    "diffusers folder (save_pretrained) with safetensors weights?"
                ) from exc
            raise SpurcliError(
                f"model '{ref.location}'"
                + (f" at revision '{ref.revision}'" if ref.revision else "")
                + f" is not available{' offline' if offline() else ''} "
                f"({type(exc).__name__}); download it where online (`hf download "
                f"{ref.location}`) or pass a local diffusers folder, or use --model tiny"
            ) from exc
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)  # spurcli draws its own progress bars
    return pipe


def _refuse_pickles(folder: Path) -> None:
    """A pipeline part whose weights exist only as pickles (.bin, .pt, .ckpt): one clear line."""
    for part in sorted(p for p in folder.iterdir() if p.is_dir()):
        pickles = [p for p in part.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".pth")]
        if pickles and not any(p.suffix == ".safetensors" for p in part.iterdir()):
            raise SpurcliError(
                f"{pickles[0]} is a pickled weights file, which spurcli never loads (unpickling "
                "can run code); convert the pipeline where you trust it: "
                "StableDiffusionPipeline.from_pretrained(...).save_pretrained(DIR, "
                "safe_serialization=True)"
            )


def model_identity(ref: ModelRef) -> dict[str, Any]:
    """Which weights ``ref`` names, exactly (JSON-ready; recorded in run cards and manifests).

    hub: the repo and the commit its revision resolves to in the local cache (after
    `load_pipeline` fetched it); a folder or a finetune run: its path and a hash of its weight
    files (a run adds the base model its card records); tiny: how it is built; mini: the
    hashes of its committed weights.
    """
    if ref.kind == MINI:  # committed weights: their hashes, and the recipe that made them
        from spurcli.generate.mini import RECIPE_FILE, WEIGHTS_DIR

        identity = folder_identity(WEIGHTS_DIR)
        return {**identity, "source": MINI, "recipe": f"spurcli/data/mini/{RECIPE_FILE}"}
    if ref.kind == TINY:
        recipe = (
            "spurcli.generate.pipelines.build_tiny_pipeline"  # drawn from fixed seeds: no files
        )
        return {"source": TINY, "recipe": recipe, "seed": 0, "spurcli": _spurcli_version()}
    if ref.kind == "hub":
        identity = {"source": "hub", "repo": ref.location}
        identity["revision"] = cached_commit(ref.location, ref.revision)
        if ref.revision and ref.revision != identity["revision"]:
            identity["requested"] = ref.revision
        return identity
    identity = folder_identity(ref.location)
    if ref.kind == "run":
        identity.update(source="run", base=(ref.run or {}).get("model_id"))
    return identity


def _spurcli_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("spurcli")
    except importlib.metadata.PackageNotFoundError:
        return None


def quiet_library_progress_bars() -> None:
    """Silence diffusers' and transformers' own load/save bars: spurcli draws its own on stderr."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def cast_frozen(module: Any, dtype: Any) -> Any:
    """``module.to(dtype)`` without diffusers' "keep in float32" hint (it is about loading)."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    if dtype == torch.float32 and all(p.dtype == dtype for p in module.parameters()):
        return module
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return module.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def make_scheduler(name: str, config: Any) -> Any:
    """A diffusers scheduler by short name, configured like the pipeline's own."""
    import diffusers

    key = name.lower()
    if key not in SCHEDULERS:
        raise UsageError(f"unknown scheduler '{name}'; choose from {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[key]).from_config(config)


def set_attention_slicing(module: Any, mode: str | int | None) -> None:
    """Attention slicing (the memory saver that needs no xformers) on a pipeline or a UNet.

    ``mode``: "auto" (half the heads at a time), "max" (one slice at a time), an int slice size,
    or "off"/None.
    """
    value: str | int | None
    if mode in (None, "off", "none"):
        value = None
    elif mode in ("auto", "max"):
        value = str(mode)
    else:
        try:
            value = int(mode)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(
                f"attention slicing must be auto, max, off or an int, not {mode!r}"
            ) from None
    if not hasattr(module, "set_attention_slice"):
        raise TypeError(f"{type(module).__name__} has no attention slicing")
    module.set_attention_slice(value)


def set_training_attention_slicing(module: Any, mode: str | int | None) -> int | None:
    """Attention slicing that saves memory in *training* too, on a UNet or a VAE.

    diffusers' sliced processor splits the batch x heads axis, which helps inference; in training
    autograd keeps every slice's attention matrix for the backward pass, so the peak stays (or
    grows). This one splits the query axis (so single-head VAE attention slices too) and, when
    gradients are on, recomputes each slice in the backward pass: at most one slice's
    queries x keys matrix exists at any time. Exact: softmax runs over keys, whole per query.

    ``mode``: "auto" (two slices), "max" (128 queries per slice), an int (queries per slice), or
    "off"/None (the default processor, SDPA: memory-efficient already on CUDA). Returns the
    queries per slice (None: two halves, or off).
    """
    if mode in (None, "off", "none"):
        return None
    if mode not in ("auto", "max"):
        try:
            size = int(mode)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise UsageError(f"attention slicing must be auto, max, off or an int, not {mode!r}")
    else:
        size = None if mode == "auto" else 128
    module.set_attn_processor(SlicedAttention(size))
    return size


class SlicedAttention:
    """A diffusers attention processor: queries in slices, each recomputed in backward."""

    def __init__(self, slice_size: int | None = None) -> None:
        self.slice_size = slice_size  # queries per slice; None: two halves

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        import torch
        from torch.utils.checkpoint import checkpoint

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image = hidden_states.ndim == 4  # the VAE's attention sees (B, C, H, W)
        if image:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, keys, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))

        def attend(q: Any, k: Any, v: Any, mask: Any) -> Any:
            return torch.bmm(attn.get_attention_scores(q, k, mask), v)

        n = query.shape[1]
        size = self.slice_size or -(-n // 2)
        recompute = torch.is_grad_enabled() and query.requires_grad
        parts = []
        for start in range(0, n, size):
            q = query[:, start : start + size]
            mask = attention_mask
            if mask is not None and mask.shape[1] > 1:
                mask = mask[:, start : start + size]
            if recompute:
                parts.append(checkpoint(attend, q, key, value, mask, use_reentrant=False))
            else:
                parts.append(attend(q, key, value, mask))
        hidden_states = attn.batch_to_head_dim(torch.cat(parts, dim=1))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
        if image:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The `tiny` Stable Diffusion: SD 1.x structure, a few hundred thousand parameters."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        # Same weights in every process: each component is drawn from its own fixed seed.
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,  # 64 px images / the VAE's 8x downsampling
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,  # = the text encoder's hidden size
            attention_head_dim=8,
            norm_num_groups=32,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 16, 32, 32),  # 4 blocks: 8x downsampling, as in SD
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
        )
        torch.manual_seed(seed + 2)
        vocab = tokenizer.get_vocab()
        end = vocab["<|endoftext|>"]
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=tokenizer.model_max_length,
                projection_dim=32,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=end,
                pad_token_id=end,
            )
        )
    # Stable Diffusion 1.x's noise schedule and default scheduler.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_tokenizer() -> Any:
    """A CLIP tokenizer over single bytes (no merges): any prompt tokenizes, nothing to download."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory(prefix="spurcli-tiny-tokenizer-") as folder:
        # Written as files, the format every transformers version reads.
        vocab = {token: i for i, token in enumerate(tokens)}
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (byte-level BPE alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


TAESD_RANDOM = "random"


def load_taesd(source: str, vae: Any = None, seed: int = 0) -> Any:
    """diffusers' `AutoencoderTiny` (taesd) from a hub id, a local folder, or ``random``.

    ``random``: taesd's structure with weights from a fixed seed, as wide as half the narrowest
    block of ``vae`` (64 channels for SD's VAE: taesd's own; 8 for the tiny model's), so that
    taesd costs the same fraction of the VAE decoder as for SD: for tests and benchmarks.
    Latents go in as the UNet sees them (taesd's scaling factor is 1), images come out in
    [-1, 1], as from the VAE.
    """
    import torch
    from diffusers import AutoencoderTiny

    if source == TAESD_RANDOM:
        latent_channels = vae.config.latent_channels if vae is not None else 4
        width = max(8, min(64, vae.config.block_out_channels[0] // 2)) if vae is not None else 64
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoencoderTiny(
                encoder_block_out_channels=(width,) * 4,
                decoder_block_out_channels=(width,) * 4,
                latent_channels=latent_channels,
            ).eval()
    local = Path(source).expanduser().is_dir()
    quiet_library_progress_bars()
    try:
        return AutoencoderTiny.from_pretrained(
            source, local_files_only=local or offline(), dtype=torch.float32
        ).eval()
    except Exception as exc:
        if local:
            raise SpurcliError(f"--sfsl-taesd {source}: cannot load taesd: {exc}") from exc
        raise SpurcliError(
            f"--sfsl-taesd {source} is not available{' offline' if offline() else ''} "
            f"({type(exc).__name__}); download it where online (`hf download {source}`), pass "
            "a local folder, or use --sfsl-decoder vae"
        ) from exc
