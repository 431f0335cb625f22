"""Weight-loading helpers for plugins (public API).

    from spurcli.weights import hub_file, load_state_dict, is_random

    def make_mine(weights):
        if is_random(weights):
            return build()                              # random init, results say "random"
        path = weights or hub_file("me/my-models", "mine.safetensors", model="mine")
        model = build()
        model.load_state_dict(load_state_dict(path))
        return model

Only safe formats are read: safetensors, or `torch.load(weights_only=True)` (pickled code in a
checkpoint is refused, never run).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError

RANDOM = "random"


def is_random(weights: str | os.PathLike[str] | None) -> bool:
    return weights is not None and os.fspath(weights) == RANDOM


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Whatever a checkpoint file holds (a state dict, or a dict of entries), read safely."""
    path = Path(path)
    if not path.is_file():
        raise SpurcliError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise SpurcliError(f"{path} is not a readable safetensors file: {exc}") from exc
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpurcliError(
            f"{path} cannot be read as a weights-only checkpoint ({_load_failure(exc)}); "
            "convert it to safetensors or a plain state dict"
        ) from exc


def _load_failure(exc: Exception) -> str:
    """The useful part of a `torch.load` error, on one line.

    torch's own message is several paragraphs (with ANSI codes) suggesting weights_only=False,
    which is exactly what we must not do; the object that was refused is what the user needs.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return f"it contains the pickled Python object {refused.group(1)}, which is refused"
    if "Weights only load failed" in text:  # an operand or object the safe unpickler refuses
        return "it holds pickled Python code or objects, which are refused"
    if isinstance(exc, KeyError | EOFError) or "magic number" in text or "zip archive" in text:
        return "not a PyTorch checkpoint, or a truncated one"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A flat name -> tensor mapping from a safetensors or torch checkpoint file.

    Unwraps the usual containers (``state_dict``, ``model``) so a training checkpoint works.
    """
    import torch

    data = load_checkpoint(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise SpurcliError(f"{path} holds no state dict of tensors")
    return data


def hub_file(repo_id: str, filename: str, *, model: str) -> str:
    """Path of ``filename`` from the Hugging Face hub repo ``repo_id`` (downloaded or cached).

    Offline and not cached: one clear error naming the file and how to pass it instead.
    """
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as exc:
        raise SpurcliError(
            f"weights for '{model}' are not available{' offline' if offline() else ''}: need "
            f"{filename} from the hub repo {repo_id} ({type(exc).__name__}); download it where "
            f"online (`hf download {repo_id} {filename}`) and pass the local file as the "
            f"weights of '{model}' (e.g. --weights {model}=PATH), or use random weights"
        ) from exc


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
