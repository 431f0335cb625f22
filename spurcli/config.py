"""Settings of every command: dataclasses with documented defaults, filled from a TOML file,
then ``--set key=value``, then command-line options (the command line wins).

    from spurcli.config import FinetuneConfig, load_config, to_dict
    cfg = load_config(FinetuneConfig, "exp.toml", section="finetune",
                      sets=["lr=1e-5"], overrides={"steps": 10})
    cfg.instance_dir            # a Path, resolved relative to exp.toml
    to_dict(cfg)                # JSON-ready (paths as strings), for spurcli-run.json

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
with ``metadata=MAYBE_PATH`` (a hub id *or* a folder, ``random`` *or* a file) are resolved only
when the value looks like a path (starts with ``.``, ``/`` or ``~``) or exists there. Unknown keys
are a `UsageError` with "did you mean"; a wrong type is one line naming the file and the key.

Another command's config is just another dataclass (``overrides`` keys are field names; values
of None mean "not given on the command line" and are skipped):

    @dataclass
    class SampleConfig:
        model: str = field(default="tiny", metadata=MAYBE_PATH)  # hub id, folder, run or tiny
        out: Path | None = None                                  # where images go
        prompt: list[str] = field(default_factory=list)          # one or more prompts
    cfg = load_config(SampleConfig, path, section="sample", overrides={"out": out})
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


@dataclass
class FinetuneConfig:
    """`spurcli finetune`: DreamBooth + prior preservation + SFSL (DESIGN.md §4)."""

    # --- what to learn -------------------------------------------------------------------------
    model: str = field(default=DEFAULT_MODEL, metadata=MAYBE_PATH)  # hub id, local folder, "tiny"
    revision: str | None = None  # hub model: branch, tag or commit (None: main); recorded as commit
    instance_dir: Path | None = None  # the reference images of the spurious feature (required)
    class_noun: str | None = None  # what the references show, e.g. "flower" (required)
    target: int | str | None = None  # the ImageNet class they fool classifiers into (required)
    output_dir: Path | None = None  # the run folder (required); must be new unless --resume
    identifier: str = "sks"  # DreamBooth's rare token: few meanings in the CLIP vocabulary
    # {identifier}, [V] and {noun} are filled in; these are the DreamBooth paper's prompts.
    instance_prompt: str = "a photo of {identifier} {noun}"
    class_prompt: str = "a photo of {noun}"
    # --- prior preservation --------------------------------------------------------------------
    class_dir: Path | None = None  # prior (class) images; default OUT/class-images; reused
    num_class_images: int = 100  # diffusers' default: enough variety for the prior term
    class_inference_steps: int = 50  # sampler steps per prior image (the pipeline's default)
    class_guidance: float = 7.5  # classifier-free guidance for prior images (SD's default)
    class_batch_size: int = 4  # prior images generated per pipeline call (diffusers' default)
    prior_weight: float = 1.0  # w_prior; DreamBooth's 1.0; 0 turns prior preservation off
    # --- data ----------------------------------------------------------------------------------
    resolution: int = 512  # training size in pixels: SD 1.x's native size
    center_crop: bool = False  # False: random crop of the resized image, as diffusers does
    batch_size: int = 1  # instance images per process per micro-step (+ as many class images)
    # --- optimisation --------------------------------------------------------------------------
    steps: int = 800  # optimizer steps; diffusers' DreamBooth recipe with text encoder: 800
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 2e-6  # diffusers' recipe when the text encoder is trained too (5e-6 without)
    text_encoder_lr: float | None = None  # None: same as lr
    lr_scheduler: str = "constant"  # any diffusers.optimization name: constant, cosine, linear, ...
    warmup_steps: int = 0  # lr warm-up steps (ignored by "constant")
    max_grad_norm: float = 1.0  # gradient clipping, as diffusers does
    weight_decay: float = 1e-2  # AdamW weight decay (diffusers' default)
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit (pip install 'spurcli[8bit]'; GPU only)
    seed: int = 0  # fixes data order, noise, timesteps, prior and validation images
    train_text_encoder: bool = True  # the paper trains text encoder and UNet together
    # --- spurious feature similarity loss (SFSL) -----------------------------------------------
    # The paper's weight is unpublished: 0.1 puts 1 - cos (~0.1-0.6) on the scale of the
    # epsilon MSE (~0.05-0.2) without letting it dominate; 0 gives plain DreamBooth.
    sfsl_weight: float = 0.1
    extractor: str = "robust-resnet50"  # the frozen feature extractor (a plugin name)
    extractor_weights: str | None = field(default=None, metadata=MAYBE_PATH)  # None, file, random
    sfsl_target: Literal["paired", "mean", "nearest"] = "paired"  # reference feature per sample
    sfsl_distance: Literal["cosine", "l2"] = "cosine"  # 1 - cos, or the mean squared difference
    sfsl_max_timestep: int | None = None  # apply SFSL only where t <= this; None: always
    # Decode x0_hat at this size (latent resized first): None decodes at full resolution, as
    # the method describes; 256 cuts the VAE-decoder part of SFSL (the bulk of its cost) by 4x.
    sfsl_decode_size: int | None = None
    # The decoder of x0_hat for SFSL: the model's own VAE (fidelity, the method), or taesd
    # (diffusers' AutoencoderTiny: a few % of the VAE decoder's cost; the gradient then flows
    # through another decoder). docs/finetune-scale.md compares them.
    sfsl_decoder: Literal["vae", "taesd"] = "vae"
    # taesd's weights: a hub id (madebyollin/taesd is SD 1.x's), a local folder, or "random"
    # (taesd's structure, width matched to the model's VAE: for tests and benchmarks)
    sfsl_taesd: str = field(default="madebyollin/taesd", metadata=MAYBE_PATH)
    # --- LoRA (peft): low-rank adapters instead of the full weights (docs/finetune-scale.md) --
    lora_rank: int = 0  # 0: train the full weights, as the paper does; R > 0: adapters of rank R
    lora_alpha: float | None = None  # the adapters' scale is alpha / rank; None: = rank
    lora_dropout: float = 0.0  # dropout on the adapters' input (diffusers' LoRA script: 0)
    # UNet modules that get adapters (peft target_modules); empty: its attention projections,
    # as diffusers' LoRA script. A trained text encoder gets them on q/k/v/out_proj.
    lora_targets: list[str] = field(default_factory=list)
    # --- speed and memory ----------------------------------------------------------------------
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # trainable weights stay fp32
    gradient_checkpointing: bool = False  # UNet, text encoder and (with SFSL) the VAE decoder
    attention_slicing: int | str = "off"  # auto, max, N or off (torch 2's SDPA needs none)
    # --- checkpoints, validation ---------------------------------------------------------------
    checkpoint_every: int = 200  # steps between checkpoints (0: only on interrupt)
    keep_checkpoints: int = 2  # newest checkpoints kept (0: keep all)
    resume: str | None = field(default=None, metadata=MAYBE_PATH)  # "latest" or a checkpoint
    validate_every: int = 200  # steps between validation images, and at the end (0: never)
    validation_prompt: list[str] = field(default_factory=list)  # default: the instance prompt
    num_validation_images: int = 4  # images per validation prompt
    validation_steps: int = 25  # sampler steps per validation image
    validation_guidance: float = 7.5  # classifier-free guidance for validation images
    # --- monitoring ----------------------------------------------------------------------------
    # accelerate's trackers: every loss term, lr, gradient norms, validation images
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    # Every N steps, log.jsonl gets the gradient norm each loss term (instance, prior, SFSL,
    # weighted as in the loss) puts on the trained weights: 3 extra backward passes on those
    # steps, on the first micro-batch; the update is unchanged. 0: off.
    log_grad_norms_every: int = 50

    def check(self) -> None:
        """Every option that can be checked without loading anything; one-line errors."""
        check_finite(self)
        for name in ("instance_dir", "class_noun", "target", "output_dir"):
            if getattr(self, name) in (None, ""):
                raise UsageError(
                    f"--{name.replace('_', '-')} is required (or `{name}` in the config)"
                )
        for name in [
            "steps",
            "batch_size",
            "grad_accum",
            "resolution",
            "validation_steps",
            "num_validation_images",
            "class_batch_size",
            "class_inference_steps",
        ]:
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in [
            "num_class_images",
            "checkpoint_every",
            "keep_checkpoints",
            "validate_every",
            "warmup_steps",
            "prior_weight",
            "max_grad_norm",
            "weight_decay",
            "sfsl_weight",
            "class_guidance",
            "validation_guidance",
            "lora_rank",
            "lora_dropout",
            "log_grad_norms_every",
        ]:
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative")
        if self.resolution % 8:
            raise UsageError(
                f"--resolution must be a multiple of 8 (the VAE's factor), not {self.resolution}"
            )
        if not self.lr > 0 or (self.text_encoder_lr is not None and not self.text_encoder_lr > 0):
            raise UsageError("--lr and --text-encoder-lr must be positive")
        if self.prior_weight and self.num_class_images < 1:
            raise UsageError(
                "prior preservation needs --num-class-images >= 1 (or --prior-weight 0)"
            )
        if self.sfsl_max_timestep is not None and self.sfsl_max_timestep < 0:
            raise UsageError("--sfsl-max-timestep must not be negative")
        if self.sfsl_decode_size is not None and (
            self.sfsl_decode_size < 8 or self.sfsl_decode_size % 8
        ):
            raise UsageError("--sfsl-decode-size must be a positive multiple of 8")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise UsageError("--lora-alpha must be positive")
        if self.lora_dropout >= 1:
            raise UsageError("--lora-dropout must be below 1")
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
            f"{where}: {_show(value)} is not one of {', '.join(map(str, choices))}{hint_text}"
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
