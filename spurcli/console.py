"""Where output goes: results to stdout, logs and progress bars to stderr.

    from spurcli.console import log, track, progress_bar
    for batch in track(loader, "scoring", total=len(loader)):
        ...
    with progress_bar("training", total=steps) as bar:
        bar.advance()

`--quiet` turns progress bars and info logs off; in a multi-process run only rank 0 shows them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler

from spurcli.text import terminal

T = TypeVar("T")

# emoji=False: a message quoting "timm:cat:..." must not turn into a cat.
stdout = Console(soft_wrap=True, emoji=False)
stderr = Console(stderr=True, emoji=False)
log = logging.getLogger("spurcli")

_state = {"quiet": False}


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def configure(*, verbose: int = 0, quiet: bool = False) -> None:
    """Set up logging for the CLI; calling it again replaces the previous set-up (idempotent).

    Our handler goes on the root logger only when nothing else (an application embedding
    spurcli, pytest) has configured logging, so we never take over someone else's logs.
    """
    _state["quiet"] = quiet
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if not is_main_process() and not verbose:
        level = logging.WARNING
    log.setLevel(level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_spurcli", False)]:
        root.removeHandler(old)
    if not root.handlers:
        handler = log_handler(stderr, verbose=verbose)
        handler._spurcli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.WARNING)  # other libraries' loggers: warnings and errors only
    logging.captureWarnings(True)


def log_handler(console: Console, *, verbose: int = 0) -> logging.Handler:
    """The handler of spurcli's log lines on ``console``: rich's in a terminal, else plain lines.

    rich's repr highlighter is off: log lines quote stage, set and model names
    ("compare:dreambooth-vs-baseline", "timm:vit_base"), and it would colour pieces of them as
    if they were IPv6 addresses or numbers. The text is printed as it is.
    """
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(
            console=console,
            show_time=False,
            show_path=bool(verbose),
            markup=False,
            highlighter=NullHighlighter(),
        )
    else:  # a log file or pipe: one plain line per record, never wrapped at 80 columns
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_plain_text)
    return handler


def _plain_text(record: logging.LogRecord) -> bool:
    """Log lines quote prompts and file names: their control characters are shown, not obeyed
    (an escape sequence in a prompt must not clear or retitle the terminal)."""

    message = record.getMessage()
    cleaned = terminal(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    return True


def progress_enabled() -> bool:
    return not _state["quiet"] and is_main_process()


class _Bar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None) -> Iterator[_Bar]:
    if not progress_enabled():
        yield _Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)


def track(iterable: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(description, total) as bar:
        for item in iterable:
            yield item
            bar.advance()
