"""Is a stage up to date? Make's rule plus a record of the settings each output was made with.

    why = staleness([out / "scores" / "a.json"], [out / "samples" / "a"], {"target": 94})
    why            # None: up to date; else why not ("no a.json yet", "settings changed: target")
    write_stamp(out / "scores" / "a.json", {"target": 94})     # after making the output

`Stages` records, per stage, whether it ran or was skipped, and why (`spurcli run --json`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from spurcli.fileio import write_json
from spurcli.images import find_images

log = logging.getLogger(__name__)


def _mtime(paths: Iterable[Path]) -> float:
    """The newest modification time among ``paths`` (folders: their image files, recursively)."""
    newest = 0.0
    for path in paths:
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.name == "manifest.jsonl"] or find_images(path)
            newest = max([newest, *(p.stat().st_mtime for p in files)])
        elif path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


def staleness(
    outputs: Sequence[Path], inputs: Sequence[Path], stamp: dict[str, Any] | None = None
) -> str | None:
    """Why the outputs are stale, or None when they are up to date: all exist, none is older
    than any input (make's rule), and they were made with the settings in ``stamp`` (kept in a
    ``<first output>.stamp.json`` next to them)."""
    missing = [p for p in outputs if not p.exists()]
    if missing:
        return f"no {missing[0].name} yet"
    if stamp is not None:
        try:
            made = json.loads(_stamp_path(outputs[0]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "no record of the settings it was made with"
        now = json.loads(json.dumps(stamp, default=str))
        changed = sorted(k for k in {*made, *now} if made.get(k) != now.get(k))
        if changed:
            return "settings changed: " + ", ".join(changed)
    if min(p.stat().st_mtime for p in outputs) < _mtime(inputs):
        return "inputs changed"
    return None


def fresh(
    outputs: Sequence[Path], inputs: Sequence[Path], stamp: dict[str, Any] | None = None
) -> bool:
    """`staleness` is None: the outputs are up to date."""
    return staleness(outputs, inputs, stamp) is None


def _stamp_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.stamp.json")


def write_stamp(output: Path, stamp: dict[str, Any]) -> None:

    write_json(_stamp_path(output), stamp)


class Stages:
    """Runs or skips each stage, and records which and why (``prefix``: the training run a
    stage belongs to in a replicated experiment, e.g. ``replicate-2/``)."""

    def __init__(self, prefix: str = "") -> None:
        self.done: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.prefix = prefix

    def scoped(self, prefix: str) -> Stages:
        """The same record, with stage names under ``prefix``."""
        view = Stages(prefix)
        view.done, view.reasons = self.done, self.reasons
        return view

    def reason(self, name: str, default: str) -> str:
        return self.reasons.get(self.prefix + name, default)

    def skip(self, name: str, why: str = "up to date") -> None:
        name = self.prefix + name
        log.info("%s: %s, skipped", name, why)
        self.done[name], self.reasons[name] = "skipped", why

    def ran(self, name: str, why: str = "not made yet") -> None:
        name = self.prefix + name
        self.done[name], self.reasons[name] = "ran", why

    def check(self, name: str, why: str | None) -> bool:
        """Skip the stage when ``why`` (its staleness) is None; True when it must run."""
        if why is None:
            self.skip(name)
            return False
        log.info("%s: %s", self.prefix + name, why)
        self.reasons[self.prefix + name] = why
        return True
