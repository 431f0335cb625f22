"""The `spurcli` command: parse, call one function of a stage, render the result.

    spurcli --help                     # the commands; `spurcli COMMAND --help` for each
    python -m spurcli.cli.settings_doc # docs/settings.md, from the config classes

- `spurcli.cli.app`: the Typer app, global options, how results go out (table, --json);
- `spurcli.cli.options`: command-line options made from a config class's fields;
- `spurcli.cli.commands`: the commands (thin: each calls one function of generate/, evaluate/
  or experiment/);
- here: `main`, which turns expected errors into one line and an exit code.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback

from spurcli import console
from spurcli.cli import commands  # noqa: F401  (registers the commands on the app)
from spurcli.cli.app import app, state
from spurcli.errors import Signalled, SpurcliError, describe_os_error
from spurcli.plugins import get_plugins
from spurcli.text import rich_text

__all__ = ["app", "main", "state"]


def main() -> None:
    """Entry point: runs the app, turning expected errors into one line and an exit code.

    Typer runs in standalone mode, so it prints its own usage errors (exit 2) and handles
    --help, --version and ``typer.Exit(code)``; everything else that escapes a command is ours.
    """
    previous = _sigterm_interrupts()
    try:
        console.configure()  # so plugin-loading warnings look like every other log line
        get_plugins().register_commands(app)
        app()
    except SpurcliError as exc:
        _fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, Signalled):
        _fail(f"interrupted; finished results are kept: {_how_to_continue(sys.argv)}", 130)
    except OSError as exc:  # a full disk, a read-only or vanished path, something in the way
        _fail(describe_os_error(exc), 1)
    except Exception as exc:
        text = " ".join(str(exc).split())  # a bug's message may span lines; keep one
        _fail(f"{type(exc).__name__}: {text} (run with -v for the traceback)", 1)
    finally:
        for signum, handler in previous.items():  # main() may run inside another program
            signal.signal(signum, handler)


def _how_to_continue(argv: list[str]) -> str:
    """What continues the interrupted command: `finetune` refuses its own folder without
    --resume, every other command picks up where it stopped."""
    if "finetune" in argv[1:] and not any(a.startswith("--resume") for a in argv):
        return "continue with the same command and --resume latest"
    return "run the same command to continue"


def _sigterm_interrupts() -> dict[int, object]:
    """Ctrl-C and SIGTERM (kill, a batch system's time limit) end every command with one line
    and exit 130, temporaries removed by the unwinding ``finally`` blocks. Without this SIGTERM
    kills Python silently and Typer turns Ctrl-C into a silent exit 130. The training loop
    installs its own handler while it runs (checkpoint, then stop)."""

    def interrupt(signum: int, frame: object) -> None:
        raise Signalled(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}


def _fail(message: str, code: int) -> None:
    if state["verbose"]:
        traceback.print_exc()
    # escape: messages quote user input and file names, which rich would read as markup;
    # soft_wrap: one line however long, so that scripts can grep it.
    console.stderr.print(
        f"[red]error:[/] {rich_text(message)}", markup=True, highlight=False, soft_wrap=True
    )
    sys.exit(code)
