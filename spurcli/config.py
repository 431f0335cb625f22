"""Settings of every command: dataclasses whose fields are declared once, with `option`,
filled from a TOML file, then ``--set key=value``, then command-line options (the command line
wins).

    from spurcli.config import FinetuneConfig, load_config, to_dict
    cfg = load_config(FinetuneConfig, "exp.toml", section="finetune",
                      sets=["lr=1e-5"], overrides={"steps": 10})
    cfg.instance_dir            # a Path, resolved relative to exp.toml
    cfg.check()                 # bounds and cross-field rules; one-line UsageErrors
    to_dict(cfg)                # JSON-ready (paths as strings), for spurcli-run.json

A field is declared as ``steps: int = option(800, "Optimizer steps.", min=1)``: the default,
the help and the bounds. From it come the command-line option and its ``--help`` default
(`spurcli.cli`), the TOML key (the field name), the bounds check (`check_fields`, called by
``check()``) and the tables of docs/settings.md (``python -m spurcli.config --write-docs
docs/settings.md`` regenerates it; a test fails while it is out of date).

The file may hold the options at top level or in a ``[finetune]`` table (the ``section``), so one
experiment file serves ``spurcli finetune`` and ``spurcli run``. With the table present, the
table's keys must all be known and top-level keys are taken only where the config has a field of
that name (others belong to other commands); without it, every top-level key must be known.
Tables other than ``section`` are left to other commands.

Names are the CLI option names with ``_`` for ``-`` (``-`` is accepted too). Values are checked
against the field's type hint: ``str``, ``int``, ``float`` (an int is fine), ``bool``, ``Path``,
``list[str]`` (a single string becomes a one-element list), ``Literal[...]`` (choices), and unions
of those (``int | str``, ``X | None``; TOML has no null, so ``None`` only comes from defaults
and overrides). ``Path`` fields are resolved relative to the file they come from; ``str`` fields
declared with ``maybe_path=True`` (a hub id *or* a folder, ``random`` *or* a file) are resolved
only when the value looks like a path (starts with ``.``, ``/`` or ``~``) or exists there.
Unknown keys are a `UsageError` with "did you mean"; a wrong type is one line naming the file
and the key. ``overrides`` keys are field names; values of None mean "not given" and are skipped.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, TypeVar

from spurcli.diffusion import DEFAULT_MODEL
from spurcli.errors import SpurcliError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

MAYBE_PATH = {"path": "maybe"}  # field metadata: a name or a path; resolve it only if it is a path


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    above: float | None = None,
    below: float | None = None,
    required: bool = False,
    maybe_path: bool = False,
    flags: tuple[str, ...] = (),
    comma: bool = False,
) -> Any:
    """A config field declared once: its default, its help and its bounds. The command-line
    option (`spurcli.cli` builds it from the field), the ``--help`` default, the TOML key (the
    field name), the bounds check (`check_fields`) and docs/settings.md all derive from it.

    ``min``: the smallest value allowed; ``above``/``below``: exclusive bounds; ``None`` values
    (the "not set" of an optional field) are never out of bounds. ``required``: the check fails
    while the value is None or empty (a dataclass needs a default for every field after the
    first, and a config is built before all of its values are known). ``maybe_path``: a hub
    id *or* a folder, ``random`` *or* a file (see `MAYBE_PATH`). ``flags``: extra option names
    (``-o``) or, for a bool, the ``--on/--off`` pair when it is not ``--name/--no-name``.
    ``comma``: a list given on the command line as one comma-separated value (``-c resnet,vit``;
    ``''``: none) rather than by repeating the option.
    """
    metadata: dict[str, Any] = {
        "help": help,
        "min": min,
        "above": above,
        "below": below,
        "required": required,
        "flags": flags,
        "comma": comma,
    }
    if maybe_path:
        metadata.update(MAYBE_PATH)
    if isinstance(default, list):  # a mutable default: each config gets its own copy
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def option_name(fld: dataclasses.Field[Any]) -> str:
    """The field's command-line name, as errors quote it: ``--output-dir`` for output_dir,
    ``--prompt`` for a field ``prompts`` declared with ``flags=("--prompt", "-p")``."""
    for flag in fld.metadata.get("flags", ()):
        if flag.startswith("--"):
            return flag.split("/")[0]
    return "--" + fld.name.replace("_", "-")


def option_flags(fld: dataclasses.Field[Any], hint: Any) -> list[str]:
    """The field's command-line flags: ``--name`` (a bool: ``--name/--no-name``), unless its
    declaration names the pair, then the declared extras (``-o``)."""
    flags = list(fld.metadata.get("flags", ()))
    if not any(f.startswith("--") for f in flags):
        flag = option_name(fld)
        flags.insert(0, f"{flag}/--no-{flag[2:]}" if hint is bool else flag)
    return flags


def check_fields(config: Any) -> None:
    """What `option` declared: finite numbers, required values, bounds; one-line errors.
    Runs first in each command's ``check``."""
    check_finite(config)
    fields = dataclasses.fields(config)
    for fld in fields:
        if fld.metadata.get("required") and getattr(config, fld.name) in (None, "", []):
            raise UsageError(f"{option_name(fld)} is required (or `{fld.name}` in the config)")
    for fld in fields:
        value = getattr(config, fld.name)
        if value is None or isinstance(value, (bool, str, list)):
            continue  # bounds are about numbers ("off" of an int | str field is not one)
        low, above, below = (fld.metadata.get(k) for k in ("min", "above", "below"))
        if low is not None and value < low:
            bound = "not be negative" if low == 0 else f"be at least {low}"
            raise UsageError(f"{option_name(fld)} must {bound}, not {value}")
        if above is not None and not value > above:
            bound = "be positive" if above == 0 else f"be above {above}"
            raise UsageError(f"{option_name(fld)} must {bound}, not {value}")
        if below is not None and not value < below:
            raise UsageError(f"{option_name(fld)} must be below {below}, not {value}")


@dataclass
class FinetuneConfig:
    """`spurcli finetune`: DreamBooth fine-tuning of the text encoder and UNet together, with
    prior preservation and the spurious feature similarity loss (SFSL) on a frozen robust
    classifier's features (docs/sfsl.md)."""

    # --- what to learn -------------------------------------------------------------------------
    model: str = option(
        DEFAULT_MODEL, "Hub id, diffusers folder, 'tiny' or 'mini'.", maybe_path=True
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
    num_class_images: int = option(100, "Prior images wanted.", min=0)
    class_inference_steps: int = option(50, "Sampler steps per prior image.", min=1)
    class_guidance: float = option(7.5, "Classifier-free guidance for prior images.", min=0)
    class_batch_size: int = option(4, "Prior images generated per pipeline call.", min=1)
    prior_weight: float = option(
        1.0, "Weight of the prior-preservation loss (DreamBooth's 1.0); 0: off.", min=0
    )
    # --- data ----------------------------------------------------------------------------------
    resolution: int = option(512, "Training size in pixels (a multiple of 8).", min=1)
    # False: a random crop of the resized image, as diffusers does.
    center_crop: bool = option(
        False,
        "Centre or random crop of the resized references.",
        flags=("--center-crop/--random-crop",),
    )
    batch_size: int = option(
        1, "Instance images per process and micro-step (plus as many prior images).", min=1
    )
    # --- optimisation --------------------------------------------------------------------------
    # diffusers' DreamBooth recipe with the text encoder trained: 800 steps at 2e-6.
    steps: int = option(800, "Optimizer steps.", min=1)
    grad_accum: int = option(1, "Micro-steps per optimizer step.", min=1)
    lr: float = option(2e-6, "Learning rate.", above=0)
    text_encoder_lr: float | None = option(
        None, "Learning rate of the text encoder (none: --lr).", above=0
    )
    lr_scheduler: str = option(
        "constant", "Any diffusers.optimization schedule: constant, linear, cosine, ..."
    )
    warmup_steps: int = option(0, "Learning-rate warm-up steps (ignored by constant).", min=0)
    max_grad_norm: float = option(1.0, "Gradient clipping; 0: off.", min=0)
    weight_decay: float = option(1e-2, "AdamW weight decay.", min=0)
    use_8bit_adam: bool = option(
        False, "bitsandbytes' AdamW8bit (pip install 'spurcli[8bit]'; CUDA GPUs)."
    )
    seed: int = option(0, "Fixes data order, noise, timesteps, prior and validation images.")
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
    sfsl_target: Literal["paired", "mean", "nearest"] = option(
        "paired", "Reference feature per sample: paired, mean or nearest."
    )
    sfsl_distance: Literal["cosine", "l2"] = option(
        "cosine", "1 - cos (cosine) or the mean squared difference (l2)."
    )
    sfsl_max_timestep: int | None = option(
        None, "Apply SFSL only where t <= this (none: always).", min=0
    )
    # None decodes at full resolution, as the method describes; 256 cuts the VAE-decoder part
    # of SFSL (the bulk of its cost) by 4x. The latent is resized first.
    sfsl_decode_size: int | None = option(
        None, "Decode x0_hat at this size, a multiple of 8 (none: full size)."
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
        0, "Train LoRA adapters of this rank; 0: the full weights, as the paper does.", min=0
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
    checkpoint_every: int = option(200, "Steps between checkpoints; 0: only on interrupt.", min=0)
    keep_checkpoints: int = option(2, "Newest checkpoints kept; 0: all.", min=0)
    resume: str | None = option(None, "'latest' or a checkpoint folder.", maybe_path=True)
    validate_every: int = option(
        200, "Steps between validation images, and at the end; 0: never.", min=0
    )
    validation_prompt: list[str] = option(
        [], "Validation prompt, repeatable (none: the instance prompt)."
    )
    num_validation_images: int = option(4, "Images per validation prompt.", min=1)
    validation_steps: int = option(25, "Sampler steps per validation image.", min=1)
    validation_guidance: float = option(
        7.5, "Classifier-free guidance for validation images.", min=0
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
        if self.lora_rank and find_spec("peft") is None:
            raise SpurcliError("--lora-rank needs peft: pip install peft")
        if self.report_to == "tensorboard" and find_spec("tensorboard") is None:
            raise SpurcliError(
                "--report-to tensorboard needs tensorboard: pip install 'spurcli[tensorboard]'"
            )
        if self.report_to == "wandb" and find_spec("wandb") is None:
            raise SpurcliError("--report-to wandb needs wandb: pip install wandb")
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


DTYPES = ("auto", "float32", "float16", "bfloat16")


# --- settings several commands share: declared once here (each call makes a new field) ------


def _target_field(note: str = "") -> Any:
    return option(None, f"ImageNet class: index or name{note}.", flags=("--target", "-t"))


def _classifiers_field(default: list[str], help: str) -> Any:
    return option(default, help, flags=("--classifiers", "-c"), comma=True)


def _weights_field() -> Any:
    return option([], "Classifier NAME=PATH or NAME=random; repeatable.")


def _device_field() -> Any:
    return option(None, "cpu, cuda, cuda:1 (none: the process's GPU, else CPU).")


def _batch_size_field() -> Any:
    # Lower it if a big classifier runs out of memory; it changes no number.
    return option(32, "Images per forward pass.", min=1, flags=("--batch-size", "-b"))


# How classifiers get their pixels: each its own eval transform, or the released Spurious
# ImageNet code's (docs/spurious-imagenet.md).
Preprocessing = Literal["model", "spurious-imagenet"]


def _preprocess_field() -> Any:
    return option(
        "model",
        "How classifiers get their pixels: 'model' (each its own eval transform) or "
        "'spurious-imagenet' (the released Spurious ImageNet code's resize, then the model's "
        "normalisation).",
    )


def _strict_field(help: str = "Fail on an unreadable image instead of skipping it.") -> Any:
    return option(False, help)


@dataclass
class SampleConfig:
    """`spurcli sample`: N images per prompt from a (fine-tuned) Stable Diffusion, resumable."""

    model: str = option(
        "tiny",
        "A finetune run folder, a diffusers folder, a hub id, 'tiny' or 'mini'.",
        maybe_path=True,
    )
    revision: str | None = option(None, "Hub model's branch, tag or commit (none: main).")
    prompts: list[str] = option(
        [], "Prompt, repeatable; [V] becomes the run's identifier.", flags=("--prompt", "-p")
    )
    n: int = option(4, "Images per prompt.", min=1, flags=("-n", "--n"))
    out: Path = option(Path("samples"), "Output folder.", flags=("--out", "-o"))
    # Derived from the seed and i alone, not the prompt: prompts sharing an index share the
    # noise, which pairs a tuned model's images with the baseline's.
    seed: int = option(0, "Base seed; image i of every prompt gets a seed derived from it.")
    steps: int = option(50, "Denoising steps (diffusers' default).", min=1)
    guidance: float = option(7.5, "Classifier-free guidance scale; <= 1: off.", min=0)
    negative_prompt: str | None = option(
        None, "What guidance steers away from (none: the empty prompt)."
    )
    scheduler: str | None = option(
        None, "ddim, pndm, dpm, euler, euler-a, ddpm (none: the model's own)."
    )
    batch_size: int = option(
        4, "Images per UNet call, per process.", min=1, flags=("--batch-size", "-b")
    )
    height: int | None = option(None, "Pixels, a multiple of 8 (none: the model's native size).")
    width: int | None = option(None, "Pixels, a multiple of 8 (none: the model's native size).")
    recontext: bool = option(
        False, "Also each prompt on the beach, on Mount Fuji, in a garden, in a market."
    )
    identifier: str | None = option(None, "The token [V] stands for (none: the run's own).")
    attention_slicing: int | str | None = option(
        None, "auto, max, N or off: less memory, a bit slower (none: the model's default)."
    )
    device: str | None = _device_field()
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = option(
        "auto", "auto (fp16 on CUDA only), float32, float16 or bfloat16."
    )

    def check(self) -> None:
        """Everything that can be checked before loading a model; one-line errors."""
        from spurcli.diffusion import SCHEDULERS

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


@dataclass
class ScoreConfig:
    """`spurcli score`: how spurious a set of images is for a class, per classifier and across
    them. The image-feeding settings (batch size to image size) serve every command that scores:
    none of them changes the numbers but ``image_size``."""

    target: int | str | None = _target_field(" (none with --layout spurious-imagenet)")
    classifiers: list[str] = _classifiers_field(
        [], "Classifier names (spurcli plugins), comma-separated."
    )
    real: Path | None = option(
        None, "Real images of the class (with --layout spurious-imagenet: the ImageNet val root)."
    )
    weights: list[str] = _weights_field()
    layout: str = option("folder", "'folder' or 'spurious-imagenet'.")
    preprocess: Preprocessing = _preprocess_field()
    batch_size: int = _batch_size_field()
    device: str | None = _device_field()
    strict: bool = _strict_field()
    num_workers: int | None = option(
        None, "Decoding processes (none: by device).", min=0, flags=("--workers",)
    )
    image_size: int = option(
        384, "Side of the central square each image is resized to for the classifiers.", min=8
    )
    bootstrap: int = option(1000, "Bootstrap resamples of the intervals; 0: off.", min=0)
    bootstrap_seed: int = option(
        0, "Seed of the bootstrap resamples.", flags=("--bootstrap-seed", "--seed")
    )

    @classmethod
    def like(cls, other: Any, **changes: Any) -> ScoreConfig:
        """The score settings of another command's config (compare, curate: the fields of the
        same name, such as batch_size, device, strict), with ``changes`` on top: the image pass
        those commands share with score is then fed exactly as they were asked to."""
        mine = {f.name for f in dataclasses.fields(cls)}
        shared = {
            f.name: getattr(other, f.name) for f in dataclasses.fields(other) if f.name in mine
        }
        return cls(**{**shared, **changes})

    def check(self) -> None:
        """The settings' bounds (target and classifiers are checked where they are resolved)."""
        check_finite(self)
        check_bootstrap(self.bootstrap)  # before check_fields: its message says what 0 means
        check_fields(self)


@dataclass
class CompareConfig:
    """`spurcli compare`: two image sets scored side by side, their feature-space similarity and
    the HTML report; also the ``[compare]`` table of a `spurcli run` config."""

    target: int | str | None = _target_field()
    classifiers: list[str] = _classifiers_field([], "Classifier names, comma-separated.")
    weights: list[str] = _weights_field()
    extractors: list[str] = option(
        ["robust-resnet50"],
        "Feature extractors, comma-separated ('' for none).",
        flags=("--extractors", "-e"),
        comma=True,
    )
    extractor_weights: list[str] = option([], "Extractor NAME=PATH or NAME=random; repeatable.")
    real: Path | None = option(
        None, "Real images of the class: ROC-AUC and AP in both score tables."
    )
    preprocess: Preprocessing = _preprocess_field()
    batch_size: int = _batch_size_field()
    device: str | None = _device_field()
    strict: bool = _strict_field()
    # All images are scored; this only bounds the report's grids.
    report_images: int = option(48, "Images per set shown in the report.", min=0)
    bootstrap: int = option(1000, "Bootstrap resamples of the intervals; 0: off.", min=0)
    bootstrap_seed: int = option(
        0,
        "Seed of the bootstrap resamples (recorded in the JSON).",
        flags=("--bootstrap-seed", "--seed"),
    )
    # auto: pairs when both sets name their images alike (the run's sets share seeds).
    paired: Literal["auto", "yes", "no"] = option(
        "auto", "auto, yes or no: are image i of A and of B a pair?"
    )

    def check(self) -> None:
        """The settings that can be checked before loading anything."""
        check_finite(self)
        check_bootstrap(self.bootstrap)  # before check_fields: its message says what 0 means
        check_fields(self)


@dataclass
class CurateConfig:
    """`spurcli curate`: generated images filtered into a publishable test set with a datasheet
    (docs/curate.md); also the ``[curate]`` table of a `spurcli run` config."""

    target: int | str | None = _target_field()
    classifiers: list[str] = _classifiers_field(
        ["resnet", "vit", "clip"], "Selection classifiers, comma-separated."
    )
    weights: list[str] = _weights_field()
    min_fooled: int = option(1, "Keep if at least K selection classifiers say the target.")
    detectors: list[str] = option(
        ["owlv2"],
        "Detectors of the class's object, comma-separated, or 'none'.",
        flags=("--detectors", "-d"),
        comma=True,
    )
    detector_weights: list[str] = option([], "Detector NAME=PATH or NAME=random; repeatable.")
    max_presence: float = option(0.5, "Reject above this presence score (in [0, 1]).")
    object_prompts: list[str] = option(
        [], "Another text naming the object; repeatable.", flags=("--object-prompt",)
    )
    feature: str | None = option(None, "The spurious feature's text (none: Spurious ImageNet's).")
    references: Path | None = option(None, "Reject near-copies of these images.")
    extractor: str = option("robust-resnet50", "Feature space of the near-copy check.")
    extractor_weights: str | None = option(None, "File, or 'random'.", maybe_path=True)
    max_similarity: float = option(
        0.95, "Reject at or above this cosine to the nearest reference (in [-1, 1])."
    )
    evaluate_with: list[str] = option(
        [], "Held-out classifiers, comma-separated: the result.", comma=True
    )
    limit: int | None = option(None, "Keep at most N images (file order).")
    # On the command line --link/--copy.
    mode: Literal["copy", "link"] = option("copy", "copy the kept files, or symlink them.")
    overwrite: bool = option(False, "Replace an existing output folder.")
    strict: bool = _strict_field("Unreadable image or nothing kept: an error.")
    preprocess: Preprocessing = _preprocess_field()
    batch_size: int = _batch_size_field()
    device: str | None = _device_field()
    # Kept images: 4x as many.
    report_images: int = option(
        12, "Rejected images shown per reason in the report of spurcli run.", min=0
    )


@dataclass
class ExperimentConfig:
    """The top level of a `spurcli run` config: the experiment's own keys, and keys shared with
    the tables where the names match (model, target, seed, ...: a table may override them)."""

    out: Path | None = option(None, "The experiment folder.", required=True)
    model: str = option(DEFAULT_MODEL, "The base model of every arm.", maybe_path=True)
    revision: str | None = option(None, "The base hub model's branch, tag or commit (None: main).")
    target: int | str | None = option(
        None, "The ImageNet class the feature fools classifiers into.", required=True
    )
    class_noun: str | None = option(None, "What the references show, e.g. flower.", required=True)
    instance_dir: Path | None = option(
        None, "The reference images of the spurious feature.", required=True
    )
    identifier: str = option("sks", "The rare token [V] stands for.")
    seed: int = option(0, "Shared by finetune and sample unless their tables say otherwise.")
    title: str | None = option(None, "Report title; none: '<target>: <class_noun>'.")
    # Shown at the top of the report, before the numbers, so a reader of the report alone knows.
    notes: list[str] = option(
        [], "Lines heading the report: what the experiment can and cannot show."
    )
    recontext: bool = option(True, "Also sample every prompt in the recontextualisation settings.")
    baseline: bool = option(True, "Also sample the untuned model (prompts without [V]).")
    # DreamBooth recipes use 3-5 images; the rest judge the generated images.
    train_references: int = option(
        5, "Train on this many references (drawn by the seed), hold out the rest; 0: all.", min=0
    )
    # Without that arm nothing says what SFSL adds over DreamBooth.
    dreambooth_arm: bool = option(
        True, "Also train DreamBooth alone (sfsl_weight 0, the same settings and seeds)."
    )
    exclude_circular: bool = option(
        True,
        "Keep a victim that is also the SFSL extractor (trained against) out of the consensus.",
    )

    def check(self, path: str | os.PathLike[str] = "run config") -> None:
        """One line naming the file and the key: a run config has no command-line options."""
        check_finite(self)
        for fld in dataclasses.fields(self):
            value = getattr(self, fld.name)
            if fld.metadata.get("required") and value in (None, ""):
                raise UsageError(f"{path}: `{fld.name}` is required at the top of a run config")
        if self.train_references < 0:
            raise UsageError(f"{path}: train_references must be 0 (all) or more")


def check_bootstrap(resamples: int) -> None:
    if resamples < 0:
        raise UsageError(f"--bootstrap must be 0 (no bootstrap intervals) or more, got {resamples}")


def check_finite(config: Any) -> None:
    """Every number of a config is finite: ``inf`` and ``nan`` (TOML and --set accept both, and
    Typer parses ``--lr inf``) pass every sign check (``nan < 0`` is false), then poison the
    weights or the images. Runs first in each command's ``check``."""
    for fld in dataclasses.fields(config):
        value = getattr(config, fld.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise UsageError(
                    f"--{fld.name.replace('_', '-')} must be a finite number, not {item}"
                )


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    *,
    section: str | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    tables: Sequence[str] | None = None,
) -> T:
    """``cls`` filled from defaults < the TOML file < ``sets`` ("key=value") < ``overrides``.

    ``tables``: the tables the file may have (a misspelled ``[finetun]`` is an error, not a
    table silently left to another command); None: any.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path)
        for name in [k for k, v in data.items() if isinstance(v, dict)]:
            if tables is not None and name not in tables:
                close = difflib.get_close_matches(name, list(tables), n=1)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                raise UsageError(
                    f"{path}: unknown table [{name}]{hint} (tables: "
                    + ", ".join(f"[{t}]" for t in tables)
                    + ")"
                )
        where = f"{path} [{section}]" if section and isinstance(data.get(section), dict) else path
        for key, value in _select(data, section, fields, path).items():
            name = _field_name(key, fields, where)
            values[name] = _coerce(value, hints[name], fields[name], f"{where}: {key}", path.parent)
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set needs key=value, not '{item}'")
        name = _field_name(key.strip(), fields, "--set")
        values[name] = _parse_set(text.strip(), hints[name], fields[name], f"--set {key.strip()}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = _field_name(key, fields, "options")
        values[name] = _coerce(value, hints[name], fields[name], f"--{name.replace('_', '-')}")
    return cls(**values)


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file, or a one-line error naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a folder") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths as strings)."""
    return {
        k: (os.fspath(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(config).items()
    }


def _select(
    data: dict[str, Any], section: str | None, fields: dict[str, Any], path: Path
) -> dict[str, Any]:
    table = data.get(section) if section else None
    if table is None:
        return {k: v for k, v in data.items() if not isinstance(v, dict)}
    if not isinstance(table, dict):
        raise UsageError(f"{path}: '{section}' must be a table ([{section}])")
    shared = {
        k: v for k, v in data.items() if not isinstance(v, dict) and k.replace("-", "_") in fields
    }
    return {**shared, **table}  # the section's own values win over shared top-level ones


def _field_name(key: str, fields: dict[str, Any], where: Any) -> str:
    name = key.replace("-", "_")
    if name in fields:
        return name
    close = difflib.get_close_matches(name, list(fields), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"{where}: unknown option '{key}'{hint}")


def _parse_set(text: str, hint: Any, fld: Any, where: str) -> Any:
    """A ``--set`` value: TOML syntax (1e-5, true, ["a", "b"]) or, for text fields, bare text."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # bare text such as --set model=runs/a
    try:
        return _coerce(value, hint, fld, where, Path.cwd())
    except UsageError:
        if isinstance(value, str):
            raise
        return _coerce(text, hint, fld, where, Path.cwd())  # e.g. --set identifier=123


def _coerce(value: Any, hint: Any, fld: Any, where: str, base: Path | None = None) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, fld, where, base)
            except UsageError:
                continue
        raise UsageError(f"{where}: expected {_describe(hint)}, got {_show(value)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint_text = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(
            f"{where} must be one of {', '.join(map(str, choices))}, not {value!r}{hint_text}"
        )
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"{where}: expected {_describe(hint)}, got {_show(value)}")
        return [_coerce(v, item, fld, where, base) for v in items]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, (str, os.PathLike)),
    }.get(hint)
    if ok is None:
        raise TypeError(f"config field type {hint!r} is not supported")  # a bug in a config class
    if not ok:
        raise UsageError(f"{where}: expected {_describe(hint)}, got {_show(value)}")
    if hint is float:
        return float(value)
    if hint is Path:
        return _resolve(Path(value), base)
    if hint is str and base is not None and fld.metadata.get("path") == "maybe":
        return _maybe_resolve(value, base)
    return value


def _resolve(path: Path, base: Path | None) -> Path:
    path = path.expanduser()
    return path if base is None or path.is_absolute() else base / path


def _maybe_resolve(text: str, base: Path) -> str:
    if text.startswith((".", "/", "~")) or (base / text).exists():
        return os.fspath(_resolve(Path(text), base))
    return text


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return " or ".join(map(str, typing.get_args(hint)))
    if origin is list:
        return "a list of " + _describe(typing.get_args(hint)[0]) + "s"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "text", Path: "a path"}
    return names.get(hint, str(hint))


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# ------------------------------------------------------------------------- the settings reference

# The config classes docs/settings.md documents, in its order: (class, TOML table, command).
DOCUMENTED = (
    ("FinetuneConfig", "finetune", "spurcli finetune"),
    ("SampleConfig", "sample", "spurcli sample"),
    ("ScoreConfig", "score", "spurcli score"),
    ("CompareConfig", "compare", "spurcli compare"),
    ("CurateConfig", "curate", "spurcli curate"),
    ("ExperimentConfig", "", "spurcli run"),
)


def settings_markdown() -> str:
    """docs/settings.md: one table per config class, made from the fields' declarations."""
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated from the config classes in spurcli/config.py; do not edit. Regenerate",
        "     with: python -m spurcli.config --write-docs docs/settings.md -->",
        "",
        "Every setting is a key of the command's TOML table (its name, `-` or `_`), a",
        "`--set key=value`, and a command-line option; the command line wins over `--set`,",
        "which wins over the file.",
    ]
    module = sys.modules[__name__]
    for class_name, table, command in DOCUMENTED:
        cls = getattr(module, class_name)
        hints = typing.get_type_hints(cls)
        summary = " ".join((cls.__doc__ or "").split())
        heading = f"`[{table}]`" if table else "Top level of a run config"
        lines += ["", f"## {heading}: {command}", "", summary, ""]
        lines += ["| key | option | type | default | meaning |", "| --- | --- | --- | --- | --- |"]
        for fld in dataclasses.fields(cls):
            meaning = fld.metadata.get("help", "") + _bounds_text(fld)
            flags = ", ".join(f"`{f}`" for f in option_flags(fld, hints[fld.name]))
            if not table:  # `spurcli run` takes the top-level keys from the file or --set only
                flags = f"`--set {fld.name}=...`"
            cells = (
                f"`{fld.name}`",
                flags,
                _describe(hints[fld.name]),
                _default_text(fld),
                meaning,
            )
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _default_text(fld: dataclasses.Field[Any]) -> str:
    if fld.metadata.get("required"):
        return "required"
    factory = fld.default_factory
    value = fld.default if factory is dataclasses.MISSING else factory()
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as TOML spells it
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"  # TOML's list syntax
    return f"`{value}`"


def _bounds_text(fld: dataclasses.Field[Any]) -> str:
    parts = []
    if fld.metadata.get("min") is not None:
        parts.append(f">= {fld.metadata['min']}")
    if fld.metadata.get("above") is not None:
        parts.append(f"> {fld.metadata['above']}")
    if fld.metadata.get("below") is not None:
        parts.append(f"< {fld.metadata['below']}")
    return f" ({', '.join(parts)})" if parts else ""


def settings_docs_main(argv: Sequence[str] | None = None) -> None:
    """``python -m spurcli.config --write-docs docs/settings.md`` (without it: to stdout)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m spurcli.config", description=settings_docs_main.__doc__
    )
    parser.add_argument("--write-docs", metavar="FILE", help="write the settings reference here")
    args = parser.parse_args(argv)
    if args.write_docs:
        Path(args.write_docs).write_text(settings_markdown(), encoding="utf-8")
    else:
        sys.stdout.write(settings_markdown())


if __name__ == "__main__":
    settings_docs_main()
