"""Experiment tracking for `spurcli finetune --report-to tensorboard|wandb`: accelerate's trackers.

    from spurcli.generate.tracking import accelerator_kwargs, start, log_images
    accelerator = Accelerator(**accelerator_kwargs(cfg))   # log_with + project_dir, or nothing
    start(accelerator, cfg)                                # the run's config as hyperparameters
    accelerator.log({"loss": 0.1, "lr": 1e-6}, step=1)     # a no-op without a tracker
    log_images(accelerator, "validation/00", images, step=200)

    tensorboard --logdir runs/a/tensorboard                # what the tracker wrote

TensorBoard writes OUT/tensorboard/ (event files; `pip install 'spurcli[tensorboard]'`); wandb
logs to its project "spurcli" under the run folder's name, online or, with WANDB_MODE=offline,
into OUT/wandb/. Only the main process writes. log.jsonl stays the record the tests and tools
read; a tracker is a view of the same numbers (a resumed run logs the re-run steps again).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spurcli.settings import to_dict

TENSORBOARD_DIR = "tensorboard"  # OUT/tensorboard/


def accelerator_kwargs(cfg: Any) -> dict[str, Any]:
    """The `Accelerator(...)` arguments for ``cfg.report_to``."""
    if cfg.report_to == "none":
        return {}
    return {"log_with": cfg.report_to, "project_dir": os.fspath(cfg.output_dir)}


def start(accelerator: Any, cfg: Any) -> None:
    """Open the tracker (main process) with the config as its hyperparameters."""
    if cfg.report_to == "none":
        return

    # Trackers take numbers, text and booleans; lists and None become text.
    config = {
        k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in to_dict(cfg).items()
    }
    out = Path(cfg.output_dir)
    if cfg.report_to == "tensorboard":
        accelerator.init_trackers(TENSORBOARD_DIR, config=config)
    else:
        init = {"wandb": {"dir": os.fspath(out), "name": out.name}}
        accelerator.init_trackers("spurcli", config=config, init_kwargs=init)


def log_images(accelerator: Any, name: str, images: list[Any], step: int) -> None:
    """PIL images into the tracker (main process; nothing without one)."""
    if not accelerator.is_main_process or not images:
        return
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            batch = np.stack([np.asarray(image.convert("RGB")) for image in images])
            tracker.writer.add_images(name, batch, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({name: [wandb.Image(image) for image in images]}, step=step)
