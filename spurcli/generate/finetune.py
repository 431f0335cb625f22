"""`spurcli finetune`: DreamBooth + prior preservation + SFSL on accelerate, in one file.

    from spurcli.config import FinetuneConfig
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

A run is a sequence of named stages, each a function below, called in this order by
`_finetune` (its table of contents):

    read_inputs           the class, the prompts, the reference images: fail fast
    load_training_models  the base pipeline, its noise schedule, the SFSL extractor
    start_run_record      OUT/spurcli-run.json with status "running"; the tracker
    make_prior_images     OUT/class-images/: made once with the frozen base model, then reused
    prepare_training      dtypes, trained weights, data, optimizer, lr schedule: a `Training`
    resume_training       a checkpoint's weights, optimizer, lr schedule, RNG and step
    train                 `train_step` until --steps, with the log, checkpoints, validation
    save_run              OUT/pipeline/ (or OUT/lora/) and the finished run record

One optimizer step is `train_step(training)`; a test builds a `Training` with the first stages
and calls it directly:

    cfg = FinetuneConfig(model="tiny", ..., prior_weight=0, sfsl_weight=0)
    accelerator = make_accelerator(cfg)
    models = load_training_models(cfg, out, accelerator)
    training = prepare_training(cfg, out, accelerator, read_inputs(cfg), models, [], {})
    train_step(training)                 # -> StepLog(losses, lr, grad_norms); training.step == 1

The run folder:

    OUT/spurcli-run.json        config, prompts, class, reference hashes, versions, final losses,
                                the base model's and the extractor's exact weights (model_id,
                                extractor.weights_id; docs/reproducibility.md)
    OUT/log.jsonl               per step: step, loss, loss_instance, loss_prior, loss_sfsl, lr;
                                every --log-grad-norms-every steps also grad_norm_instance,
                                grad_norm_prior, grad_norm_sfsl (each weighted term's gradient
                                norm on the trained weights) and grad_norm (all, before clipping)
    OUT/pipeline/               StableDiffusionPipeline.save_pretrained (plain diffusers loads it)
    OUT/lora/                   instead of pipeline/ with --lora-rank: the adapters in diffusers'
                                LoRA format (pipe.load_lora_weights(OUT/lora)); see spurcli.generate.lora
    OUT/tensorboard/            with --report-to tensorboard (spurcli.generate.tracking)
    OUT/validation/step-N/*.png validation images every --validate-every steps and at the end
    OUT/checkpoints/step-N/     model (LoRA: adapters only), optimizer, lr scheduler, grad
                                scaler, RNG states, step
    OUT/class-images/           prior images (unless --class-dir), reused by later runs

Reproducibility: everything random in a step (which images, crops, noise, timesteps, the VAE
posterior sample) is drawn from a generator seeded by (seed, micro-step, process), never from
global state, so a run resumed from a checkpoint continues exactly where it left off: on CPU an
interrupted + resumed run ends with bit-identical weights to an uninterrupted one (a test).
The batches live in `spurcli.generate.training_data`; checkpoints (what they hold, resume, Ctrl-C/SIGTERM) in
`spurcli.generate.checkpoints`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spurcli import console
from spurcli.errors import SpurcliError, UsageError
from spurcli.fileio import atomic_dir, is_inside, output_folder, write_json
from spurcli.generate import lora, tracking
from spurcli.generate.checkpoints import (
    LOG_FILE,
    Checkpointable,
    Interrupted,
    StopFlag,
    check_weights_finite,
    checkpoint_dir,
    finished_run,
    is_run,
    last_good_checkpoint,
    load_checkpoint,
    resume_point,
    save_checkpoint,
    truncate_log,
)
from spurcli.generate.config import FinetuneConfig
from spurcli.generate.losses import SFSL, step_losses, term_grad_norms
from spurcli.generate.modules import cast_frozen, set_training_attention_slicing
from spurcli.generate.pipelines import (
    PIPELINE_DIR,
    load_pipeline,
    load_taesd,
    quiet_library_progress_bars,
)
from spurcli.generate.prompts import fill_prompt
from spurcli.generate.training_data import Batch, LatentCache, TrainingData
from spurcli.images import find_images, read_folder, read_image, sha256_file, write_png
from spurcli.records import FINETUNE_CARD
from spurcli.settings import to_dict

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_instance", "loss_prior", "loss_sfsl")
GRAD_NORM_TERMS = ("instance", "prior", "sfsl")  # log.jsonl: grad_norm_<term> every N steps


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
    # The first process owns and locks the folder (the others write only what it tells them).
    with output_folder(out, "finetune", recognise=is_run, enabled=console.is_main_process()):
        return _finetune(config, out, on_step)


def _finetune(cfg: FinetuneConfig, out: Path, on_step: Callable[[int], None] | None) -> Path:
    started = time.time()
    accelerator = make_accelerator(cfg)
    inputs = read_inputs(cfg)
    # The output folder: new, or a run to resume (checked before any model loads).
    checkpoint = resume_point(cfg, out)
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


# ----------------------------------------------------------------------------------------------
# inputs and models


@dataclass
class Inputs:
    """What a run reads before anything slow (so that a typo fails in seconds)."""

    target: Any  # the ImageNet class (`spurcli.imagenet.ImageNetClass`)
    instance_prompt: str
    class_prompt: str
    references: list[tuple[Path, Any]]  # (file, PIL image) of each reference image


def read_inputs(cfg: FinetuneConfig) -> Inputs:
    """The class, the prompts with the identifier filled in, the reference images."""
    from spurcli import imagenet, plugins

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

    from spurcli import plugins

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
    from spurcli.generate.pipelines import resolve_model

    started = _started_commit(cfg, out)
    return resolve_model(cfg.model, revision=cfg.revision or started)


def base_identity(base: Any, out: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    """`model_identity` of the loaded base model; a resumed run must be on its first commit."""
    from spurcli.generate.pipelines import model_identity

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
# prior images


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
    except OSError:
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


# ----------------------------------------------------------------------------------------------
# training


@dataclass
class Training(Checkpointable):
    """A fine-tuning run in progress: what its checkpoints hold (`Checkpointable`: the prepared
    models, optimizer and lr schedule) plus what `train_step`, validation and `save_run` need."""

    pipe: Any  # the base pipeline; its unet and text_encoder are the trained ones, unwrapped
    train_vae: Any  # the VAE the loss encodes and decodes with, in the compute dtype
    data: TrainingData
    encoder: LatentCache
    sfsl: SFSL | None  # None: no SFSL term
    alphas_cumprod: torch.Tensor  # the noise schedule, on the device
    prediction_type: str  # "epsilon" or "v_prediction", as the base model's scheduler says
    prompt_ids: torch.Tensor  # the tokens of [instance prompt, class prompt]
    frozen_text: torch.Tensor | None  # their encoding, when the text encoder is not trained
    trained: list[Any]  # the prepared models that get gradients
    params: list[torch.nn.Parameter]  # every trained tensor: clipped, and checked after updates
    instance_prompt: str  # validation's prompt unless --validation-prompt
    record: dict[str, Any]  # the run record, written finished by `save_run`
    step: int = 0  # optimizer steps done
    last_losses: dict[str, float] = field(default_factory=dict)  # of the last step: final_losses

    def text_states(self, batch: Batch) -> torch.Tensor:
        """The text encoder's output for each sample's prompt (recomputed when it is trained)."""
        if self.cfg.train_text_encoder:
            states = self.text_encoder(self.prompt_ids)[0]
        else:
            states = self.frozen_text
        return states[batch.prompt_rows.to(self.accelerator.device)]  # 0 instance, 1 class


@dataclass(frozen=True)
class StepLog:
    """What one optimizer step reports (a line of log.jsonl without its step)."""

    losses: dict[str, float]  # LOSS_KEYS: the weighted total and each term, mean over processes
    lr: float  # the learning rate the step used
    grad_norms: dict[str, float]  # grad_norm_<term> and grad_norm on --log-grad-norms-every steps

    def entry(self) -> dict[str, float]:
        return {**self.losses, "lr": self.lr, **self.grad_norms}


def prepare_training(
    cfg: FinetuneConfig,
    out: Path,
    accelerator: Any,
    inputs: Inputs,
    models: Models,
    class_images: list[Path],
    record: dict[str, Any],
) -> Training:
    """Frozen parts in the compute dtype and trained ones in fp32, the data, the optimizer and
    lr schedule, prepared by accelerate: a `Training` at step 0."""
    device, weight_dtype = accelerator.device, compute_dtype(cfg)
    pipe = models.pipe
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    train_vae, sfsl_decoder = _set_up_weights(cfg, pipe, device, weight_dtype)

    # Images resized once, latents encoded once per (image, crop).
    data = TrainingData(
        [img for _, img in inputs.references],
        [read_image(p) for p in class_images],
        cfg,
        accelerator.process_index,
        accelerator.num_processes,
        models.noise_scheduler.config.num_train_timesteps,
    )
    encoder = LatentCache(train_vae, device)
    sfsl = None
    if models.extractor is not None:
        with torch.no_grad(), accelerator.autocast():
            ref = models.extractor(data.reference_batch().to(device, weight_dtype)).float()
        sfsl = SFSL(
            models.extractor,
            ref,
            cfg.sfsl_weight,
            cfg.sfsl_target,
            cfg.sfsl_distance,
            cfg.sfsl_max_timestep,
            cfg.sfsl_decode_size,
            sfsl_decoder,
        )
    ids = tokenizer(
        [inputs.instance_prompt, inputs.class_prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    frozen_text = None
    if not cfg.train_text_encoder:
        text_encoder.to(device)
        with torch.no_grad():
            frozen_text = text_encoder(ids)[0]

    groups = [{"params": _trained_params(unet), "lr": cfg.lr}]
    if cfg.train_text_encoder:
        te_lr = cfg.text_encoder_lr or cfg.lr
        groups.append({"params": _trained_params(text_encoder), "lr": te_lr})
    optimizer = _optimizer(cfg, groups)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.steps,
    )
    trained = [unet, text_encoder] if cfg.train_text_encoder else [unet]
    *trained, optimizer = accelerator.prepare(*trained, optimizer)
    return Training(
        cfg=cfg,
        out=out,
        accelerator=accelerator,
        unet=trained[0],
        text_encoder=trained[1] if cfg.train_text_encoder else text_encoder,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        pipe=pipe,
        train_vae=train_vae,
        data=data,
        encoder=encoder,
        sfsl=sfsl,
        alphas_cumprod=models.noise_scheduler.alphas_cumprod.to(device),
        prediction_type=models.noise_scheduler.config.prediction_type,
        prompt_ids=ids,
        frozen_text=frozen_text,
        trained=trained,
        params=[p for group in groups for p in group["params"]],
        instance_prompt=inputs.instance_prompt,
        record=record,
    )


def _set_up_weights(
    cfg: FinetuneConfig, pipe: Any, device: Any, weight_dtype: torch.dtype
) -> tuple[Any, Any]:
    """Frozen parts in the compute dtype, trained parts in fp32 and in train mode, gradient
    checkpointing; returns the VAE the loss uses and the SFSL decoder (None: that VAE)."""
    unet, text_encoder, vae = pipe.unet, pipe.text_encoder, pipe.vae
    vae.requires_grad_(False)
    train_vae = vae
    if weight_dtype != torch.float32:
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its "keep in float32" hint is about loading
        train_vae = copy.deepcopy(vae).to(weight_dtype)
        diffusers_logging.set_verbosity(level)
    train_vae.to(device).eval()
    if train_vae is not vae:
        vae.to("cpu")  # the fp32 original is only needed again for saving the pipeline
    if (
        cfg.lora_rank
    ):  # frozen base weights in the compute dtype, fp32 adapters (spurcli.generate.lora)
        lora.add_adapters(unet, text_encoder, cfg, weight_dtype)
    else:
        unet.requires_grad_(True)
        text_encoder.requires_grad_(cfg.train_text_encoder)
    unet.train()
    text_encoder.train(cfg.train_text_encoder)
    use_sfsl = cfg.sfsl_weight != 0
    sfsl_decoder = None  # None: SFSL decodes with train_vae
    if use_sfsl and cfg.sfsl_decoder == "taesd":
        sfsl_decoder = load_taesd(cfg.sfsl_taesd, vae).requires_grad_(False)
        cast_frozen(sfsl_decoder, weight_dtype).to(device)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:  # transformers 5 renamed it; 4.x has the old name only
            enable = getattr(text_encoder, "activation_checkpointing_enable", None)
            (enable or text_encoder.gradient_checkpointing_enable)()
        if use_sfsl:  # the SFSL decoder is in the graph
            (sfsl_decoder or train_vae).enable_gradient_checkpointing()
    return train_vae, sfsl_decoder


def resume_training(training: Training, checkpoint: Path | None) -> None:
    """Continue from ``checkpoint`` (None: from step 0); drop log lines after its step."""
    cfg, out = training.cfg, training.out
    if checkpoint is not None:
        training.step = load_checkpoint(training, checkpoint, skip_bad=cfg.resume == "latest")
        log.info("resumed from %s (step %d)", checkpoint, training.step)
    if training.accelerator.is_main_process:
        truncate_log(out / LOG_FILE, training.step)


def train(training: Training, on_step: Callable[[int], None] | None = None) -> None:
    """`train_step` until --steps: each step logged, checkpointed and validated as configured;
    Ctrl-C or SIGTERM saves a checkpoint after the step and raises `Interrupted`."""
    cfg, out, accelerator = training.cfg, training.out, training.accelerator
    stop = StopFlag()
    with stop.installed(), console.progress_bar("finetune", total=cfg.steps) as bar:
        bar.advance(training.step)
        while training.step < cfg.steps:
            entry = train_step(training).entry()
            step, losses = training.step, training.last_losses
            if accelerator.is_main_process:
                with open(out / LOG_FILE, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, **entry}) + "\n")
            accelerator.log(entry, step=step)
            bar.advance()
            bar.update(info=f"loss {losses['loss']:.4f}")
            if on_step is not None:
                on_step(step)
            # Every process must agree, or they would wait on different collectives.
            flag = torch.tensor([float(stop.requested)], device=accelerator.device)
            interrupted = accelerator.reduce(flag, reduction="sum").item() > 0
            if interrupted or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                save_checkpoint(training, step, losses)
            if cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.steps):
                validate(training, step)
            if interrupted:
                raise Interrupted(
                    f"interrupted at step {step}; checkpoint saved in "
                    f"{checkpoint_dir(out, step)}; continue with --resume latest"
                )


def train_step(training: Training) -> StepLog:
    """One optimizer step (``--grad-accum`` micro-batches) after ``training.step`` steps.

    A non-finite loss stops before the update, non-finite weights right after it (a
    `SpurcliError` naming the last good checkpoint, ``training.step`` unchanged): nothing
    non-finite is ever logged, saved or sampled."""
    cfg, accelerator, out, step = training.cfg, training.accelerator, training.out, training.step
    device = accelerator.device
    sums = torch.zeros(len(LOSS_KEYS), device=device)
    every = cfg.log_grad_norms_every
    term_norms = None
    for micro in range(cfg.grad_accum):
        batch = training.data.batch(step * cfg.grad_accum + micro)
        latents = training.encoder.latents(batch)
        with contextlib.ExitStack() as stack:
            if micro < cfg.grad_accum - 1:  # no gradient all-reduce until the last one
                for model in training.trained:
                    stack.enter_context(accelerator.no_sync(model))
            with accelerator.autocast():
                losses = step_losses(
                    training.unet,
                    training.train_vae,
                    training.alphas_cumprod,
                    training.prediction_type,
                    latents=latents,
                    noise=batch.noise.to(device),
                    timesteps=batch.timesteps.to(device),
                    encoder_hidden_states=training.text_states(batch),
                    n_instance=batch.n_instance,
                    prior_weight=cfg.prior_weight,
                    sfsl=training.sfsl,
                    ref_index=batch.instance_index.to(device),
                )
            if every and (step + 1) % every == 0 and micro == 0:
                scaler = accelerator.scaler  # fp16: scaled, against underflow
                scale = scaler.get_scale() if scaler is not None else 1.0
                term_norms = term_grad_norms(losses.terms, training.params, GRAD_NORM_TERMS, scale)
            accelerator.backward(losses.total / cfg.grad_accum)
        terms = [losses.total.detach(), losses.instance, losses.prior, losses.sfsl]
        sums += torch.stack([t.float() for t in terms]) / cfg.grad_accum
    sums = accelerator.reduce(sums, reduction="mean")  # the mean over processes
    values = dict(zip(LOSS_KEYS, sums.tolist(), strict=True))
    if not all(math.isfinite(v) for v in values.values()):
        raise SpurcliError(
            f"loss became non-finite at step {step + 1} "
            f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); stopped without "
            "updating the weights; last good checkpoint: "
            f"{last_good_checkpoint(out) or 'none'}. "
            "Try a lower --lr, --mixed-precision bf16 or no, or another --sfsl-distance"
        )
    norms: dict[str, float] = {}
    if term_norms is not None:  # the mean over processes, as for the losses
        mean = accelerator.reduce(term_norms, reduction="mean").tolist()
        norms = {f"grad_norm_{k}": v for k, v in zip(GRAD_NORM_TERMS, mean, strict=True)}
    if cfg.max_grad_norm > 0:
        total_norm = accelerator.clip_grad_norm_(training.params, cfg.max_grad_norm)
        if norms:  # the whole gradient's norm, before clipping
            norms["grad_norm"] = float(total_norm)
    lr = training.lr_scheduler.get_last_lr()[0]
    training.optimizer.step()
    check_weights_finite(training.params, step + 1, out, lr)
    training.lr_scheduler.step()
    training.optimizer.zero_grad(set_to_none=True)
    training.step, training.last_losses = step + 1, values
    return StepLog(values, lr, norms)


def make_accelerator(cfg: FinetuneConfig) -> Any:
    """The run's `accelerate.Accelerator` (precision, trackers; the process group if launched)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps one state per process and refuses a second Accelerator with another
    # precision; a second finetune in one process (spurcli run, notebooks, tests) may need one.
    # Only the per-run part is reset: the process group (PartialState) stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()

    try:
        # Without CUDA, accelerate joins a torchrun/launch group (gloo) only when told cpu=True;
        # otherwise N launched processes would each train alone into the same folder.
        cpu = not torch.cuda.is_available()
        return Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=cpu, **tracking.accelerator_kwargs(cfg)
        )
    except (ValueError, RuntimeError) as exc:
        raise SpurcliError(f"--mixed-precision {cfg.mixed_precision}: {exc}") from exc


def _trained_params(model: Any) -> list[torch.nn.Parameter]:
    """What the optimizer updates: every weight, or (LoRA) only the adapters."""
    return [p for p in model.parameters() if p.requires_grad]


def _optimizer(cfg: FinetuneConfig, groups: list[dict[str, Any]]) -> Any:
    kwargs = {"betas": (0.9, 0.999), "weight_decay": cfg.weight_decay, "eps": 1e-8}
    if not cfg.use_8bit_adam:
        # The fused kernel (CPU and CUDA since torch 2.4) updates all tensors in one pass: 5x
        # faster than the per-tensor default on CPU, same update rule.
        try:
            return torch.optim.AdamW(groups, **kwargs, fused=True)
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(groups, **kwargs, foreach=True)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise SpurcliError(
            "--use-8bit-adam needs bitsandbytes: pip install 'spurcli[8bit]' (CUDA GPUs)"
        ) from None
    return bnb.optim.AdamW8bit(groups, **kwargs)


# ----------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validate(training: Training, step: int) -> None:
    """validation/step-N/PP-II.png: each prompt with the same seeds at every step (comparable)."""
    cfg, accelerator = training.cfg, training.accelerator
    pipe, vae = training.pipe, training.train_vae
    if accelerator.is_main_process:
        from diffusers import StableDiffusionPipeline

        from spurcli.generate.losses import decode_to_unit
        from spurcli.images import to_pil

        unet = accelerator.unwrap_model(training.unet)
        text_encoder = accelerator.unwrap_model(training.text_encoder)
        was_training = unet.training, text_encoder.training
        unet.eval()
        text_encoder.eval()
        parts = {"tokenizer": pipe.tokenizer, "scheduler": pipe.scheduler}
        val = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            unet=unet,
            **parts,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        val.set_progress_bar_config(disable=True)
        prompts = [fill_prompt(p, cfg.identifier, cfg.class_noun) for p in cfg.validation_prompt]
        seeds = [cfg.seed + i for i in range(cfg.num_validation_images)]
        steps, guidance = cfg.validation_steps, cfg.validation_guidance
        for p, prompt in enumerate(prompts or [training.instance_prompt]):
            # latents, decoded here: decode_to_unit casts to the VAE's dtype (fp16 without autocast)
            latents = generate_seeded(val, prompt, seeds, steps, guidance, cfg.resolution,
                                      accelerator, output_type="latent")  # fmt: skip
            with accelerator.autocast():
                images = [to_pil(image) for image in decode_to_unit(vae, latents)]
            for i, (seed, image) in enumerate(zip(seeds, images, strict=True)):
                meta = {"prompt": prompt, "seed": seed, "step": step}
                write_png(
                    training.out / "validation" / f"step-{step}" / f"{p:02d}-{i:02d}.png",
                    image,
                    meta,
                )
            tracking.log_images(accelerator, f"validation/{p:02d}", images, step)
        unet.train(was_training[0])
        text_encoder.train(was_training[1])
    accelerator.wait_for_everyone()


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
        )
        write_json(out / FINETUNE_CARD, training.record)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the tracker
