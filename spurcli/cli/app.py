"""The Typer app, its global options, and how every command's result goes out.

Results go to stdout (a rich table, or JSON with ``--json``), logs and progress bars to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from spurcli import __version__, console
from spurcli.fileio import check_output_file, write_json

app = typer.Typer(
    name="spurcli",
    help="Generate class-wise spurious images with a fine-tuned Stable Diffusion and measure "
    "how strongly image classifiers fall for them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options several commands share, declared once (the settings' own are made from their fields,
# spurcli.cli.options).
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]
JsonFile = Annotated[
    str | None, typer.Option("--json", help="Write the result as JSON here ('-': stdout).")
]

state = {"verbose": 0}


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
    state["verbose"] = verbose
    console.configure(verbose=verbose, quiet=quiet)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def emit(data: Callable[[], object], show: Callable[[], None], json_out: str | Path | None) -> None:
    """Every command's result, the same way: ``--json FILE`` writes the JSON there and still
    shows the tables; ``--json -`` prints the JSON on stdout instead of them (machine-readable
    stdout); without ``--json`` only ``show()`` runs. Call it on the main process only."""
    if json_out is not None and json_out != "-":
        write_json(json_out, data())
    if json_out == "-":
        print_json(data())
    else:
        show()


def check_outputs(paths: dict[str, str | Path | None]) -> None:
    """Result files are probed before the work: a bad path must not cost the results."""
    for option, path in paths.items():
        if path is not None and console.is_main_process():
            check_output_file(path, option)


def print_wide(renderable: object) -> None:
    """Print a table at its natural width when stdout is a file or pipe (rich assumes 80)."""
    out = console.stdout
    if not out.is_terminal:
        from rich.console import Console
        from rich.measure import Measurement

        width = Measurement.get(out, out.options.update(width=10_000), renderable).maximum
        out = Console(file=out.file, width=max(width, out.width), soft_wrap=True)
    out.print(renderable)


def print_line(text: str) -> None:
    """One plain line of result on stdout (no markup, no highlighting)."""
    console.stdout.print(text, markup=False, highlight=False)
