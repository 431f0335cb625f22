"""docs/settings.md, made from the config classes' declarations.

python -m spurcli.cli.settings_doc --write-docs docs/settings.md    # a test checks it is current
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spurcli.evaluate.config import (
    IMAGE_PASS_FIELDS,
    CompareConfig,
    CurateConfig,
    ImagePass,
    ScoreConfig,
)
from spurcli.experiment.config import ExperimentConfig
from spurcli.generate.config import FinetuneConfig, SampleConfig
from spurcli.settings import describe_type, option_flags

# The config classes docs/settings.md documents, in its order: (class, TOML table, command).
# The config classes docs/settings.md documents, in its order: (class, TOML table, command).
DOCUMENTED: tuple[tuple[type, str, str], ...] = (
    (FinetuneConfig, "finetune", "spurcli finetune"),
    (SampleConfig, "sample", "spurcli sample"),
    (ScoreConfig, "score", "spurcli score"),
    (CompareConfig, "compare", "spurcli compare"),
    (CurateConfig, "curate", "spurcli curate"),
    (ImagePass, "", "score, compare and curate"),
    (ExperimentConfig, "", "spurcli run"),
)


def settings_markdown() -> str:
    """docs/settings.md: one table per config class, made from the fields' declarations."""
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated from the config classes (spurcli/*/config.py); do not edit. Regenerate",
        "     with: python -m spurcli.cli.settings_doc --write-docs docs/settings.md -->",
        "",
        "Every setting is a key of the command's TOML table (its name, `-` or `_`), a",
        "`--set key=value`, and a command-line option; the command line wins over `--set`,",
        "which wins over the file.",
    ]
    for cls, table, command in DOCUMENTED:
        lines += ["", f"## {_heading(cls, table)}: {command}", ""]
        lines += [" ".join((cls.__doc__ or "").split()), ""]
        shared = cls is not ImagePass and issubclass(cls, ImagePass)
        if shared:
            lines += ["Plus the [image-pass settings](#image-pass-score-compare-and-curate).", ""]
        lines += _table(cls, table, skip=IMAGE_PASS_FIELDS if shared else ())
    return "\n".join(lines) + "\n"


def _heading(cls: type, table: str) -> str:
    if cls is ImagePass:
        return "Image pass"
    return f"`[{table}]`" if table else "Top level of a run config"


def _table(cls: type, table: str, skip: Sequence[str]) -> list[str]:
    hints = typing.get_type_hints(cls)
    lines = ["| key | option | type | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for fld in dataclasses.fields(cls):
        if fld.name in skip:
            continue
        meaning = fld.metadata.get("help", "") + _bounds_text(fld)
        flags = ", ".join(f"`{f}`" for f in option_flags(fld, hints[fld.name]))
        if cls is ExperimentConfig:  # `spurcli run` takes the top-level keys from the file or --set
            flags = f"`--set {fld.name}=...`"
        cells = (
            f"`{fld.name}`",
            flags,
            describe_type(hints[fld.name]),
            _default_text(fld),
            meaning,
        )
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _default_text(fld: dataclasses.Field[Any]) -> str:
    if fld.metadata.get("required"):
        return "required"
    factory = fld.default_factory
    value = fld.default if factory is dataclasses.MISSING else factory()
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as TOML spells it
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"  # TOML's list syntax
    return f"`{value}`"


def _bounds_text(fld: dataclasses.Field[Any]) -> str:
    parts = []
    if fld.metadata.get("min") is not None:
        parts.append(f">= {fld.metadata['min']}")
    if fld.metadata.get("max") is not None:
        parts.append(f"<= {fld.metadata['max']}")
    if fld.metadata.get("above") is not None:
        parts.append(f"> {fld.metadata['above']}")
    if fld.metadata.get("below") is not None:
        parts.append(f"< {fld.metadata['below']}")
    return f" ({', '.join(parts)})" if parts else ""


def settings_docs_main(argv: Sequence[str] | None = None) -> None:
    """``python -m spurcli.cli.settings_doc --write-docs FILE`` (without it: to stdout)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m spurcli.cli.settings_doc", description=settings_docs_main.__doc__
    )
    parser.add_argument("--write-docs", metavar="FILE", help="write the settings reference here")
    args = parser.parse_args(argv)
    if args.write_docs:
        Path(args.write_docs).write_text(settings_markdown(), encoding="utf-8")
    else:
        sys.stdout.write(settings_markdown())


if __name__ == "__main__":
    settings_docs_main()
