"""Shared pieces of the finetune tests: reference images, a fast config, weight comparison."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from spurcli.generate.config import FinetuneConfig

# Tiny models on a shared 2-core machine: more threads only add contention (10-50x slower).
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def make_refs(folder: Path, n: int = 3) -> Path:
    """Real photos (scikit-image's bundled ones), non-square so that crops matter."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket")[:n]:
        Image.fromarray(getattr(skimage.data, name)()).resize((44, 36)).save(folder / f"{name}.png")
    return folder


def fast_config(refs: Path, out: Path, **changes: Any) -> FinetuneConfig:
    """A few-second run on `tiny` at 32 px, SFSL on with a cheap real-parameter extractor."""
    base = FinetuneConfig(
        model="tiny",
        instance_dir=refs,
        class_noun="flower",
        target="hummingbird",
        output_dir=out,
        resolution=32,
        steps=4,
        lr=1e-3,  # big enough that 4 steps visibly change the weights
        num_class_images=2,
        class_inference_steps=2,
        class_batch_size=2,
        extractor="template-linear",
        extractor_weights="random",
        sfsl_weight=0.5,
        checkpoint_every=2,
        validate_every=0,
        validation_steps=2,
        num_validation_images=1,
    )
    return dataclasses.replace(base, **changes)


def config_args(cfg: FinetuneConfig) -> list[str]:
    """The same config as command-line options (for subprocess runs)."""
    args = []
    defaults = FinetuneConfig()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == getattr(defaults, f.name) or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def spurcli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "spurcli", *args]


def weights(run: Path) -> dict[str, Any]:
    """All tensors of the saved UNet and text encoder of a finished run."""
    from safetensors.torch import load_file

    pipeline = run / "pipeline"
    return {
        "unet": load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors"),
        "text_encoder": load_file(pipeline / "text_encoder" / "model.safetensors"),
    }


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return all(
        a[part].keys() == b[part].keys()
        and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
        for part in a
    )
