"""`spurcli finetune`: DreamBooth + prior preservation + SFSL on accelerate, in one file.

    from spurcli.config import FinetuneConfig
    from spurcli.finetune import finetune
    cfg = FinetuneConfig(model="tiny", instance_dir=Path("refs"), class_noun="flower",
                         target="hummingbird", output_dir=Path("runs/a"), resolution=64,
                         steps=10, num_class_images=4, extractor="effnet-lite0")
    out = finetune(cfg)                  # -> the run folder; SpurcliError on bad input
    load_pipeline(out)                   # spurcli.diffusion: the fine-tuned pipeline

    # the same from the shell, on one CPU/GPU or many processes:
    spurcli finetune exp.toml --steps 10
    accelerate launch -m spurcli finetune exp.toml
    torchrun --nproc_per_node 2 -m spurcli finetune exp.toml      # 2 CPU processes (gloo)

`finetune(config, on_step=None) -> Path`; `on_step(step)` runs on every process after each
optimizer step (tests use it to interrupt a run at a known step).

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
                                LoRA format (pipe.load_lora_weights(OUT/lora)); see spurcli.lora
    OUT/tensorboard/            with --report-to tensorboard (spurcli.tracking)
    OUT/validation/step-N/*.png validation images every --validate-every steps and at the end
    OUT/checkpoints/step-N/     model (LoRA: adapters only), optimizer, lr scheduler, grad
                                scaler, RNG states, step
    OUT/class-images/           prior images (unless --class-dir), reused by later runs

Reproducibility: everything random in a step (which images, crops, noise, timesteps, the VAE
posterior sample) is drawn from a generator seeded by (seed, micro-step, process), never from
global state, so a run resumed from a checkpoint continues exactly where it left off: on CPU an
interrupted + resumed run ends with bit-identical weights to an uninterrupted one (a test).
The batches live in `spurcli.data`; checkpoints (what they hold, resume, Ctrl-C/SIGTERM) in
`spurcli.checkpoints`.
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
from pathlib import Path
from typing import Any

import torch

from spurcli import console, lora, tracking
from spurcli.checkpoints import (
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
from spurcli.config import FinetuneConfig, to_dict
from spurcli.data import Batch, Data, LatentCache
from spurcli.diffusion import (
    RUN_FILE,
    RUN_PIPELINE_DIR,
    cast_frozen,
    load_pipeline,
    load_taesd,
    quiet_library_progress_bars,
    set_training_attention_slicing,
)
from spurcli.errors import SpurcliError, UsageError
from spurcli.fileio import atomic_dir, is_inside, output_folder, write_json
from spurcli.images import find_images, read_folder, read_image, sha256_file, write_png
from spurcli.losses import SFSL, step_losses, term_grad_norms

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_instance", "loss_prior", "loss_sfsl")
GRAD_NORM_TERMS = ("instance", "prior", "sfsl")  # log.jsonl: grad_norm_<term> every N steps


# ----------------------------------------------------------------------------------------------
# the training run


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
    accelerator = _accelerator(cfg)
    main = accelerator.is_main_process
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        cfg.mixed_precision, torch.float32
    )

    # --- inputs: class, prompts, reference images (fail fast, before anything slow) ----------
    from spurcli import imagenet, plugins

    target = imagenet.resolve_class(cfg.target)  # type: ignore[arg-type]
    instance_prompt = fill_prompt(cfg.instance_prompt, cfg.identifier, cfg.class_noun)
    class_prompt = fill_prompt(cfg.class_prompt, cfg.identifier, cfg.class_noun)
    references, _ = read_folder(cfg.instance_dir, strict=True)  # type: ignore[arg-type]
    use_sfsl = cfg.sfsl_weight != 0
    use_prior = cfg.prior_weight != 0
    if use_sfsl:  # an unknown name fails now, with suggestions; without SFSL it is never used
        plugins.extractors().resolve(cfg.extractor)

    # --- the output folder: new, or a run to resume -------------------------------------------
    checkpoint = resume_point(cfg, out)
    finished = finished_run(out)
    if finished is not None and cfg.resume and finished.get("steps_done", 0) >= cfg.steps:
        log.info("%s already finished %s steps; nothing to do", out, finished["steps_done"])
        return out

    # --- models: the base pipeline, the extractor (before writing anything: they may fail) ----
    base = base_model(cfg, out)
    pipe = load_pipeline(base)
    model_id = base_identity(base, out, cfg) if main or base.kind == "hub" else None
    unet, text_encoder, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    extractor, extractor_info = None, None
    if use_sfsl:
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
        set_training_attention_slicing(unet, cfg.attention_slicing)
        set_training_attention_slicing(vae, cfg.attention_slicing)
        vae.enable_slicing()  # and decode one image of a batch at a time

    accelerator.wait_for_everyone()  # every process has checked the folder before it changes
    run_info = {
        "status": "running",
        "identifier": cfg.identifier,
        "target": {"index": target.index, "wnid": target.wnid, "name": target.name},
        "class_noun": cfg.class_noun,
        "instance_prompt": instance_prompt,
        "class_prompt": class_prompt,
        "model": cfg.model,
        "model_id": model_id,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "references": [{"file": os.fspath(p), "sha256": sha256_file(p)} for p, _ in references],
        "extractor": extractor_info,
        "versions": _versions(),
        "world_size": accelerator.num_processes,
        "steps_done": 0,
    }
    if cfg.lora_rank:
        run_info["lora"] = lora.run_card(cfg)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if finished is None:  # a finished run keeps its record until the new one is done
            write_json(out / RUN_FILE, run_info)
    tracking.start(accelerator, cfg)

    # --- prior images: generated once with the frozen base model, then reused -----------------
    class_dir = Path(cfg.class_dir) if cfg.class_dir else out / "class-images"
    class_images: list[Path] = []
    if use_prior:
        pipe.to(device)
        class_info = generate_class_images(pipe, cfg, class_prompt, class_dir, accelerator)
        run_info["class_images"] = class_info
        class_images = find_images(class_dir)

    # --- frozen parts in the compute dtype, trainable parts in fp32 ---------------------------
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
    if cfg.lora_rank:  # frozen base weights in the compute dtype, fp32 adapters (spurcli.lora)
        lora.add_adapters(unet, text_encoder, cfg, weight_dtype)
    else:
        unet.requires_grad_(True)
        text_encoder.requires_grad_(cfg.train_text_encoder)
    unet.train()
    text_encoder.train(cfg.train_text_encoder)
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

    # --- data: images resized once, latents encoded once per (image, crop) --------------------
    data = Data(
        [img for _, img in references],
        [read_image(p) for p in class_images],
        cfg,
        accelerator.process_index,
        accelerator.num_processes,
        noise_scheduler.config.num_train_timesteps,
    )
    encoder = LatentCache(train_vae, device)
    sfsl = None
    if extractor is not None:
        with torch.no_grad(), accelerator.autocast():
            ref = extractor(data.reference_batch().to(device, weight_dtype)).float()
        sfsl = SFSL(
            extractor,
            ref,
            cfg.sfsl_weight,
            cfg.sfsl_target,
            cfg.sfsl_distance,
            cfg.sfsl_max_timestep,
            cfg.sfsl_decode_size,
            sfsl_decoder,
        )
    ids = tokenizer(
        [instance_prompt, class_prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    if not cfg.train_text_encoder:
        text_encoder.to(device)
        with torch.no_grad():
            frozen_text = text_encoder(ids)[0]

    # --- optimizer, lr schedule, accelerate ---------------------------------------------------
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
    unet_ddp = trained[0]
    text_ddp = trained[1] if cfg.train_text_encoder else None
    params = [p for group in groups for p in group["params"]]
    run = Checkpointable(
        cfg, out, accelerator, unet_ddp, text_ddp or text_encoder, optimizer, lr_scheduler
    )

    step = 0
    if checkpoint is not None:
        step = load_checkpoint(run, checkpoint, skip_bad=cfg.resume == "latest")
        log.info("resumed from %s (step %d)", checkpoint, step)
    if main:
        truncate_log(out / LOG_FILE, step)

    def text_states(batch: Batch) -> torch.Tensor:
        states = text_ddp(ids)[0] if text_ddp is not None else frozen_text
        return states[batch.prompt_rows.to(device)]  # rows 0 (instance) / 1 (class) per sample

    # --- the loop -----------------------------------------------------------------------------
    stop = StopFlag()
    last: dict[str, float] = {}
    with stop.installed(), console.progress_bar("finetune", total=cfg.steps) as bar:
        bar.advance(step)
        while step < cfg.steps:
            sums = torch.zeros(len(LOSS_KEYS), device=device)
            every = cfg.log_grad_norms_every
            term_norms = None
            for micro in range(cfg.grad_accum):
                batch = data.batch(step * cfg.grad_accum + micro)
                latents = encoder.latents(batch)
                with contextlib.ExitStack() as stack:
                    if micro < cfg.grad_accum - 1:  # no gradient all-reduce until the last one
                        for model in trained:
                            stack.enter_context(accelerator.no_sync(model))
                    with accelerator.autocast():
                        losses = step_losses(
                            unet_ddp,
                            train_vae,
                            alphas_cumprod,
                            prediction_type,
                            latents=latents,
                            noise=batch.noise.to(device),
                            timesteps=batch.timesteps.to(device),
                            encoder_hidden_states=text_states(batch),
                            n_instance=batch.n_instance,
                            prior_weight=cfg.prior_weight,
                            sfsl=sfsl,
                            ref_index=batch.instance_index.to(device),
                        )
                    if every and (step + 1) % every == 0 and micro == 0:
                        scaler = accelerator.scaler  # fp16: scaled, against underflow
                        scale = scaler.get_scale() if scaler is not None else 1.0
                        term_norms = term_grad_norms(losses.terms, params, GRAD_NORM_TERMS, scale)
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
                total_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                if norms:  # the whole gradient's norm, before clipping
                    norms["grad_norm"] = float(total_norm)
            lr = lr_scheduler.get_last_lr()[0]
            optimizer.step()
            check_weights_finite(params, step + 1, out, lr)
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last = values
            if main:
                with open(out / LOG_FILE, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, **values, "lr": lr, **norms}) + "\n")
            accelerator.log({**values, "lr": lr, **norms}, step=step)
            bar.advance()
            bar.update(info=f"loss {values['loss']:.4f}")
            if on_step is not None:
                on_step(step)
            # Every process must agree, or they would wait on different collectives.
            flag = torch.tensor([float(stop.requested)], device=device)
            interrupted = accelerator.reduce(flag, reduction="sum").item() > 0
            if interrupted or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                save_checkpoint(run, step, values)
            if cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.steps):
                validate(run, pipe, train_vae, instance_prompt, step)
            if interrupted:
                raise Interrupted(
                    f"interrupted at step {step}; checkpoint saved in "
                    f"{checkpoint_dir(out, step)}; continue with --resume latest"
                )

    # --- the result ---------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if main:
        pipe.unet = accelerator.unwrap_model(unet)
        pipe.text_encoder = accelerator.unwrap_model(text_encoder)
        quiet_library_progress_bars()  # transformers' "Writing model shards" bar is noise here
        if cfg.lora_rank:  # the adapters alone, in diffusers' LoRA format
            with atomic_dir(out / lora.LORA_DIR) as tmp:
                te = pipe.text_encoder if cfg.train_text_encoder else None
                lora.save_lora(tmp, pipe.unet, te)
        else:
            with atomic_dir(out / RUN_PIPELINE_DIR) as tmp:
                pipe.save_pretrained(tmp, safe_serialization=True)
        run_info.update(
            status="finished",
            steps_done=step,
            final_losses=last,
            prediction_type=prediction_type,
            seconds=round(time.time() - started, 1),
        )
        write_json(out / RUN_FILE, run_info)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the tracker
    return out


def fill_prompt(template: str, identifier: str, noun: str | None) -> str:
    """``{identifier}`` and ``[V]`` become the identifier, ``{noun}`` the class noun."""
    text = template.replace("[V]", identifier).replace("{identifier}", identifier)
    return text.replace("{noun}", noun or "")


def _accelerator(cfg: FinetuneConfig) -> Any:
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


def base_model(cfg: FinetuneConfig, out: Path) -> Any:
    """The `ModelRef` to fine-tune: ``cfg.model`` at ``cfg.revision``; a resumed run that did not
    pin one stays on the hub commit it started from, even if the hub's main moved since (a
    preempted cluster job resumed a day later must not mix two base models)."""
    from spurcli.diffusion import resolve_model

    started = _started_commit(cfg, out)
    return resolve_model(cfg.model, revision=cfg.revision or started)


def base_identity(base: Any, out: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    """`model_identity` of the loaded base model; a resumed run must be on its first commit."""
    from spurcli.diffusion import model_identity

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
        card = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    recorded = card.get("model_id") or {}
    if card.get("model") != cfg.model or recorded.get("source") != "hub":
        return None
    return recorded.get("revision")


def _versions() -> dict[str, str]:
    names = ("spurcli", "torch", "diffusers", "transformers", "accelerate")
    found = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


# ----------------------------------------------------------------------------------------------
# prior images


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
# validation


@torch.no_grad()
def validate(run: Checkpointable, pipe: Any, vae: Any, instance_prompt: str, step: int) -> None:
    """validation/step-N/PP-II.png: each prompt with the same seeds at every step (comparable)."""
    cfg, accelerator = run.cfg, run.accelerator
    if accelerator.is_main_process:
        from diffusers import StableDiffusionPipeline

        from spurcli.images import to_pil
        from spurcli.losses import decode_to_unit

        unet = accelerator.unwrap_model(run.unet)
        text_encoder = accelerator.unwrap_model(run.text_encoder)
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
        for p, prompt in enumerate(prompts or [instance_prompt]):
            # latents, decoded here: decode_to_unit casts to the VAE's dtype (fp16 without autocast)
            latents = generate_seeded(val, prompt, seeds, steps, guidance, cfg.resolution,
                                      accelerator, output_type="latent")  # fmt: skip
            with accelerator.autocast():
                images = [to_pil(image) for image in decode_to_unit(vae, latents)]
            for i, (seed, image) in enumerate(zip(seeds, images, strict=True)):
                meta = {"prompt": prompt, "seed": seed, "step": step}
                write_png(
                    run.out / "validation" / f"step-{step}" / f"{p:02d}-{i:02d}.png", image, meta
                )
            tracking.log_images(accelerator, f"validation/{p:02d}", images, step)
        unet.train(was_training[0])
        text_encoder.train(was_training[1])
    accelerator.wait_for_everyone()
