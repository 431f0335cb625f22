"""The CLI shell: exit codes, one-line errors, -v tracebacks, --version, classes, plugins, laziness.

Most tests run `main()` in-process (fast); laziness and the installed template plugin are
checked in fresh interpreters, where sys.modules tells the truth.
"""

from __future__ import annotations

import json

import pytest
import typer
from _plugin_helpers import imported_by, make_distribution, run_spurcli

from spurcli import __version__, hookimpl
from spurcli.errors import SpurcliError
from spurcli.imagenet import resolve_class
from spurcli.plugins import get_plugins


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def spurcli(cli_main):
    """Run ``spurcli ARGS`` in-process through `cli.main` (conftest's `cli_main`), as a `Result`."""
    return lambda *args: Result(*cli_main(*args))


class ProbeCommands:
    """A plugin adding commands that fail in each way a real command can."""

    @hookimpl
    def register_commands(self, app):
        @app.command("probe-class")
        def probe_class(target: str) -> None:
            print(resolve_class(target))

        @app.command("probe-fail")
        def probe_fail(length: int = 0) -> None:
            raise SpurcliError("bad [bold]input[/bold] in /tmp/x.png " + "x" * length)

        @app.command("probe-bug")
        def probe_bug() -> None:
            raise ValueError("first line\nsecond line")

        @app.command("probe-exit")
        def probe_exit() -> None:
            raise typer.Exit(3)


@pytest.fixture
def probe():
    get_plugins().register(ProbeCommands(), name="probe")


# --- exit codes and error lines --------------------------------------------------------------


def test_version(spurcli):
    result = spurcli("--version")
    assert (result.code, result.out.strip()) == (0, f"spurcli {__version__}")


def test_command_success_is_exit_0(spurcli, probe):
    result = spurcli("probe-class", "Hummingbird")
    assert (result.code, result.out.strip(), result.err) == (0, "94 hummingbird", "")


def test_unknown_class_is_usage_error_exit_2_one_line(spurcli, probe):
    result = spurcli("probe-class", "hummingbrd")
    assert result.code == 2
    assert result.err_lines == [
        "error: unknown ImageNet class 'hummingbrd'; did you mean 94 hummingbird? "
        "(see `spurcli classes QUERY`)"
    ]


def test_spurcli_error_is_exit_1_one_line_markup_kept(spurcli, probe):
    result = spurcli("probe-fail", "--length", "300")  # longer than any terminal: no wrapping
    assert result.code == 1
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith("error: bad [bold]input[/bold] in /tmp/x.png xxx")
    assert result.err_lines[0].endswith("x" * 300)
    assert "Traceback" not in result.err


def test_verbose_shows_the_traceback(spurcli, probe):
    result = spurcli("-v", "probe-fail")
    assert result.code == 1
    assert "Traceback" in result.err and "SpurcliError" in result.err
    assert result.err_lines[-1] == "error: bad [bold]input[/bold] in /tmp/x.png "


def test_unexpected_exception_is_one_line_exit_1(spurcli, probe):
    result = spurcli("probe-bug")
    assert result.code == 1
    assert result.err_lines == [
        "error: ValueError: first line second line (run with -v for the traceback)"
    ]
    verbose = spurcli("-v", "probe-bug")
    assert verbose.code == 1 and "Traceback" in verbose.err and "probe_bug" in verbose.err


def test_typer_exit_code_is_kept(spurcli, probe):
    assert spurcli("probe-exit").code == 3


@pytest.mark.parametrize(
    "args",
    [("classes", "--bogus"), ("classes", "1", "2"), ("probe-class",), ("no-such-command",)],
)
def test_typer_usage_errors_exit_2(spurcli, probe, args):
    result = spurcli(*args)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "Usage:" in result.err or "Try 'spurcli" in result.err


def test_help_is_exit_0(spurcli):
    result = spurcli("--help")
    assert result.code == 0 and "classes" in result.out and "plugins" in result.out


# --- classes ---------------------------------------------------------------------------------


def test_classes_table_and_json(spurcli):
    table = spurcli("classes", "humming")
    assert table.code == 0 and "94" in table.out and "n01833805" in table.out
    rows = json.loads(spurcli("classes", "n01833805", "--json").out)
    assert rows == [
        {"index": 94, "wnid": "n01833805", "name": "hummingbird", "lemmas": ["hummingbird"]}
    ]
    assert [r["index"] for r in json.loads(spurcli("classes", "94", "--json").out)] == [94]
    assert len(json.loads(spurcli("classes", "--json").out)) == 1000


def test_classes_spurious(spurcli):
    rows = json.loads(spurcli("classes", "--spurious", "--json").out)
    assert len(rows) == 100 and len({r["index"] for r in rows}) == 100
    by_index = {r["index"]: r for r in rows}
    assert by_index[94]["spurious_feature"] == "red feeder/flower"
    assert by_index[94]["name"] == "hummingbird"
    table = spurcli("classes", "94", "--spurious")
    assert table.code == 0 and "red feeder/flower" in table.out
    # A class that is not among the 100 gives no spurious rows.
    assert json.loads(spurcli("classes", "goldfish", "--spurious", "--json").out) == []


def test_classes_no_match(spurcli):
    result = spurcli("classes", "zzzz")
    assert result.code == 1
    assert result.err_lines == ["error: no ImageNet class matches 'zzzz'"]
    as_json = spurcli("classes", "zzzz", "--json")
    assert (as_json.code, json.loads(as_json.out)) == (0, [])


# --- plugins ---------------------------------------------------------------------------------


def test_plugins_json_and_table_show_the_fake_plugin(spurcli, fake_plugin):
    data = json.loads(spurcli("plugins", "--json").out)
    fake = next(p for p in data["plugins"] if p["name"] == "fake-plugin")
    assert fake == {
        "name": "fake-plugin",
        "version": None,
        "classifiers": ["fake", "fake:*"],
        "extractors": ["fake"],
        "detectors": ["fake"],
    }
    table = spurcli("plugins")
    assert table.code == 0 and "fake-plugin" in table.out and "fake:*" in table.out
    assert "detectors" in table.out


def test_installed_template_plugin_is_listed():
    """`make install` installs examples/plugin-template; a fresh `spurcli` must find it."""
    result = run_spurcli(["plugins", "--json"])
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["spurcli-plugin-template"]["classifiers"] == ["template-linear"]
    assert plugins["spurcli-plugin-template"]["version"] == "0.1.0"


# --- laziness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["--help"], ["plugins"], ["plugins", "--json"], ["classes", "94"]]
)
def test_light_commands_import_no_model_library(args):
    """With every installed plugin loaded, listing commands import none of HEAVY_MODULES."""
    import importlib.metadata

    report, proc = imported_by(args)
    assert proc.returncode == 0, proc.stderr
    assert report["heavy"] == [], f"`spurcli {' '.join(args)}` imported {report['heavy']}"
    installed = {ep.dist.name for ep in importlib.metadata.entry_points(group="spurcli")}
    assert set(report["loaded"]) | set(report["failed"]) == installed
    assert report["failed"] == {}, "an installed plugin failed to load"


def test_import_probe_sees_a_plugin_that_imports_torch(tmp_path):
    """Guards the laziness test against passing vacuously: an eager plugin is caught."""
    site = tmp_path / "site"
    eager = "import torch\nfrom spurcli import hookimpl\n"
    make_distribution(site, "ep-eager", "ep_eager", eager)
    report, proc = imported_by(["plugins"], site=site)
    assert proc.returncode == 0, proc.stderr
    assert "torch" in report["heavy"] and "ep-eager" in report["loaded"]


# --- console ---------------------------------------------------------------------------------


def test_console_configure_is_idempotent_and_leaves_host_logging_alone(monkeypatch):
    import logging

    from spurcli import console

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh `spurcli` process
    monkeypatch.setattr(root, "level", root.level)
    console.configure()
    console.configure(verbose=1)
    ours = [h for h in root.handlers if getattr(h, "_spurcli", False)]
    assert len(ours) == 1 and root.handlers == ours
    assert console.log.level == logging.DEBUG
    console.configure(quiet=True)
    assert len(root.handlers) == 1 and console.log.level == logging.WARNING
    assert not console.progress_enabled()

    host = logging.NullHandler()  # an application (or pytest) that set up logging itself
    root.handlers[:] = [host]
    console.configure()
    assert root.handlers == [host] and console.progress_enabled()


def test_log_lines_in_a_colour_terminal_print_names_without_highlighting(monkeypatch):
    """rich's repr highlighter coloured "e:d" of "compare:dreambooth-vs-..." as an IPv6 address
    (and numbers in cyan): a log line's own text gets no style, only the level name does."""
    import io
    import logging
    import re

    from rich.console import Console

    from spurcli import console

    terminal = Console(
        file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200, emoji=False
    )
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh `spurcli` process
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(console, "stderr", terminal)
    console.configure()
    message = "compare:dreambooth-vs-baseline: no dreambooth-vs-baseline.json yet (12 files)"
    console.log.info(message)
    out = terminal.file.getvalue()
    assert "\x1b[" in out  # a colour terminal: the level name is styled
    line = next(line for line in out.splitlines() if "INFO" in line)
    text = line[line.index("INFO") :]
    assert message in text, repr(line)  # contiguous: no escape sequence inside the message
    after = text[text.index(message) :]
    assert not re.search(r"\x1b\[[0-9;]*[1-9][0-9;]*m", after), repr(line)  # nothing styled


def test_console_progress_quiet_and_track(monkeypatch):
    from spurcli import console

    console.configure(quiet=True)
    assert list(console.track(range(3), "counting")) == [0, 1, 2]
    console.configure()
    monkeypatch.setenv("RANK", "1")  # not the main process: no bars
    assert not console.progress_enabled()
    with console.progress_bar("x", total=2) as bar:
        bar.advance()
