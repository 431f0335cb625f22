"""The `spurcli` command: parse, call one function of the core, render the result.

Heavy modules (torch, diffusers) are imported inside the commands that need them, so that
`spurcli --help`, `spurcli plugins` and `spurcli classes` start fast and import no torch.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Annotated

import typer
from rich.markup import escape

from spurcli import __version__, console
from spurcli.errors import SpurcliError

app = typer.Typer(
    name="spurcli",
    help="Generate class-wise spurious images with a fine-tuned Stable Diffusion and measure "
    "how strongly image classifiers fall for them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"verbose": 0}


def _version(value: bool) -> None:
    if value:
        print(f"spurcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Debug logs and full tracebacks.")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    _state["verbose"] = verbose
    console.configure(verbose=verbose, quiet=quiet)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


@app.command("plugins")
def plugins_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List installed plugins and the classifiers and feature extractors each registers."""
    from spurcli.plugins import get_plugins

    plugins = get_plugins()
    infos = plugins.info()
    if as_json:
        _print_json(
            {
                "plugins": [
                    {
                        "name": p.name,
                        "version": p.version,
                        "classifiers": p.classifiers,
                        "extractors": p.extractors,
                    }
                    for p in infos
                ],
                "failed": plugins.failed,
            }
        )
        return
    from rich.table import Table

    table = Table(title="spurcli plugins")
    for column in ("plugin", "version", "classifiers", "feature extractors"):
        table.add_column(column)
    for p in infos:
        cells = (p.name, p.version or "", ", ".join(p.classifiers), ", ".join(p.extractors))
        table.add_row(*map(escape, cells))  # names come from third-party code: not markup
    # Failed plugins were already warned about (once, on stderr) when they were loaded.
    for name, why in plugins.failed.items():
        table.add_row(escape(name), "[red]failed[/]", escape(why), "")
    console.stdout.print(table)


@app.command("classes")
def classes_command(
    query: Annotated[
        str | None, typer.Argument(help="Index, WordNet id, or part of a class name.")
    ] = None,
    spurious: Annotated[
        bool,
        typer.Option("--spurious", help="The 100 Spurious ImageNet classes and their feature."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Look up ImageNet-1k classes (or the Spurious ImageNet ones with --spurious)."""
    from spurcli import imagenet

    matches = imagenet.search_classes(query)
    features: dict[int, str] = {}
    if spurious:
        features = {s.cls.index: s.feature for s in imagenet.spurious_classes()}
        matches = [c for c in matches if c.index in features]
    if as_json:
        rows = []
        for c in matches:
            row = {"index": c.index, "wnid": c.wnid, "name": c.name, "lemmas": list(c.lemmas)}
            if spurious:
                row["spurious_feature"] = features[c.index]
            rows.append(row)
        _print_json(rows)
        return
    if not matches:
        raise SpurcliError(f"no ImageNet class matches '{query}'")
    from rich.table import Table

    table = Table(title="Spurious ImageNet classes" if spurious else "ImageNet-1k classes")
    for column in ("index", "wnid", "name", "spurious feature" if spurious else "synonyms"):
        table.add_column(column)
    for c in matches:
        last = features[c.index] if spurious else ", ".join(c.lemmas)
        table.add_row(str(c.index), c.wnid, c.name, last)
    console.stdout.print(table)


def main() -> None:
    """Entry point: runs the app, turning expected errors into one line and an exit code.

    Typer runs in standalone mode, so it prints its own usage errors (exit 2) and handles
    --help, --version and ``typer.Exit(code)``; everything else that escapes a command is ours.
    """
    try:
        from spurcli.plugins import get_plugins

        get_plugins().register_commands(app)
        app()
    except SpurcliError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        text = " ".join(str(exc).split())  # a bug's message may span lines; keep one
        _fail(f"{type(exc).__name__}: {text} (run with -v for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    if _state["verbose"]:
        traceback.print_exc()
    # escape: messages quote user input and file names, which rich would read as markup;
    # soft_wrap: one line however long, so that scripts can grep it.
    console.stderr.print(
        f"[red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True
    )
    sys.exit(code)
