"""One optimizer step of `spurcli finetune`, and the loop around it.

    cfg = FinetuneConfig(model="tiny", ..., prior_weight=0, sfsl_weight=0)
    accelerator = make_accelerator(cfg)
    models = load_training_models(cfg, out, accelerator)
    training = prepare_training(cfg, out, accelerator, read_inputs(cfg), models, [], {})
    train_step(training)                 # -> StepLog(losses, lr, grad_norms); training.step == 1

`train_step` is DreamBooth + prior preservation + SFSL (`spurcli.generate.losses`) on one
instance and one class batch (`spurcli.generate.training_data`), with gradient accumulation,
clipping and mixed precision through accelerate; `train` repeats it until --steps, with the log,
checkpoints (`spurcli.generate.checkpoints`) and validation images.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spurcli import console
from spurcli.errors import SpurcliError
from spurcli.generate import lora, tracking
from spurcli.generate.checkpoints import (
    LOG_FILE,
    Checkpointable,
    Interrupted,
    StopFlag,
    check_weights_finite,
    checkpoint_dir,
    last_good_checkpoint,
    load_checkpoint,
    save_checkpoint,
    truncate_log,
)
from spurcli.generate.config import FinetuneConfig
from spurcli.generate.inputs import Inputs, Models, compute_dtype
from spurcli.generate.losses import SFSL, decode_to_unit, step_losses, term_grad_norms
from spurcli.generate.modules import cast_frozen
from spurcli.generate.pipelines import load_taesd
from spurcli.generate.prior import generate_seeded
from spurcli.generate.prompts import fill_prompt
from spurcli.generate.tiny import assemble_pipeline
from spurcli.generate.training_data import Batch, CropFeatures, LatentCache, TrainingData
from spurcli.images import read_image, to_pil, write_png

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_instance", "loss_prior", "loss_sfsl")


GRAD_NORM_TERMS = ("instance", "prior", "sfsl")  # log.jsonl: grad_norm_<term> every N steps

# fp16's gradient scaler halves its scale at each skipped step, from 2^16: after 16 skips in a
# row the scale is 1, so more than that means the overflow is not the scale's doing.
MAX_CONSECUTIVE_SKIPS = 20


@dataclass
class Training(Checkpointable):
    """A fine-tuning run in progress: what its checkpoints hold (`Checkpointable`: the prepared
    models, optimizer and lr schedule) plus what `train_step`, validation and `save_run` need."""

    pipe: Any  # the base pipeline; its unet and text_encoder are the trained ones, unwrapped
    train_vae: Any  # the VAE the loss encodes and decodes with, in the compute dtype
    data: TrainingData
    encoder: LatentCache
    sfsl: SFSL | None  # None: no SFSL term
    crop_features: CropFeatures | None  # the paired target's features per crop; None: not paired
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
    consecutive_skips: int = 0  # steps the fp16 gradient scaler skipped in a row, up to now

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
    clipping: dict[str, float] = field(default_factory=dict)  # `clip_gradients`, every step
    skipped: bool = False  # the fp16 gradient scaler skipped the update (overflow)
    loss_scale: float | None = None  # fp16: the scaler's scale after the step

    def entry(self) -> dict[str, float | None]:
        entry: dict[str, float | None] = {**self.losses, "lr": self.lr, **self.grad_norms}
        entry.update(self.clipping)
        if self.loss_scale is not None:
            entry["loss_scale"] = self.loss_scale
        if self.skipped:
            entry["skipped"] = 1
        # JSON has no NaN or infinity: what a skipped step could not measure is null
        return {k: v if v is None or math.isfinite(v) else None for k, v in entry.items()}


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
        latent_channels=unet.config.in_channels,
        vae_factor=pipe.vae_scale_factor,
    )
    encoder = LatentCache(train_vae, device)
    sfsl, crop_features = None, None
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
            cfg.sfsl_sample_steps,
            cfg.sfsl_random_crop,
            cfg.sfsl_batch_size,
        )
        if cfg.sfsl_target == "paired":
            extractor = models.extractor
            crop_features = CropFeatures(extractor, device, weight_dtype, accelerator.autocast)
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
        crop_features=crop_features,
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
            accelerator.log({k: v for k, v in entry.items() if v is not None}, step=step)
            bar.advance()
            if "loss" in losses:  # none yet when the first steps were skipped
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

    Without a gradient scaler a non-finite loss stops before the update; with fp16's scaler the
    scaler skips such a step (as it skips any whose gradients overflow: normal while it finds
    its scale), which counts as a step, is logged as skipped and leaves the weights as they
    were; `MAX_CONSECUTIVE_SKIPS` skips in a row stop the run. Non-finite weights after an
    update stop it too (a `SpurcliError` naming the last good checkpoint, ``training.step``
    unchanged): nothing non-finite is ever logged, saved or sampled."""
    cfg, accelerator, out, step = training.cfg, training.accelerator, training.out, training.step
    device = accelerator.device
    sums = torch.zeros(len(LOSS_KEYS), device=device)
    every = cfg.log_grad_norms_every
    term_norms = None
    scaler = accelerator.scaler  # fp16: gradients are scaled, against underflow
    scale = scaler.get_scale() if scaler is not None else 1.0
    sfsl_grads: list[torch.Tensor] | None = None  # --sfsl-grad-clip: SFSL's gradient, apart
    for micro in range(cfg.grad_accum):
        batch = training.data.batch(step * cfg.grad_accum + micro)
        latents = training.encoder.latents(batch)
        crops = training.crop_features
        ref_features = crops.features(batch) if crops is not None else None
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
                    ref_features=ref_features,
                    views=batch.views,
                )
            if every and (step + 1) % every == 0 and micro == 0:
                term_norms = term_grad_norms(losses.terms, training.params, GRAD_NORM_TERMS, scale)
            sfsl_term = losses.terms.get("sfsl")
            if cfg.sfsl_grad_clip > 0 and sfsl_term is not None and sfsl_term.requires_grad:
                # SFSL's gradient on its own (not into .grad), then the DreamBooth terms' into
                # .grad: the sum of the two is the step's gradient, as one backward would give.
                sfsl_grads = _add_grads(
                    sfsl_grads,
                    torch.autograd.grad(
                        sfsl_term * (scale / cfg.grad_accum),
                        training.params,
                        retain_graph=True,
                        allow_unused=True,
                    ),
                    training.params,
                )
                dreambooth = sum(v for k, v in losses.terms.items() if k != "sfsl")
                accelerator.backward(dreambooth / cfg.grad_accum)
            else:
                accelerator.backward(losses.total / cfg.grad_accum)
        terms = [losses.total.detach(), losses.instance, losses.prior, losses.sfsl]
        sums += torch.stack([t.float() for t in terms]) / cfg.grad_accum
    sums = accelerator.reduce(sums, reduction="mean")  # the mean over processes
    values = dict(zip(LOSS_KEYS, sums.tolist(), strict=True))
    finite = all(math.isfinite(v) for v in values.values())
    if not finite and scaler is None:
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
    clipping = clip_gradients(training, scale, sfsl_grads)
    if norms and "clip_norm" in clipping:  # the clipped gradient's norm, before clipping
        norms["grad_norm"] = clipping["clip_norm"]
    lr = training.lr_scheduler.get_last_lr()[0]
    scale_before = scaler.get_scale() if scaler is not None else None
    training.optimizer.step()  # with a scaler: skipped when the gradients are not finite
    # The scaler lowers its scale exactly when it skipped (accelerate's step_was_skipped misses
    # the skips of optimizers that take the scaler into their kernel, such as fused AdamW).
    skipped = scaler is not None and scaler.get_scale() < scale_before
    check_weights_finite(training.params, step + 1, out, lr)
    training.lr_scheduler.step()
    training.optimizer.zero_grad(set_to_none=True)
    training.consecutive_skips = training.consecutive_skips + 1 if skipped else 0
    if training.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
        raise SpurcliError(
            f"the fp16 gradient scaler skipped {training.consecutive_skips} steps in a row "
            f"(up to step {step + 1}, loss scale now {scaler.get_scale():.3g}): the loss or its "
            "gradients overflow whatever the scale; last good checkpoint: "
            f"{last_good_checkpoint(out) or 'none'}. Try --mixed-precision bf16 or no, or a lower "
            "--lr"
        )
    training.step = step + 1
    if finite:
        training.last_losses = values
    loss_scale = float(scaler.get_scale()) if scaler is not None else None
    return StepLog(dict(values), lr, norms, clipping, skipped=skipped, loss_scale=loss_scale)


def _add_grads(
    total: list[torch.Tensor] | None, grads: tuple[Any, ...], params: list[torch.nn.Parameter]
) -> list[torch.Tensor]:
    """``total + grads`` over micro-steps; a parameter the term does not reach gets zeros."""
    grads_ = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    if total is None:
        return grads_
    return [t + g for t, g in zip(total, grads_, strict=True)]


def clip_gradients(
    training: Training, scale: float, sfsl_grads: list[torch.Tensor] | None
) -> dict[str, float]:
    """Clip ``.grad`` (fp16: still scaled by ``scale``) to --max-grad-norm and, with
    --sfsl-grad-clip, SFSL's own gradient ``sfsl_grads`` to that norm before adding it; returns
    what clipping did: ``clip_norm`` (the norm before clipping) and ``clip_scale`` = min(1,
    max / norm), the factor the update was scaled by, and ``sfsl_clip_norm``/``sfsl_clip_scale``.
    """
    cfg, params = training.cfg, training.params
    done: dict[str, float] = {}
    if sfsl_grads is not None and training.accelerator.num_processes > 1:
        import torch.distributed as dist  # DDP averages .grad; this is outside it

        for g in sfsl_grads:
            dist.all_reduce(g)
            g /= training.accelerator.num_processes
    if cfg.max_grad_norm > 0:
        # What accelerate's clip_grad_norm_ does without a scaler (the same call); with one, in
        # scaled units, so that the scaler still unscales and checks the whole sum in its step.
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm * scale)
        done["clip_norm"] = float(norm) / scale
        done["clip_scale"] = min(1.0, cfg.max_grad_norm / (done["clip_norm"] + 1e-6))
    if sfsl_grads is not None:
        norm = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in sfsl_grads]))
        done["sfsl_clip_norm"] = float(norm) / scale
        factor = min(1.0, cfg.sfsl_grad_clip / (done["sfsl_clip_norm"] + 1e-6))
        done["sfsl_clip_scale"] = factor
        for p, g in zip(params, sfsl_grads, strict=True):
            if p.grad is None:
                p.grad = g * factor
            else:
                p.grad.add_(g, alpha=factor)
    return done


def log_summary(path: Path) -> dict[str, Any]:
    """What the run card says about the steps in log.jsonl (one line per step, as resumed):
    how many the fp16 gradient scaler skipped, and what clipping did to the updates
    (``clipping``: --max-grad-norm's; ``sfsl_clipping``: --sfsl-grad-clip's)."""
    entries = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    summary: dict[str, Any] = {"skipped_steps": sum(1 for e in entries if e.get("skipped"))}
    for name, prefix in (("clipping", "clip"), ("sfsl_clipping", "sfsl_clip")):
        scales = [e[f"{prefix}_scale"] for e in entries if e.get(f"{prefix}_scale") is not None]
        norms = [e[f"{prefix}_norm"] for e in entries if e.get(f"{prefix}_norm") is not None]
        if scales:
            summary[name] = {
                "steps": len(scales),
                "clipped_steps": sum(1 for s in scales if s < 1),
                "mean_scale": sum(scales) / len(scales),
                "min_scale": min(scales),
                "mean_norm_before": sum(norms) / len(norms) if norms else None,
            }
    return summary


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


@torch.no_grad()
def validate(training: Training, step: int) -> None:
    """validation/step-N/PP-II.png: each prompt with the same seeds at every step (comparable)."""
    cfg, accelerator = training.cfg, training.accelerator
    pipe, vae = training.pipe, training.train_vae
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(training.unet)
        text_encoder = accelerator.unwrap_model(training.text_encoder)
        was_training = unet.training, text_encoder.training
        unet.eval()
        text_encoder.eval()
        val = assemble_pipeline(vae, text_encoder, pipe.tokenizer, unet, pipe.scheduler)
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
