"""Shared pytest fixtures. Append small, clearly named fixtures; keep the heavy ones session-scoped.

Every test runs offline (HF_HUB_OFFLINE=1) and starts with a fresh plugin manager.
"""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub, which reads the variable once at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from _fake_plugin import FakePlugin

from spurcli import console, plugins


@pytest.fixture(autouse=True)
def _offline_and_fresh_plugins(monkeypatch, tmp_path_factory):
    """Offline hub, a fresh plugin singleton, and default console state for every test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # spurcli's cache (file hashes, CLIP heads) inside the test session's folder, not in ~/.cache
    monkeypatch.setenv("SPURCLI_CACHE", str(tmp_path_factory.getbasetemp() / "spurcli-cache"))
    saved_console = dict(console._state)
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()
    console._state.update(saved_console)


@pytest.fixture
def fake_plugin() -> FakePlugin:
    """An in-code plugin registered next to the installed ones (see tests/_fake_plugin.py).

    Classifier ``fake`` (alias ``fk``): red images -> class 94 (hummingbird), others -> class 1;
    family ``fake:<index>`` targets that index instead; extractor ``fake``: (B, 12) colour features.
    ``fake_plugin.calls`` records every factory call as (name, weights, variant).
    """
    plugin = FakePlugin()
    plugins.get_plugins().register(plugin, name=plugin.name)
    return plugin


@pytest.fixture
def cli_main(monkeypatch, capsys):
    """``cli_main("sample", "tiny", ...) -> (exit code, stdout, stderr)``: `spurcli ARGS` run
    in-process through `cli.main`, so errors come out as the user sees them (one line, a code)."""
    import sys

    from spurcli import cli

    saved_commands = list(cli.app.registered_commands)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["spurcli", *args])
        cli.state["verbose"] = 0
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    cli.app.registered_commands[:] = saved_commands  # main() added plugin commands


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): tiny models
    on two shared cores only lose time to a second thread's contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def chromium() -> str:
    """Debian's headless Chromium for tests that render a page; skipped where it is missing,
    except in CI (``CI`` set), where .ci/run installs it and a missing browser is a failure."""
    import shutil

    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return path
