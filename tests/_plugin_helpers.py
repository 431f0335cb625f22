"""Helpers for plugin-system tests: code plugins, real throwaway distributions, `spurcli` runs.

    make_plugin_module("p1", classifiers={"resnet": factory})     # an in-code plugin module
    site = tmp_path / "site"
    make_distribution(site, "ep-good", "ep_good", GOOD_SOURCE)     # a real *.dist-info + module
    result = run_spurcli(["plugins", "--json"], site=site)        # subprocess, site on sys.path

Distributions are real: importlib.metadata finds the ``*.dist-info`` folder on sys.path exactly
as it finds an installed wheel, so nothing about entry-point discovery is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spurcli import hookimpl

HEAVY_MODULES = ("torch", "torchvision", "timm", "open_clip", "diffusers", "transformers")


def make_plugin_module(
    name: str,
    classifiers: dict[str, Callable[..., Any]] | None = None,
    extractors: dict[str, Callable[..., Any]] | None = None,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> types.ModuleType:
    """A module object registering the given names, as a plugin's module would."""
    module = types.ModuleType(name)
    aliases = aliases or {}
    if classifiers is not None:

        @hookimpl
        def register_classifiers(register):
            for key, factory in classifiers.items():
                register(key, factory, aliases=aliases.get(key, ()), description=f"{key} test")

        module.register_classifiers = register_classifiers
    if extractors is not None:

        @hookimpl
        def register_feature_extractors(register):
            for key, factory in extractors.items():
                register(key, factory)

        module.register_feature_extractors = register_feature_extractors
    return module


def make_distribution(
    site: Path,
    dist: str,
    module: str,
    source: str,
    *,
    version: str = "1.0",
    entry_point: str | None = None,
) -> None:
    """Write module ``module`` and a ``*.dist-info`` declaring it in the ``spurcli`` group."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[spurcli]\n{entry_point or module} = {module}\n", encoding="utf-8"
    )


def spurcli_env(site: Path | None = None, **extra: str | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    env.pop("SPURCLI_LOAD_PLUGINS", None)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_spurcli(
    args: Sequence[str], *, site: Path | None = None, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """``python -m spurcli ARGS`` in a fresh interpreter (what a user's shell runs)."""
    return subprocess.run(
        [sys.executable, "-m", "spurcli", *args],
        env=spurcli_env(site, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# Runs the CLI's main() with the given argv and reports, at interpreter exit (after main's
# SystemExit), which heavy modules got imported and which plugins were loaded.
_IMPORT_PROBE = """
import atexit, json, sys

def _report():
    from spurcli import plugins
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    pm = plugins._plugins
    loaded = [] if pm is None else [n for n, _ in pm.pm.list_name_plugin()]
    failed = {} if pm is None else pm.failed
    sys.stderr.write("\\nPROBE " + json.dumps({"heavy": heavy, "loaded": loaded, "failed": failed}))
    sys.stderr.flush()

atexit.register(_report)
sys.argv = ["spurcli", *ARGS]
from spurcli.cli import main
main()
"""


def imported_by(
    args: Sequence[str], site: Path | None = None
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run ``spurcli ARGS`` in a fresh interpreter; the probe's report and the process."""
    import json

    code = f"HEAVY = {list(HEAVY_MODULES)!r}\nARGS = {list(args)!r}\n" + _IMPORT_PROBE
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=spurcli_env(site),
        capture_output=True,
        text=True,
        timeout=120,
    )
    marker = proc.stderr.rfind("PROBE ")
    assert marker >= 0, f"probe did not report: {proc.stderr}"
    return json.loads(proc.stderr[marker + len("PROBE ") :]), proc
