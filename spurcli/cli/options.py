"""Command-line options made from a config class: each setting is declared once, on its field.

    @app.command("score")
    @settings_options(ScoreConfig)
    def score_command(images_dir: Path, config: ConfigFile = None, sets: Sets = None, *,
                      given: dict[str, Any]) -> None:
        cfg = load_settings(ScoreConfig, config, "score", sets, given)

`settings_options` adds one option per field of the config class to the command's signature
(flags, help, bounds and the default shown by ``--help`` all from the field's
`spurcli.settings.option` declaration) and hands the command ``given``: the options typed on the
command line, the overrides of `spurcli.settings.load_config`. An option left out keeps the
file's value, even where the file differs from the default; an option typed with its default
value still wins over the file. Fields of the image-pass block (`spurcli.evaluate.config.
ImagePass`) are shown in their own ``--help`` panel.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from spurcli.evaluate.config import IMAGE_PASS_FIELDS, ImagePass
from spurcli.settings import load_config, option_flags

F = TypeVar("F", bound=Callable[..., Any])

IMAGE_PASS_PANEL = "image pass (how images reach the models)"

# The options every command with settings has besides its fields, declared once.
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML file: options in this command's table; options given here win."
    ),
]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="key=value for any setting of this command (repeatable)."),
]


def settings_options(
    cls: type, *, skip: Sequence[str] = (), panel: str | None = None
) -> Callable[[F], F]:
    """Add an option for every field of ``cls`` (but ``skip``) to the decorated command, which
    then receives ``given`` (keyword): the typed ones, comma-separated lists split."""
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    hints = typing.get_type_hints(cls)
    shared = cls is not ImagePass and issubclass(cls, ImagePass)

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "given"]
        ctx_name = next((p.name for p in own if p.annotation is typer.Context), None)
        added = []
        if ctx_name is None:
            ctx_name = "_settings_ctx"
            added.append(
                inspect.Parameter(
                    ctx_name, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
                )
            )
        for fld in fields:
            where = IMAGE_PASS_PANEL if shared and fld.name in IMAGE_PASS_FIELDS else panel
            added.append(
                inspect.Parameter(
                    fld.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=_option(fld, hints[fld.name], where),
                    annotation=_cli_type(fld, hints[fld.name]),
                )
            )

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs[ctx_name]
            if ctx_name == "_settings_ctx":
                del kwargs[ctx_name]
            values = {f.name: kwargs.pop(f.name) for f in fields}
            given = {}
            for fld in fields:
                if typed(ctx, fld.name):
                    value = values[fld.name]
                    comma = fld.metadata.get("comma") and isinstance(value, str)
                    given[fld.name] = split_names(value) if comma else value
            return command(*args, given=given, **kwargs)

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*_positional_first(own), *added]
        )
        return typing.cast(F, wrapper)

    return decorate


def load_settings(
    cls: type,
    config: str | os.PathLike[str] | None,
    section: str,
    sets: Sequence[str] | None,
    given: dict[str, Any],
    tables: Sequence[str] | None = None,
) -> Any:
    """The command's settings: defaults < the --config file's ``[section]`` < --set < options."""
    return load_config(
        cls, config, section=section, sets=sets or (), overrides=given, tables=tables
    )


def typed(ctx: typer.Context, name: str) -> bool:
    """Option ``name`` was typed on the command line (or set by the environment)."""
    # By name: Typer >= 0.17 carries its own copy of click, whose ParameterSource is not
    # click's class.
    source = getattr(ctx.get_parameter_source(name), "name", None)
    return source in ("COMMANDLINE", "ENVIRONMENT")


def split_names(text: str) -> list[str]:
    """``"resnet, vit,"`` -> ``["resnet", "vit"]``: a comma-separated option."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _option(fld: dataclasses.Field[Any], hint: Any, panel: str | None) -> Any:
    """The typer.Option of a field. Its default is the real one (``--help`` shows it); `typed`
    tells a value typed on the command line from a default, so a TOML file still wins over
    every option not typed."""
    meta = fld.metadata
    default = None if fld.default is dataclasses.MISSING else fld.default
    if meta.get("comma"):  # one comma-separated value; its default as the user would type it
        default = ",".join(fld.default_factory()) or None  # type: ignore[misc]
    text = meta.get("help", "") + (" Required." if meta.get("required") else "")
    flags = option_flags(fld, hint)
    return typer.Option(default, *flags, help=text, rich_help_panel=panel, show_default=True)


def _cli_type(fld: dataclasses.Field[Any], hint: Any) -> Any:
    """What click parses; `spurcli.settings.load_config` then checks and converts it as it
    does a TOML value (choices, unions, paths relative to nothing)."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        hint = members[0] if len(members) == 1 else str  # int | str: as typed
    if typing.get_origin(hint) is Literal:
        hint = str
    if typing.get_origin(hint) is list:
        # A comma-separated value, or a repeatable option whose "none typed" is None, not [].
        return str | None if fld.metadata.get("comma") else list[str] | None
    return hint | None if optional and hint is not bool else hint


def _positional_first(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """The command's own parameters, keyword-only ones after the positional ones (a signature
    may not put a positional parameter after a keyword-only one)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in kinds] + [p for p in params if p.kind not in kinds]
