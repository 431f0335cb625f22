"""Prior-preservation images: made once by the frozen base model from the class prompt, and
reused by later runs that share the class folder (both arms of `spurcli run` do)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from spurcli import console
from spurcli.generate.config import FinetuneConfig
from spurcli.generate.inputs import Inputs, Models
from spurcli.images import find_images, write_png

log = logging.getLogger(__name__)


def make_prior_images(
    cfg: FinetuneConfig,
    out: Path,
    accelerator: Any,
    inputs: Inputs,
    models: Models,
    record: dict[str, Any],
) -> list[Path]:
    """The prior (class) images to train on, made where missing; none without prior loss."""
    if cfg.prior_weight == 0:
        return []
    class_dir = Path(cfg.class_dir) if cfg.class_dir else out / "class-images"
    models.pipe.to(accelerator.device)
    info = generate_class_images(models.pipe, cfg, inputs.class_prompt, class_dir, accelerator)
    record["class_images"] = info
    return find_images(class_dir)


def generate_class_images(
    pipe: Any, cfg: FinetuneConfig, prompt: str, folder: Path, accelerator: Any
) -> dict[str, Any]:
    """Generate the missing prior images into ``folder``, sharded over processes; reuse the rest.

    Reused are images made with this model, prompt and size (their PNG text says so) and images
    spurcli did not make (the user's own class photos); a class-NNNNN.png of another model,
    prompt or size is deleted and made again, so that a changed run never trains on stale priors.
    """
    if accelerator.is_main_process and folder.is_dir():
        stale = [p for p in folder.glob("class-*.png") if _stale_prior(p, prompt, cfg)]
        if stale:
            log.warning(
                "%d prior images in %s were made with another model, prompt or size: "
                "regenerating them",
                len(stale),
                folder,
            )
        for path in stale:
            path.unlink()
    accelerator.wait_for_everyone()
    existing = find_images(folder) if folder.is_dir() and any(folder.iterdir()) else []
    missing = max(0, cfg.num_class_images - len(existing))
    taken = {p.name for p in existing}
    indices, i = [], 0
    while len(indices) < missing:
        if f"class-{i:05d}.png" not in taken:
            indices.append(i)
        i += 1
    mine = indices[accelerator.process_index :: accelerator.num_processes]
    if missing:
        log.info("generating %d class images into %s", missing, folder)
    steps, guidance = cfg.class_inference_steps, cfg.class_guidance
    settings = {"steps": steps, "guidance": guidance, "model": cfg.model}  # in each PNG's text
    with console.progress_bar("class images", total=len(mine)) as bar:
        for start in range(0, len(mine), cfg.class_batch_size):
            chunk = mine[start : start + cfg.class_batch_size]
            seeds = [cfg.seed * 1_000_000 + idx for idx in chunk]
            images = generate_seeded(
                pipe, prompt, seeds, steps, guidance, cfg.resolution, accelerator
            )
            for idx, seed, image in zip(chunk, seeds, images, strict=True):
                meta = {"prompt": prompt, "seed": seed, **settings}
                write_png(folder / f"class-{idx:05d}.png", image, meta)
            bar.advance(len(chunk))
    accelerator.wait_for_everyone()
    return {
        "dir": os.fspath(folder),
        "reused": len(existing),
        "generated": missing,
        "seeds": "seed * 1000000 + index (in each class-NNNNN.png's text chunk)",
    }


def _stale_prior(path: Path, prompt: str, cfg: FinetuneConfig) -> bool:
    """A prior image spurcli made (its PNG text has our keys) with other settings than now."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text, size = dict(getattr(img, "text", {})), img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return False  # unreadable: left for the reader to report
    if not {"prompt", "model", "seed"} <= set(text):
        return False  # not one of ours: the user's own class image
    same = text["prompt"] == prompt and text["model"] == str(cfg.model)
    return not (same and size == (cfg.resolution, cfg.resolution))


@torch.no_grad()
def generate_seeded(pipe: Any, prompt: str, seeds: list[int], steps: int, guidance: float,
                    size: int, accelerator: Any, **kwargs: Any) -> Any:  # fmt: skip
    """One image per seed (CPU generators: the same noise on any device)."""
    with accelerator.autocast():
        return pipe(
            [prompt] * len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            **kwargs,
        ).images
