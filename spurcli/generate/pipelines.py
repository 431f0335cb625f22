"""Loading Stable Diffusion: a hub id, a local diffusers folder, a finetune run, `tiny`, `mini`
or `flag-mini`.

    from spurcli.generate.pipelines import load_pipeline, resolve_model
    pipe = load_pipeline("tiny")                      # random tiny SD from config, offline, ~0.1 s
    pipe = load_pipeline("flag-mini")                 # the quickstart's trained SD (generate.mini)
    pipe = load_pipeline("mini")                      # the brick world's (generate.mini)
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError, UsageError
from spurcli.generate.config import SCHEDULERS, TINY
from spurcli.generate.lora import fuse_lora, lora_base
from spurcli.generate.mini import EMBEDDED, build_embedded_pipeline, weights_folder
from spurcli.generate.modules import quiet_library_progress_bars
from spurcli.generate.tiny import build_tiny_pipeline
from spurcli.records import FINETUNE_CARD, PIPELINE_DIR
from spurcli.weights import cached_commit, folder_identity, offline


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from, as resolved from what the user typed."""

    # "tiny", an embedded model's name ("mini", "flag-mini"), "run" (a finetune output), "local"
    # (a diffusers folder) or "hub"
    kind: str
    location: str  # "tiny", "mini", "flag-mini", a folder (a run's pipeline/ or lora/), a hub id
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
    if text == TINY or text in EMBEDDED:
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
        raise SpurcliError(
            f"{path} is a file; a model is a folder, a hub id, 'tiny' or one of "
            f"{', '.join(EMBEDDED)}"
        )
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
        # The run's base model with its adapters fused in: as fast as a full pipeline to sample.
        base, revision = lora_base(ref.run)  # type: ignore[arg-type]
        pipe = load_pipeline(resolve_model(base, revision), dtype=dtype)
        fuse_lora(pipe, ref.location, base)
    elif ref.kind == TINY:
        pipe = build_tiny_pipeline()
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    elif ref.kind in EMBEDDED:  # mini or flag-mini: spurcli.generate.mini
        pipe = build_embedded_pipeline(ref.kind)
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
    files (a run adds the base model its card records); tiny: how it is built; mini and
    flag-mini: the hashes of their committed weights.
    """
    if ref.kind in EMBEDDED:  # committed weights: their hashes, and the recipe that made them
        identity = folder_identity(weights_folder(ref.kind))
        recipe = f"spurcli/data/{ref.kind}/{ref.kind}.json"
        return {**identity, "source": ref.kind, "recipe": recipe}
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


def make_scheduler(name: str, config: Any) -> Any:
    """A diffusers scheduler by short name, configured like the pipeline's own.

    Never clips its x0 estimate: DDIM's and DDPM's `clip_sample` defaults to True, which is
    right for pixels in [-1, 1] and wrong for latents (it greys every image). A config that does
    not say (the embedded models', which copy SD 1.x's PNDM config) would get the default, and
    diffusers' Stable Diffusion pipelines switch it off (even where a config says True) only when
    they are built, not when ``pipe.scheduler`` is replaced, as `load_pipeline` does; this does
    the same here."""
    import diffusers

    key = name.lower()
    if key not in SCHEDULERS:
        raise UsageError(f"unknown scheduler '{name}'; choose from {', '.join(SCHEDULERS)}")
    scheduler_class = getattr(diffusers, SCHEDULERS[key])
    scheduler = scheduler_class.from_config(config)
    if getattr(scheduler.config, "clip_sample", False) is True:
        scheduler = scheduler_class.from_config(config, clip_sample=False)
    return scheduler


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
