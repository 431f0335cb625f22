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

Every result names the exact weights (``weights_id`` in score/compare JSON and run cards): core
records a local file's path and sha256 and marks ``random`` itself, and `hub_file` records the
repo, file and resolved snapshot commit of what it returns, so the plugin above gets both for
free. A plugin that obtains weights another way says what it used with `record`:

    from spurcli.weights import file_identity, hub_snapshot, record
    record(hub_snapshot("me/my-models"))             # a library downloaded from that repo
    record(file_identity(path, package="my-pkg"))    # a file shipped inside a package

    file_identity("w.safetensors")   # {"source": "file", "path": ..., "bytes": ..., "sha256": ...}

File hashes are cached in ``$SPURCLI_CACHE/sha256.json`` (default ``~/.cache/spurcli``), keyed by
(path, size, mtime), so scoring again does not re-read gigabytes.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError
from spurcli.fileio import write_json
from spurcli.images import sha256_file

RANDOM = "random"
HASH_CACHE = "sha256.json"  # in cache_dir(): path -> size, mtime_ns, sha256
COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a full git commit hash, as the hub cache names snapshots


def is_random(weights: str | os.PathLike[str] | None) -> bool:
    return weights is not None and os.fspath(weights) == RANDOM


def read_weights_file(path: str | os.PathLike[str]) -> Any:
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
    if "Weights only load failed" in text or type(exc).__name__ == "UnpicklingError":
        return "it holds pickled Python code or objects, which are refused"
    if isinstance(exc, KeyError | EOFError) or "magic number" in text or "zip archive" in text:
        return "not a PyTorch checkpoint, or a truncated one"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_error_text(exc: BaseException) -> str:
    """One line saying why weights did not load, for plugins' messages: a refused pickle as
    `read_weights_file` says it (never torch's advice to set weights_only=False), else the
    first line of the error, with the line it introduces when it ends in a colon (torch's
    "Error(s) in loading state_dict for ResNet:" says nothing by itself)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    pickled = "weights_only" in text or type(exc).__name__ == "UnpicklingError"
    if pickled and isinstance(exc, Exception):
        return _load_failure(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return first if len(first) <= 300 else first[:300].rstrip(", ") + " ..."


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A flat name -> tensor mapping from a safetensors or torch checkpoint file.

    Unwraps the usual containers (``state_dict``, ``model``) so a training checkpoint works.
    """
    import torch

    data = read_weights_file(path)
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


def hub_file(repo_id: str, filename: str, *, model: str, revision: str | None = None) -> str:
    """Path of ``filename`` from the Hugging Face hub repo ``repo_id`` (downloaded or cached).

    Records the repo, file and resolved commit (see `record`). Offline and not cached: one clear
    error naming the file and how to pass it instead.
    """
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, filename, revision=revision)
    except Exception as exc:
        raise SpurcliError(
            f"weights for '{model}' are not available{' offline' if offline() else ''}: need "
            f"{filename} from the hub repo {repo_id} ({type(exc).__name__}); download it where "
            f"online (`hf download {repo_id} {filename}`) and pass the local file as the "
            f"weights of '{model}' (e.g. {weights_hint(model)}), or use random weights"
        ) from exc
    record(
        {
            "source": "hub",
            "repo": repo_id,
            "revision": snapshot_commit(path) or revision or "main",
            "file": filename,
            "sha256": sha256_cached(path),  # the same file by path or by default is one
        }
    )
    return path


# The command-line option that names a model's weights: `--weights` for classifiers, but
# `--extractor-weights` or `--detector-weights` when the model is loaded as one of those, so that
# an error raised deep inside a plugin's factory tells the user the option that actually works.
_weights_option: contextvars.ContextVar[str] = contextvars.ContextVar(
    "spurcli_weights_option", default="--weights"
)


@contextlib.contextmanager
def weights_option(option: str) -> Iterator[None]:
    """Inside the block, `weights_hint` names ``option`` (core wraps each model load)."""
    token = _weights_option.set(option)
    try:
        yield
    finally:
        _weights_option.reset(token)


def weights_hint(model: str) -> str:
    """How to pass a local file as ``model``'s weights: ``--weights NAME=PATH`` or the like."""
    return f"{_weights_option.get()} {model}=PATH"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# --- which weights: identities recorded in every result ---------------------------------------

_recorded: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "spurcli_weights_recorded", default=None
)


def record(identity: dict[str, Any]) -> None:
    """Say which weights the model being built uses (no-op outside `recording`).

    ``identity`` is JSON-ready, with a ``source`` key: what `file_identity` or `hub_snapshot`
    return, or your own (e.g. ``{"source": "url", "url": ..., "sha256": ...}``).
    """
    found = _recorded.get()
    if found is not None and identity not in found:
        found.append(dict(identity))


@contextlib.contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Collect the identities `record` receives inside the block (core wraps each factory)."""
    found: list[dict[str, Any]] = []
    token = _recorded.set(found)
    try:
        yield found
    finally:
        _recorded.reset(token)


def identify(
    weights: str | None, recorded: list[dict[str, Any]], default: str | None = None
) -> dict[str, Any]:
    """The ``weights_id`` of a model built with ``weights`` while ``recorded`` was collected.

    A local file or folder given by the user is its own identity (path + sha256); ``random``
    says so; the
    plugin's default source is what the plugin recorded, or, if it recorded nothing, an honest
    ``{"source": "unrecorded"}`` with the plugin's description of its default.
    """
    if is_random(weights):
        return {"source": RANDOM}
    if weights is not None:  # a local checkpoint file, or a folder (e.g. a transformers model)
        return folder_identity(weights) if Path(weights).is_dir() else file_identity(weights)
    if len(recorded) == 1:
        return recorded[0]
    if recorded:
        return {"source": "several", "parts": list(recorded)}
    return {"source": "unrecorded", "default": default}


def file_identity(path: str | os.PathLike[str], *, package: str | None = None) -> dict[str, Any]:
    """``{"source": "file", "path", "bytes", "sha256"}`` of a local weights file.

    ``package``: the file ships inside that installed distribution; its version is recorded too.
    """
    resolved = Path(path).expanduser().absolute()
    identity: dict[str, Any] = {
        "source": "file",
        "path": os.fspath(resolved),
        "bytes": resolved.stat().st_size,
        "sha256": sha256_cached(resolved),
    }
    if package is not None:
        identity.update(source="package", package=package, version=_package_version(package))
    return identity


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def snapshot_commit(path: str | os.PathLike[str]) -> str | None:
    """The commit of a path inside a hub cache snapshot (``.../snapshots/<commit>/...``)."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and COMMIT.match(parts[i + 1]):
            return parts[i + 1]
    return None


def hub_snapshot(repo_id: str, revision: str | None = None) -> dict[str, Any]:
    """``{"source": "hub", "repo", "revision": <commit>}`` of a repo in the local hub cache.

    For weights a library downloaded itself (timm's ``hf-hub:``, diffusers): the commit the
    cache resolves ``revision`` (default main) to. Raises `SpurcliError` if it is not cached.
    """
    return {"source": "hub", "repo": repo_id, "revision": cached_commit(repo_id, revision)}


def cached_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit ``revision`` (a branch, tag or commit; default main) of ``repo_id`` resolves to
    in the local hub cache, read the way huggingface_hub writes it (``refs/<name>`` holds the
    commit, ``snapshots/<commit>/`` the files). One clear error if it is not there."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    wanted = revision or "main"
    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = folder / "refs" / wanted
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else wanted
    if COMMIT.match(commit) and (folder / "snapshots" / commit).is_dir():
        return commit
    snapshots = folder / "snapshots"
    cached = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
    refs = sorted(
        f"{p.relative_to(folder / 'refs')}={p.read_text(encoding='utf-8').strip()[:12]}"
        for p in (folder / "refs").rglob("*")
        if p.is_file()
    )
    have = (
        f"cached: {', '.join(refs) or 'no refs'}; snapshots {', '.join(c[:12] for c in cached)}"
        if cached
        else "nothing of it is cached"
    )
    raise SpurcliError(
        f"revision '{wanted}' of {repo_id} is not in the local Hugging Face cache "
        f"({constants.HF_HUB_CACHE}; {have}){'; it cannot be fetched offline' if offline() else ''}"
    )


def cache_dir() -> Path:
    """spurcli's own cache (hashes, the CLIP zero-shot heads): ``$SPURCLI_CACHE`` or ~/.cache."""
    return Path(os.environ.get("SPURCLI_CACHE") or Path.home() / ".cache" / "spurcli")


def sha256_cached(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, remembered by (absolute path, size, mtime) across processes."""

    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    key = os.fspath(resolved)
    store = cache_dir() / HASH_CACHE
    cache = _read_hash_cache(store)
    entry = cache.get(key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    digest = sha256_file(resolved)
    cache = _read_hash_cache(store)  # another process may have added entries meanwhile
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only home only costs a re-hash next time
        write_json(store, cache)
    return digest


def _read_hash_cache(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_identity(
    folder: str | os.PathLike[str], patterns: tuple[str, ...] = ("*.safetensors", "*.bin")
) -> dict[str, Any]:
    """Path and content hash of the weight files below ``folder`` (a diffusers pipeline).

    ``sha256`` hashes the sorted "relative path  file sha256" lines (like ``sha256sum``'s
    output), so it changes when any weight file does; ``files`` lists each file's hash.
    """
    root = Path(folder).expanduser().absolute()
    files = sorted({p for pattern in patterns for p in root.rglob(pattern) if p.is_file()})
    hashes = {p.relative_to(root).as_posix(): sha256_cached(p) for p in files}
    listing = "".join(f"{digest}  {name}\n" for name, digest in hashes.items())
    return {
        "source": "folder",
        "path": os.fspath(root),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "files": hashes,
    }


def content_key(weights: str | os.PathLike[str] | None) -> str | None:
    """What a weights value (``--weights NAME=VALUE``) stands for, by content: a local file's or
    folder's sha256 (``sha256:...``), so that new bytes under an old name are new weights and
    one file under two names is one; else the value itself (``random``, a hub id, None: the
    plugin's default)."""
    if weights is None or is_random(weights):
        return None if weights is None else RANDOM
    path = Path(weights).expanduser()
    if path.is_file():
        return "sha256:" + sha256_cached(path)
    if path.is_dir():
        return "sha256:" + folder_identity(path)["sha256"]
    return os.fspath(weights)


def identity_key(weights_id: dict[str, Any] | None) -> str | None:
    """The content key of a recorded ``weights_id`` (`identify`), comparable to `content_key`."""
    if not weights_id:
        return None
    if weights_id.get("sha256"):
        return "sha256:" + str(weights_id["sha256"])
    if weights_id.get("source") == RANDOM:
        return RANDOM
    return json.dumps(weights_id, sort_keys=True, default=str)
