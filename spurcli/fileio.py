"""Atomic file and folder writes: a result is either complete or absent, never half-written.

    with atomic_path("out/result.json") as tmp:   # write to tmp; renamed over the target on success
        tmp.write_text(...)
    write_json("out/result.json", {"a": 1})
    with atomic_dir("run/checkpoints/step-10") as tmp:  # a folder, renamed in at the end
        save_everything(tmp)

A crash (or kill -9) leaves at most a hidden ``.tmp-*`` sibling; the target is never half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path) -> Path:
    # A fresh name, not a file made by mkstemp: mkstemp/mkdtemp create it with mode 0600/0700,
    # and after the rename results would be unreadable to the rest of a shared group.
    return path.parent / f".tmp-{path.name}.{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling path to write to, renamed to ``path`` on success (removed on error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _tmp_sibling(path)
    tmp_path.touch(exist_ok=False)  # exists (empty) like mkstemp's file, but with umask modes
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder renamed to ``path`` on success (an existing ``path`` is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            # Rename the old folder away first so that the target is never missing both copies.
            old = Path(tempfile.mkdtemp(prefix=f".old-{path.name}.", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old / path.name, path)  # put the previous version back
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
