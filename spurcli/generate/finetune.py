"""`spurcli finetune`: DreamBooth + prior preservation + SFSL on accelerate, stage by stage.

    from spurcli.generate.config import FinetuneConfig
    from spurcli.generate.finetune import finetune
    cfg = FinetuneConfig(model="tiny", instance_dir=Path("refs"), class_noun="flower",
                         target="hummingbird", output_dir=Path("runs/a"), resolution=64,
                         steps=10, num_class_images=4, extractor="effnet-lite0")
    out = finetune(cfg)                  # -> the run folder; SpurcliError on bad input
    load_pipeline(out)                   # spurcli.generate.pipelines: the fine-tuned pipeline

    # the same from the shell, on one CPU/GPU or many processes:
    spurcli finetune exp.toml --steps 10
    accelerate launch -m spurcli finetune exp.toml
    torchrun --nproc_per_node 2 -m spurcli finetune exp.toml      # 2 CPU processes (gloo)

`finetune(config, on_step=None) -> Path`; `on_step(step)` runs on every process after each
optimizer step (tests use it to interrupt a run at a known step).

A run is a sequence of named stages, each a function, called in this order by `_finetune`
(its table of contents):

    read_inputs           the class, the prompts, the reference images: fail fast   (inputs.py)
    load_training_models  the base pipeline, its noise schedule, the SFSL extractor  (inputs.py)
    start_run_record      OUT/spurcli-run.json with status "running"; the tracker   (here)
    make_prior_images     OUT/class-images/: made once with the frozen base model    (prior.py)
    prepare_training      dtypes, trained weights, data, optimizer, lr schedule      (training.py)
    resume_training       a checkpoint's weights, optimizer, lr schedule, RNG, step  (training.py)
    train                 `train_step` until --steps, log, checkpoints, validation   (training.py)
    save_run              OUT/pipeline/ (or OUT/lora/) and the finished run record  (here)

One optimizer step is `spurcli.generate.training.train_step`, testable on its own.

The run folder:

    OUT/spurcli-run.json        config, prompts, class, reference hashes, versions, final losses,
                                the base model's and the extractor's exact weights (model_id,
                                extractor.weights_id; docs/reproducibility.md)
    OUT/log.jsonl               per step: step, loss, loss_instance, loss_prior, loss_sfsl, lr;
                                every --log-grad-norms-every steps also grad_norm_instance,
                                grad_norm_prior, grad_norm_sfsl (each weighted term's gradient
                                norm on the trained weights) and grad_norm (what --max-grad-norm
                                clips, before clipping); every step clip_norm, clip_scale (and
                                sfsl_clip_norm, sfsl_clip_scale with --sfsl-grad-clip);
                                fp16: loss_scale, and skipped: 1 where the scaler skipped a step
    OUT/pipeline/               StableDiffusionPipeline.save_pretrained (plain diffusers loads it)
    OUT/lora/                   instead of pipeline/ with --lora-rank: the adapters in diffusers'
                                LoRA format (pipe.load_lora_weights(OUT/lora)); see
                                spurcli.generate.lora
    OUT/tensorboard/            with --report-to tensorboard (spurcli.generate.tracking)
    OUT/validation/step-N/*.png validation images every --validate-every steps and at the end
    OUT/checkpoints/step-N/     model (LoRA: adapters only), optimizer, lr scheduler, grad
                                scaler, RNG states, step
    OUT/class-images/           prior images (unless --class-dir), reused by later runs

Reproducibility: everything random in a step (which images, crops, noise, timesteps, the VAE
posterior sample) is drawn from a generator seeded by (seed, micro-step, process), never from
global state, so a run resumed from a checkpoint continues exactly where it left off: on CPU an
interrupted + resumed run ends with bit-identical weights to an uninterrupted one (a test).
The batches live in `spurcli.generate.training_data`; checkpoints (what they hold, resume,
Ctrl-C/SIGTERM) in
`spurcli.generate.checkpoints`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spurcli import console
from spurcli.errors import UsageError
from spurcli.fileio import atomic_dir, is_inside, output_folder, write_json
from spurcli.generate import lora, tracking
from spurcli.generate.checkpoints import (
    LOG_FILE,
    finished_run,
    is_run,
    resume_point,
)
from spurcli.generate.config import FinetuneConfig
from spurcli.generate.inputs import Inputs, Models, load_training_models, read_inputs
from spurcli.generate.pipelines import (
    PIPELINE_DIR,
    quiet_library_progress_bars,
)
from spurcli.generate.prior import make_prior_images
from spurcli.generate.training import (
    Training,
    log_summary,
    make_accelerator,
    prepare_training,
    resume_training,
    train,
)
from spurcli.images import sha256_file
from spurcli.records import FINETUNE_CARD
from spurcli.settings import to_dict

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the run, stage by stage


def finetune(config: FinetuneConfig, *, on_step: Callable[[int], None] | None = None) -> Path:
    """Fine-tune ``config.model`` on the reference images; returns the run folder."""
    config.check()
    out = Path(config.output_dir)  # type: ignore[arg-type]
    for refs in (config.instance_dir, config.class_dir):
        if refs is not None and Path(refs).is_dir() and is_inside(out, refs):
            raise UsageError(
                f"--output-dir {out} is inside the image folder {refs}: the run would train on "
                "its own outputs; choose a folder outside it"
            )
    if config.class_dir is not None and is_inside(config.class_dir, config.instance_dir):  # type: ignore[arg-type]
        raise UsageError(
            f"--class-dir {config.class_dir} is inside --instance-dir {config.instance_dir}: the "
            "prior images would be read as reference images; keep them in another folder"
        )
    # The first process owns and locks the folder (the others write only what it tells them).
    with output_folder(out, "finetune", recognise=is_run, enabled=console.is_main_process()):
        return _finetune(config, out, on_step)


def _finetune(cfg: FinetuneConfig, out: Path, on_step: Callable[[int], None] | None) -> Path:
    started = time.time()
    accelerator = make_accelerator(cfg)
    inputs = read_inputs(cfg)
    # The output folder: new, or a run to resume (checked before any model loads).
    checkpoint = resume_point(cfg, out)
    check_same_references(cfg, out, inputs)
    finished = finished_run(out)
    if finished is not None and cfg.resume and finished.get("steps_done", 0) >= cfg.steps:
        log.info("%s already finished %s steps; nothing to do", out, finished["steps_done"])
        return out
    models = load_training_models(cfg, out, accelerator)  # before writing anything: they may fail
    record = start_run_record(cfg, out, accelerator, inputs, models, finished)
    class_images = make_prior_images(cfg, out, accelerator, inputs, models, record)
    training = prepare_training(cfg, out, accelerator, inputs, models, class_images, record)
    resume_training(training, checkpoint)
    train(training, on_step)
    save_run(training, started)
    return out


def check_same_references(cfg: FinetuneConfig, out: Path, inputs: Inputs) -> None:
    """A resume trains on the reference images the run started with (`run` checks the same)."""
    import json

    if not cfg.resume:
        return
    try:
        card = json.loads((out / FINETUNE_CARD).read_text(encoding="utf-8"))
        saved = sorted(str(r["sha256"]) for r in card["references"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record of them (a run killed before its first write)
    now = sorted(sha256_file(p) for p, _ in inputs.references)
    if saved != now:
        added, gone = len(set(now) - set(saved)), len(set(saved) - set(now))
        raise UsageError(
            f"--resume: the reference images in {cfg.instance_dir} are not those {out} was "
            f"trained on ({added} new or edited, {gone} missing or edited); restore them, or "
            "fine-tune into a new --output-dir"
        )


# ----------------------------------------------------------------------------------------------
# the run record


def start_run_record(
    cfg: FinetuneConfig,
    out: Path,
    accelerator: Any,
    inputs: Inputs,
    models: Models,
    finished: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run record (spurcli-run.json's content), written with status "running" unless
    ``finished`` (the folder's finished record) stands until this run is done; starts the
    tracker. `make_prior_images` and `save_run` add to the record."""
    accelerator.wait_for_everyone()  # every process has checked the folder before it changes
    target = inputs.target
    record = {
        "status": "running",
        "identifier": cfg.identifier,
        "target": {"index": target.index, "wnid": target.wnid, "name": target.name},
        "class_noun": cfg.class_noun,
        "instance_prompt": inputs.instance_prompt,
        "class_prompt": inputs.class_prompt,
        "model": cfg.model,
        "model_id": models.model_id,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "references": [
            {"file": os.fspath(p), "sha256": sha256_file(p)} for p, _ in inputs.references
        ],
        "extractor": models.extractor_info,
        "versions": _versions(),
        "world_size": accelerator.num_processes,
        "steps_done": 0,
    }
    if cfg.lora_rank:
        record["lora"] = lora.run_card(cfg)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if finished is None:  # a finished run keeps its record until the new one is done
            write_json(out / FINETUNE_CARD, record)
    tracking.start(accelerator, cfg)
    return record


def _versions() -> dict[str, str]:
    names = ("spurcli", "torch", "diffusers", "transformers", "accelerate")
    found = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


# ----------------------------------------------------------------------------------------------
# the result


def save_run(training: Training, started: float) -> None:
    """OUT/pipeline/ (LoRA: OUT/lora/, the adapters alone) and the run record, finished."""
    cfg, out, accelerator, pipe = training.cfg, training.out, training.accelerator, training.pipe
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe.unet = accelerator.unwrap_model(pipe.unet)
        pipe.text_encoder = accelerator.unwrap_model(pipe.text_encoder)
        quiet_library_progress_bars()  # transformers' "Writing model shards" bar is noise here
        if cfg.lora_rank:  # the adapters alone, in diffusers' LoRA format
            with atomic_dir(out / lora.LORA_DIR) as tmp:
                te = pipe.text_encoder if cfg.train_text_encoder else None
                lora.save_lora(tmp, pipe.unet, te)
        else:
            with atomic_dir(out / PIPELINE_DIR) as tmp:
                pipe.save_pretrained(tmp, safe_serialization=True)
        training.record.update(
            status="finished",
            steps_done=training.step,
            final_losses=training.last_losses,
            prediction_type=training.prediction_type,
            seconds=round(time.time() - started, 1),
            **log_summary(out / LOG_FILE),
        )
        write_json(out / FINETUNE_CARD, training.record)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the tracker
