"""Checkpoints of a `spurcli finetune` run: save, prune, find and resume; Ctrl-C and SIGTERM.

    from spurcli.generate.checkpoints import load_checkpoint, resume_point, save_checkpoint
    start = resume_point(cfg, out)             # None (a new run) or the checkpoint to resume
    step = load_checkpoint(training, start)    # weights, optimizer, lr schedule, scaler, RNG
    with StopFlag().installed() as stop:       # SIGINT/SIGTERM only set stop.requested ...
        save_checkpoint(training, step, losses)  # ... and the loop saves OUT/checkpoints/step-N

``training`` is a `Checkpointable` (in finetune: the `spurcli.generate.finetune.Training` of the
run).

A checkpoint folder (written into a temporary folder and renamed: never half a checkpoint):

    unet.safetensors, text_encoder.safetensors (when trained)   the trainable weights, fp32
                                                               (LoRA: the adapters alone)
    optimizer.pt, lr_scheduler.pt, scaler.pt (fp16 only)       torch.load(weights_only=True)
    rng-R.pt                                                   process R's global RNG states
    state.json                                                 step, losses, config, world size

Together with `spurcli.generate.training_data`'s per-sample generators (seeded by sample number,
not by global
state), this is everything a step depends on: a resumed run ends bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spurcli import console
from spurcli.errors import Signalled, SpurcliError, UsageError
from spurcli.fileio import atomic_dir, write_json, write_text
from spurcli.finite import all_finite
from spurcli.generate.config import SFSL_ONLY, FinetuneConfig
from spurcli.generate.lora import adapter_state, load_adapter_state
from spurcli.records import FINETUNE_CARD
from spurcli.settings import to_dict
from spurcli.weights import _load_failure

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
CHECKPOINTS = "checkpoints"
# Changing these between a checkpoint and its resume does not change the weights.
RESUME_FREE = {
    "steps",
    "resume",
    "checkpoint_every",
    "keep_checkpoints",
    "validate_every",
    "validation_prompt",
    "num_validation_images",
    "validation_steps",
    "validation_guidance",
    "output_dir",
    "class_batch_size",
    "report_to",
    "log_grad_norms_every",
}


def changed_options(
    recorded: dict[str, Any], cfg: FinetuneConfig, free: frozenset[str] = frozenset()
) -> list[str]:
    """Options of ``cfg`` that differ from a run's ``recorded`` config and change its weights:
    all but RESUME_FREE and ``free``, and, when neither trained with SFSL, SFSL's own settings
    (SFSL_ONLY: with weight 0 nothing reads them). An option missing from the record counts as
    unchanged (a record written before it existed)."""
    free = RESUME_FREE | free
    if cfg.sfsl_weight == 0 and not recorded.get("sfsl_weight"):
        free |= SFSL_ONLY
    return sorted(k for k, v in to_dict(cfg).items() if k not in free and recorded.get(k, v) != v)


class Interrupted(SpurcliError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; exit like a shell does on SIGINT."""

    exit_code = 130


@dataclass
class Checkpointable:
    """What a checkpoint saves and restores of a fine-tuning run in progress, and where."""

    cfg: FinetuneConfig
    out: Path
    accelerator: Any
    unet: Any  # as prepared by accelerate: DDP-wrapped when distributed
    text_encoder: Any  # prepared too when trained
    optimizer: Any
    lr_scheduler: Any


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step-{step}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = re.fullmatch(r"step-(\d+)", path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def finished_run(out: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((out / FINETUNE_CARD).read_text(encoding="utf-8"))
        if info.get("status") == "finished":
            return info
    return None


def is_run(out: Path) -> bool:
    """``out`` holds (part of) a finetune run."""
    return any((out / name).exists() for name in (FINETUNE_CARD, LOG_FILE, CHECKPOINTS))


def resume_point(cfg: FinetuneConfig, out: Path) -> Path | None:
    """The checkpoint to resume from; refuses to write into another run without --resume."""
    if cfg.resume is None:
        if is_run(out):
            raise UsageError(
                f"{out} already holds a spurcli finetune run; continue it with --resume latest "
                "or choose another --output-dir"
            )
        return None
    if cfg.resume == "latest":
        path = latest_checkpoint(out)
        if path is None:
            if (out / FINETUNE_CARD).is_file():  # a run kept without checkpoints
                _check_format(cfg, out / FINETUNE_CARD)
            log.info("no checkpoint in %s: starting from step 0", out)
            return None
    else:
        path = Path(cfg.resume)
        if not (path / "state.json").is_file():
            raise UsageError(f"--resume: {path} is not a spurcli checkpoint (no state.json)")
    _check_format(cfg, path / "state.json")
    _check_schedule(cfg, path)
    return path


# What the saved weights are: another value here means no checkpoint of the run can be loaded,
# and a new run would overwrite its checkpoints and leave the other format's result beside.
FORMAT = ("model", "lora_rank", "lora_targets", "train_text_encoder")


def _check_format(cfg: FinetuneConfig, record: Path) -> None:
    """Refuse, before anything is loaded or written, a resume whose options make other weights
    than the run in ``record`` (a checkpoint's state.json or the run card) saved."""
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # read and reported by the checkpoint loader
    if not isinstance(saved, dict):
        return
    own = to_dict(cfg)
    changed = [k for k in FORMAT if k in saved and saved[k] != own.get(k)]
    if changed:
        what = ", ".join(
            f"--{k.replace('_', '-')} {saved[k]!r} there, {own.get(k)!r} now" for k in changed
        )
        raise UsageError(
            f"--resume: {record.parent} was saved with other weights ({what}); resume with its "
            "options, or fine-tune into a new --output-dir (nothing was changed)"
        )


# Schedules whose learning rate at a step does not depend on the total number of steps.
STEP_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def _check_schedule(cfg: FinetuneConfig, path: Path) -> None:
    """Refuse a resume whose --steps would bend a step-dependent lr schedule mid-run.

    A cosine or linear schedule is a function of the total step count, fixed when the run
    started: resuming a 2-step cosine run with --steps 4 would run step 3 at the end of the old
    curve (lr 0), neither the old run nor a new 4-step one.
    """
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads((path / "state.json").read_text(encoding="utf-8"))["config"]
        before = saved.get("steps", cfg.steps)
        if cfg.lr_scheduler not in STEP_FREE_SCHEDULES and before != cfg.steps:
            raise UsageError(
                f"--steps {cfg.steps}: {path} was made by a {before}-step run, and the "
                f"'{cfg.lr_scheduler}' lr schedule depends on the total step count; resume with "
                f"--steps {before}, or start a new run (only constant schedules can be extended)"
            )


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(training: Checkpointable, step: int, losses: dict[str, float]) -> None:
    """checkpoints/step-N, written into a temporary folder and renamed (never half a checkpoint)."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    cfg, out, accelerator = training.cfg, training.out, training.accelerator
    rng_states = gather_object([_rng_state()])  # every process's RNG, collected on all
    if accelerator.is_main_process:
        target = checkpoint_dir(out, step)
        models = {"unet": _state_dict(training, training.unet)}
        if cfg.train_text_encoder:
            models["text_encoder"] = _state_dict(training, training.text_encoder)
        for name, weights in models.items():  # never a checkpoint to resume into NaN
            if not all_finite(weights.values()):
                raise SpurcliError(
                    f"not saving {target}: the {name} weights are not finite; last good "
                    f"checkpoint: {last_good_checkpoint(out) or 'none'}"
                )
        with _saving(target, out), atomic_dir(target) as tmp:
            for name, weights in models.items():
                save_file(weights, tmp / f"{name}.safetensors")
            torch.save(training.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(training.lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            for rank, state in enumerate(rng_states):
                torch.save(state, tmp / f"rng-{rank}.pt")
            world = accelerator.num_processes
            state = {"step": step, "losses": losses, "config": to_dict(cfg), "world_size": world}
            write_json(tmp / "state.json", state)
        if cfg.keep_checkpoints:
            for _, old in list_checkpoints(out)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved checkpoint %s", target)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _saving(target: Path, out: Path) -> Any:
    """A checkpoint that cannot be written (a full disk: torch's RuntimeError, safetensors' own
    error, an OSError) is one line with the path and what to do; the temporary folder is gone
    and the previous checkpoints stand."""
    try:
        yield
    except SpurcliError:
        raise
    except Exception as exc:  # torch and safetensors report a full disk in their own types
        text = " ".join(str(exc).split())
        full = any(
            k in text for k in ("No space left", "StorageFull", "os error 28", "write failed")
        )
        if isinstance(exc, OSError):
            full = full or exc.errno == 28
        why = "the disk is full" if full else f"{type(exc).__name__}: {text[:160]}"
        raise SpurcliError(
            f"cannot write the checkpoint {target} ({why}); nothing half-written was left, the "
            f"last checkpoint is {latest_checkpoint(out) or 'none'}: free space and continue "
            "with --resume latest"
        ) from None


def _state_dict(training: Checkpointable, model: Any) -> dict[str, torch.Tensor]:
    """The trained tensors: every weight, or (LoRA) the adapters alone."""
    model = training.accelerator.unwrap_model(model)
    if training.cfg.lora_rank:
        return adapter_state(model)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _load_state_dict(training: Checkpointable, model: Any, state: dict[str, torch.Tensor]) -> None:
    model = training.accelerator.unwrap_model(model)
    if training.cfg.lora_rank:
        load_adapter_state(model, state)
    else:
        model.load_state_dict(state)


class BadCheckpoint(SpurcliError):
    """A checkpoint that cannot be resumed from; the message names the file and what to do."""


def last_good_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint whose weights load and are all finite (for error messages)."""
    from safetensors.torch import load_file

    for _, path in reversed(list_checkpoints(out)):
        try:
            files = sorted(path.glob("*.safetensors"))
            if files and all(all_finite(load_file(f).values()) for f in files):
                return path
        except Exception:  # unreadable: not a good checkpoint, whatever the reason
            continue
    return None


def check_weights_finite(params: list[Any], step: int, out: Path, lr: float) -> None:
    """After an optimizer step: stop before a non-finite weight is logged, saved or sampled."""
    if not all_finite(params):
        raise SpurcliError(
            f"the weights became non-finite in the update of step {step} (lr {lr:.3g}); "
            f"nothing of this step was saved; last good checkpoint: "
            f"{last_good_checkpoint(out) or 'none'}. Try a lower --lr or --max-grad-norm, "
            "or --mixed-precision bf16 or no"
        )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _mismatch(saved: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> str | None:
    """What makes a saved state dict not fit a model (None: it fits)."""
    missing = sorted(set(model) - set(saved))
    extra = sorted(set(saved) - set(model))
    shapes = [
        f"{k} {tuple(saved[k].shape)} instead of {tuple(v.shape)}"
        for k, v in model.items()
        if k in saved and saved[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
    return "; ".join(problems) or None


def _read_checkpoint(training: Checkpointable, path: Path) -> dict[str, Any]:
    """Everything of a checkpoint, read and checked before any of it touches the run."""
    from safetensors.torch import load_file

    cfg, accelerator = training.cfg, training.accelerator
    record = path / "state.json"
    try:
        state = json.loads(record.read_text(encoding="utf-8"))
        int(state["step"]), dict(state["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadCheckpoint(
            f"{record} is missing or not a spurcli checkpoint record ({_first_line(exc)}); "
            "resume from another checkpoint or delete this one"
        ) from None
    models = {"unet": training.unet}
    if cfg.train_text_encoder:
        models["text_encoder"] = training.text_encoder
    weights = {}
    for name, model in models.items():
        file = path / f"{name}.safetensors"
        try:
            saved = load_file(file)
        except Exception:  # safetensors' own SafetensorError, or OSError
            raise BadCheckpoint(
                f"{file} is missing, truncated or not a safetensors file; resume from another "
                "checkpoint or delete this one"
            ) from None
        own = accelerator.unwrap_model(model)
        if cfg.lora_rank:  # a LoRA checkpoint holds the adapters alone
            wrong = _mismatch(saved, adapter_state(own))
        else:
            wrong = _mismatch(saved, own.state_dict())
        if wrong:
            raise BadCheckpoint(
                f"{file} holds the weights of another model ({wrong}); resume with the "
                "--model it was trained from, or start a new --output-dir"
            )
        if not all_finite(saved.values()):
            raise BadCheckpoint(
                f"{file} holds NaN or infinite weights; resume from an earlier checkpoint"
            )
        weights[name] = saved
    others = {}
    names = ["optimizer", "lr_scheduler", "scaler", f"rng-{accelerator.process_index}"]
    for name in names:
        file = path / f"{name}.pt"
        if not file.is_file():
            continue
        try:
            others[name] = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadCheckpoint(
                f"{file} cannot be read ({_load_failure(exc)}); resume from another checkpoint "
                "or delete this one"
            ) from None
    saved_groups = others.get("optimizer", {}).get("param_groups", [])
    groups = training.optimizer.state_dict()["param_groups"]
    if "optimizer" in others and [len(g["params"]) for g in saved_groups] != [
        len(g["params"]) for g in groups
    ]:
        raise BadCheckpoint(
            f"{path / 'optimizer.pt'} is the optimizer of another run (other parameter groups; "
            "--train-text-encoder changed?); resume with the options it was saved with"
        )
    return {"state": state, "weights": weights, **others}


def load_checkpoint(training: Checkpointable, path: Path, *, skip_bad: bool = False) -> int:
    """Restore everything ``save_checkpoint`` wrote; returns the step it was taken at.

    Nothing is changed unless the whole checkpoint reads and fits (a `BadCheckpoint` naming the
    file otherwise). ``skip_bad`` (``--resume latest``): a checkpoint that does not load is
    reported and the next older one tried; none left is a `BadCheckpoint` (never a silent
    restart from step 0 over the run).
    """
    candidates = [path]
    if skip_bad:
        candidates += [p for _, p in reversed(list_checkpoints(training.out)) if p != path]
    for candidate in candidates:
        try:
            loaded = _read_checkpoint(training, candidate)
        except BadCheckpoint as exc:
            if not skip_bad:
                raise
            log.warning("skipping checkpoint %s: %s", candidate, exc)
            continue
        _apply_checkpoint(training, loaded)
        step = int(loaded["state"]["step"])
        log.info("resumed from %s (step %d)", candidate, step)
        return step
    raise BadCheckpoint(
        f"no checkpoint in {training.out / CHECKPOINTS} loads (each skipped above); resume with "
        "the options they were saved with, or delete the folder to start over"
    )


def _apply_checkpoint(training: Checkpointable, loaded: dict[str, Any]) -> None:
    cfg, accelerator, state = training.cfg, training.accelerator, loaded["state"]
    changed = changed_options(state["config"], cfg)
    if changed:
        log.warning(
            "resuming with changed options (%s): the result will differ from an uninterrupted run",
            ", ".join(changed),
        )
    _load_state_dict(training, training.unet, loaded["weights"]["unet"])
    if "text_encoder" in loaded["weights"]:
        _load_state_dict(training, training.text_encoder, loaded["weights"]["text_encoder"])
    for name, target in (
        ("optimizer", training.optimizer),
        ("lr_scheduler", training.lr_scheduler),
        ("scaler", accelerator.scaler),
    ):
        if target is not None and name in loaded:
            target.load_state_dict(loaded[name])
    rng = loaded.get(f"rng-{accelerator.process_index}")
    if rng is not None:
        _set_rng_state(rng)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step``: a killed run may have logged steps past its checkpoint."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        with contextlib.suppress(ValueError):
            if json.loads(line)["step"] <= step:
                kept.append(line)
    if len(kept) != len(lines):
        write_text(path, "".join(line + "\n" for line in kept))


class StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise Signalled("SIGINT")  # no checkpoint of this step: the previous one stands
        self.requested = True
        console.stderr.print(
            "[yellow]stopping: saving a checkpoint after this step (Ctrl-C again to abort)[/]"
        )

    @contextlib.contextmanager
    def installed(self) -> Any:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled on the main thread
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
