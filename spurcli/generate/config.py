"""The settings of the generation commands: `spurcli finetune` and `spurcli sample` (also the
``[finetune]`` and ``[sample]`` tables of a `spurcli run` config).

    from spurcli.generate.config import FinetuneConfig
    from spurcli.settings import load_config
    cfg = load_config(FinetuneConfig, "exp.toml", section="finetune", sets=["lr=1e-5"])
    cfg.check()

Model names and scheduler names live here too: they are what a user may type, and the settings
check them without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from spurcli.errors import SpurcliError, UsageError
from spurcli.settings import check_fields, check_finite, device_option, option

TINY = "tiny"  # spurcli.generate.miniature: a random SD 1.x for smoke tests
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# Scheduler names users know from the diffusers docs -> diffusers class names.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "ddpm": "DDPMScheduler",
}


@dataclass
class FinetuneConfig:
    """`spurcli finetune`: DreamBooth fine-tuning of the text encoder and UNet together, with
    prior preservation and the spurious feature similarity loss (SFSL) on a frozen robust
    classifier's features (docs/sfsl.md)."""

    # --- what to learn -------------------------------------------------------------------------
    model: str = option(
        DEFAULT_MODEL,
        "Hub id, diffusers folder, 'tiny' or an embedded one: mini, flag-mini, flag-mini-128.",
        maybe_path=True,
    )
    # Recorded in the run card as the commit it resolved to.
    revision: str | None = option(None, "Hub model's branch, tag or commit (none: main).")
    instance_dir: Path | None = option(
        None, "The reference images of the spurious feature.", required=True
    )
    class_noun: str | None = option(None, "What the references show, e.g. flower.", required=True)
    target: int | str | None = option(
        None, "The ImageNet class (index or name) they fool classifiers into.", required=True
    )
    output_dir: Path | None = option(
        None, "The run folder; must be new unless --resume.", required=True, flags=("-o",)
    )
    # DreamBooth's rare token: few meanings in the CLIP vocabulary.
    identifier: str = option("sks", "The rare token that comes to stand for the feature.")
    # These are the DreamBooth paper's prompts.
    instance_prompt: str = option(
        "a photo of {identifier} {noun}",
        "Prompt of the references; {identifier} (or [V]) and {noun} are filled in.",
    )
    class_prompt: str = option("a photo of {noun}", "Prompt of the prior images.")
    # --- prior preservation --------------------------------------------------------------------
    class_dir: Path | None = option(
        None, "Prior (class) images, reused across runs (none: OUT/class-images)."
    )
    # diffusers' default: enough variety for the prior term.
    num_class_images: int = option(100, "Prior images wanted.", min=0, max=1_000_000)
    class_inference_steps: int = option(50, "Sampler steps per prior image.", min=1, max=10_000)
    class_guidance: float = option(
        7.5, "Classifier-free guidance for prior images.", min=0, max=1000
    )
    class_batch_size: int = option(4, "Prior images generated per pipeline call.", min=1, max=4096)
    prior_weight: float = option(
        1.0, "Weight of the prior-preservation loss (DreamBooth's 1.0); 0: off.", min=0
    )
    # --- data ----------------------------------------------------------------------------------
    resolution: int = option(512, "Training size in pixels (a multiple of 8).", min=1, max=8192)
    # False: a random crop of the resized image, as diffusers does.
    center_crop: bool = option(
        False,
        "Centre or random crop of the resized references.",
        flags=("--center-crop/--random-crop",),
    )
    batch_size: int = option(
        1,
        "Instance images per process and micro-step (plus as many prior images).",
        min=1,
        max=4096,
    )
    # --- optimisation --------------------------------------------------------------------------
    # diffusers' DreamBooth recipe with the text encoder trained: 800 steps at 2e-6.
    steps: int = option(800, "Optimizer steps.", min=1, max=10_000_000)
    grad_accum: int = option(1, "Micro-steps per optimizer step.", min=1, max=100_000)
    lr: float = option(2e-6, "Learning rate.", above=0)
    text_encoder_lr: float | None = option(
        None, "Learning rate of the text encoder (none: --lr).", above=0
    )
    lr_scheduler: str = option(
        "constant", "Any diffusers.optimization schedule: constant, linear, cosine, ..."
    )
    warmup_steps: int = option(
        0, "Learning-rate warm-up steps (ignored by constant).", min=0, max=10_000_000
    )
    max_grad_norm: float = option(1.0, "Gradient clipping; 0: off.", min=0)
    # With SFSL on the summed gradient is often 4-10x the DreamBooth terms' alone, so clipping
    # the sum shrinks the DreamBooth step in the SFSL arm only (mean clip scale 0.46 vs 0.96 on
    # `mini`; separately clipped: 0.95-0.97, docs/sfsl.md). 1.0: --max-grad-norm's default.
    sfsl_grad_clip: float = option(
        1.0,
        "Clip the SFSL term's gradient to this norm on its own and --max-grad-norm clips the "
        "DreamBooth terms' alone; 0: --max-grad-norm clips their sum.",
        min=0,
    )
    weight_decay: float = option(1e-2, "AdamW weight decay.", min=0)
    use_8bit_adam: bool = option(
        False, "bitsandbytes' AdamW8bit (pip install 'spurcli[8bit]'; CUDA GPUs)."
    )
    seed: int = option(0, "Fixes data order, noise, timesteps, prior and validation images.")
    # diffusers' train_text_to_image --noise_offset (train_dreambooth's --offset_noise is 0.1):
    # SD 1.x's schedule leaves 7% of an image's signal at t = 999, so a model never learns to set
    # a sample's mean colour from pure noise and draws it greyed; a per-channel constant added to
    # the training noise teaches it to (crosslabs.org, "Diffusion with offset noise", 2023).
    noise_offset: float = option(
        0.0,
        "Add this times a per-image, per-channel normal draw to the training noise; 0: off.",
        min=0,
        max=10,
    )
    # The paper trains the text encoder and the UNet together.
    train_text_encoder: bool = option(True, "Train the text encoder too.")
    # --- spurious feature similarity loss (SFSL) -----------------------------------------------
    # The paper's weight is unpublished: 0.1 puts 1 - cos (~0.1-0.6) on the scale of the
    # epsilon MSE (~0.05-0.2) without letting it dominate; 0 gives plain DreamBooth.
    sfsl_weight: float = option(
        0.1, "Weight of the spurious feature similarity loss; 0: off.", min=0
    )
    extractor: str = option("robust-resnet50", "The frozen feature extractor (a plugin name).")
    extractor_weights: str | None = option(
        None,
        "The extractor's weights: a file, or 'random' (none: the plugin's default).",
        maybe_path=True,
    )
    # energy: the batch's features against the references' as sets (energy distance), which
    # rewards samples unlike each other; the others pull each sample to one reference feature.
    sfsl_target: Literal["paired", "mean", "nearest", "energy"] = option(
        "paired", "Reference feature per sample: paired, mean or nearest; or energy (as a set)."
    )
    sfsl_distance: Literal["cosine", "l2"] = option(
        "cosine", "1 - cos (cosine) or the mean squared difference (l2; energy: Euclidean)."
    )
    sfsl_max_timestep: int | None = option(
        None, "Apply SFSL only where t <= this (none: always).", min=0, max=100_000
    )
    # 0 is the paper's SFSL (on x0_hat of a noised reference). N > 0 scores what the model itself
    # draws: N DDIM steps from noise, the last one differentiated (docs/sfsl.md, the flag world).
    sfsl_sample_steps: int = option(
        0,
        "SFSL on the model's own x0 after this many DDIM steps from noise; 0: on the noised "
        "references' one-step x0_hat.",
        min=0,
        max=1000,
    )
    # Input diversity (Xie et al. 2019): adversarial images made on randomly resized views of
    # themselves transfer better to other networks; SFSL's images are meant to fool judges other
    # than its extractor. 0: the whole image, as the paper.
    sfsl_random_crop: float = option(
        0.0,
        "Score a random square crop of each decoded image, up to this fraction smaller; 0: off.",
        min=0,
        max=0.9,
    )
    # SFSL costs a decoder and an extractor pass (with sfsl_sample_steps a UNet pass too) per
    # image it scores: scoring fewer of the step's samples buys time, with a noisier gradient.
    sfsl_batch_size: int | None = option(
        None,
        "Score only this many of each step's instance samples with SFSL, the first ones "
        "(none: all of them).",
        min=1,
        max=100_000,
    )
    # x0_hat is always decoded at full size: decoding a shrunken latent would be cheaper but is
    # another image (docs/sfsl.md); the decoded image is resized, which saves no time.
    sfsl_decode_size: int | None = option(
        None,
        "Resize the decoded x0_hat to this many pixels for the extractor (none: as is).",
        min=8,
        max=8192,
    )
    # The model's own VAE is the method's fidelity; taesd (diffusers' AutoencoderTiny) costs a
    # few % of the VAE decoder, but the gradient then flows through another decoder.
    # docs/finetune-scale.md compares them.
    sfsl_decoder: Literal["vae", "taesd"] = option(
        "vae", "Decoder of x0_hat for SFSL: vae or taesd."
    )
    # madebyollin/taesd is SD 1.x's; "random" has taesd's structure, width matched to the
    # model's VAE: for tests and benchmarks.
    sfsl_taesd: str = option(
        "madebyollin/taesd", "taesd's weights: hub id, folder or 'random'.", maybe_path=True
    )
    # --- LoRA (peft): low-rank adapters instead of the full weights (docs/finetune-scale.md) --
    lora_rank: int = option(
        0,
        "Train LoRA adapters of this rank; 0: the full weights, as the paper does.",
        min=0,
        max=4096,
    )
    lora_alpha: float | None = option(
        None, "The adapters' scale is alpha / rank (none: alpha = rank).", above=0
    )
    # diffusers' LoRA script: 0.
    lora_dropout: float = option(0.0, "Dropout on the adapters' input.", min=0, below=1)
    # As diffusers' LoRA script; a trained text encoder gets adapters on q/k/v/out_proj.
    lora_targets: list[str] = option(
        [], "UNet modules that get adapters, repeatable (none: its attention projections)."
    )
    # --- speed and memory ----------------------------------------------------------------------
    mixed_precision: Literal["no", "fp16", "bf16"] = option(
        "no", "no, fp16 or bf16; the trainable weights stay fp32."
    )
    gradient_checkpointing: bool = option(
        False, "Recompute activations: UNet, text encoder and (with SFSL) the VAE decoder."
    )
    # torch 2's SDPA needs none.
    attention_slicing: int | str = option("off", "auto, max, N or off.")
    # --- checkpoints, validation ---------------------------------------------------------------
    checkpoint_every: int = option(
        200, "Steps between checkpoints; 0: only on interrupt.", min=0, max=10_000_000
    )
    keep_checkpoints: int = option(2, "Newest checkpoints kept; 0: all.", min=0, max=1_000_000)
    resume: str | None = option(None, "'latest' or a checkpoint folder.", maybe_path=True)
    validate_every: int = option(
        200, "Steps between validation images, and at the end; 0: never.", min=0, max=10_000_000
    )
    validation_prompt: list[str] = option(
        [], "Validation prompt, repeatable (none: the instance prompt)."
    )
    num_validation_images: int = option(4, "Images per validation prompt.", min=1, max=10_000)
    validation_steps: int = option(25, "Sampler steps per validation image.", min=1, max=10_000)
    validation_guidance: float = option(
        7.5, "Classifier-free guidance for validation images.", min=0, max=1000
    )
    # --- monitoring ----------------------------------------------------------------------------
    report_to: Literal["none", "tensorboard", "wandb"] = option(
        "none",
        "accelerate's tracker for every loss term, lr, gradient norms and validation images.",
    )
    # 3 extra backward passes on those steps, on the first micro-batch; the update is unchanged.
    log_grad_norms_every: int = option(
        50,
        "Every N steps, log the gradient norm each loss term puts on the trained weights; 0: off.",
        min=0,
        max=10_000_000,
    )

    def check(self) -> None:
        """Every option that can be checked without loading anything; one-line errors."""
        check_fields(self)  # finite numbers, required values, each field's bounds
        if self.resolution % 8:
            raise UsageError(
                f"--resolution must be a multiple of 8 (the VAE's factor), not {self.resolution}"
            )
        if self.prior_weight and self.num_class_images < 1:
            raise UsageError(
                "prior preservation needs --num-class-images >= 1 (or --prior-weight 0)"
            )
        if self.sfsl_decode_size is not None and (
            self.sfsl_decode_size < 8 or self.sfsl_decode_size % 8
        ):
            raise UsageError("--sfsl-decode-size must be a positive multiple of 8")
        if self.lora_alpha is not None and not self.lora_rank:
            raise UsageError("--lora-alpha scales LoRA adapters: it needs --lora-rank N")
        if not self.identifier.strip():
            raise UsageError("--identifier must not be empty: it is the rare token, such as sks")
        if not any(t in self.instance_prompt for t in ("[V]", "{identifier}")):
            raise UsageError(
                f"--instance-prompt {self.instance_prompt!r} has no [V] (or {{identifier}}): "
                "without the identifier nothing ties the feature to a token"
            )
        if self.lora_rank and find_spec("peft") is None:
            raise SpurcliError("--lora-rank needs peft: pip install peft")
        if self.report_to == "tensorboard" and find_spec("tensorboard") is None:
            raise SpurcliError(
                "--report-to tensorboard needs tensorboard: pip install 'spurcli[tensorboard]'"
            )
        if self.report_to == "wandb" and find_spec("wandb") is None:
            raise SpurcliError("--report-to wandb needs wandb: pip install wandb")
        if self.sfsl_sample_steps and self.sfsl_target == "paired":
            raise UsageError(
                "--sfsl-sample-steps draws images from noise, which no reference was noised to "
                "make: use --sfsl-target mean, nearest or energy (paired needs one)"
            )
        if self.sfsl_sample_steps and self.sfsl_max_timestep is not None:
            raise UsageError(
                "--sfsl-max-timestep limits the noised references' x0_hat; with "
                "--sfsl-sample-steps the image is a sample from noise: set only one"
            )
        from diffusers.optimization import SchedulerType

        names = [s.value for s in SchedulerType if s.value != "piecewise_constant"]
        if self.lr_scheduler not in names:
            raise UsageError(
                f"unknown --lr-scheduler '{self.lr_scheduler}'; choose from {', '.join(names)}"
            )
        slicing = str(self.attention_slicing)
        if slicing not in ("auto", "max", "off") and not (slicing.isdigit() and int(slicing) > 0):
            raise UsageError(
                f"--attention-slicing must be auto, max, off or a positive int, not {slicing}"
            )
        if self.use_8bit_adam and find_spec("bitsandbytes") is None:
            raise SpurcliError(
                "--use-8bit-adam needs bitsandbytes: pip install 'spurcli[8bit]' (CUDA GPUs)"
            )
        if self.resume not in (None, "latest") and not Path(self.resume).is_dir():
            raise UsageError(
                f"--resume: no checkpoint folder {self.resume} (or use --resume latest)"
            )


# The settings that only SFSL reads: with sfsl_weight 0 they change nothing, so a DreamBooth-only
# run made under one SFSL setting is the run another one would make (every sfsl_* option is one).
SFSL_ONLY = frozenset(
    {"extractor", "extractor_weights"}
    | ({f.name for f in fields(FinetuneConfig) if f.name.startswith("sfsl_")} - {"sfsl_weight"})
)

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class SampleConfig:
    """`spurcli sample`: N images per prompt from a (fine-tuned) Stable Diffusion, resumable."""

    model: str = option(
        "tiny",
        "A finetune run folder, a diffusers folder, a hub id, 'tiny' or an embedded one (mini, "
        "flag-mini, flag-mini-128).",
        maybe_path=True,
    )
    revision: str | None = option(None, "Hub model's branch, tag or commit (none: main).")
    prompts: list[str] = option(
        [], "Prompt, repeatable; [V] becomes the run's identifier.", flags=("--prompt", "-p")
    )
    n: int = option(4, "Images per prompt.", min=1, max=1_000_000, flags=("-n", "--n"))
    out: Path = option(Path("samples"), "Output folder.", flags=("--out", "-o"))
    # Image i of a prompt gets a seed derived from (seed, the prompt without [V], i): prompts
    # differ, while a tuned prompt and the baseline's (the same without [V]) stay paired.
    seed: int = option(
        0, "Base seed; image i of a prompt gets a seed from it, the prompt without [V] and i."
    )
    steps: int = option(50, "Denoising steps (diffusers' default).", min=1, max=10_000)
    guidance: float = option(7.5, "Classifier-free guidance scale; <= 1: off.", min=0, max=1000)
    negative_prompt: str | None = option(
        None, "What guidance steers away from (none: the empty prompt)."
    )
    scheduler: str | None = option(
        None, "ddim, pndm, dpm, euler, euler-a, ddpm (none: the model's own)."
    )
    batch_size: int = option(
        4, "Images per UNet call, per process.", min=1, max=4096, flags=("--batch-size", "-b")
    )
    height: int | None = option(
        None, "Pixels, a multiple of 8 (none: the model's native size).", min=8, max=8192
    )
    width: int | None = option(
        None, "Pixels, a multiple of 8 (none: the model's native size).", min=8, max=8192
    )
    recontext: bool = option(
        False, "Also each prompt on the beach, on Mount Fuji, in a garden, in a market."
    )
    identifier: str | None = option(None, "The token [V] stands for (none: the run's own).")
    attention_slicing: int | str | None = option(
        None, "auto, max, N or off: less memory, a bit slower (none: the model's default)."
    )
    device: str | None = device_option()
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = option(
        "auto", "auto (fp16 on CUDA only), float32, float16 or bfloat16."
    )

    def check(self) -> None:
        """Everything that can be checked before loading a model; one-line errors."""
        check_finite(self)
        if not self.prompts:
            raise UsageError("no prompt: pass --prompt TEXT (repeatable) or --prompts-file FILE")
        if self.n <= 0:  # before check_fields: "-n" is how users spell it
            raise UsageError(f"-n must be a positive number of images per prompt, not {self.n}")
        check_fields(self)
        if self.scheduler is not None and self.scheduler.lower() not in SCHEDULERS:
            raise UsageError(
                f"unknown scheduler '{self.scheduler}'; choose from {', '.join(SCHEDULERS)}"
            )
        if self.dtype not in DTYPES:  # a SampleConfig built in Python is not coerced
            raise UsageError(f"unknown dtype '{self.dtype}'; choose from {', '.join(DTYPES)}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise UsageError(f"--{name} must be a positive multiple of 8, not {value}")
