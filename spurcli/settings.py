"""Settings of every command: dataclasses whose fields are declared once, with `option`,
filled from a TOML file, then ``--set key=value``, then command-line options (the command line
wins).

    from spurcli.config import FinetuneConfig, load_config, to_dict
    cfg = load_config(FinetuneConfig, "exp.toml", section="finetune",
                      sets=["lr=1e-5"], overrides={"steps": 10})
    cfg.instance_dir            # a Path, resolved relative to exp.toml
    cfg.check()                 # bounds and cross-field rules; one-line UsageErrors
    to_dict(cfg)                # JSON-ready (paths as strings), for spurcli-run.json

A field is declared as ``steps: int = option(800, "Optimizer steps.", min=1)``: the default,
the help and the bounds. From it come the command-line option and its ``--help`` default
(`spurcli.cli`), the TOML key (the field name), the bounds check (`check_fields`, called by
``check()``) and the tables of docs/settings.md (``python -m spurcli.cli.settings_doc --write-docs
docs/settings.md`` regenerates it; a test fails while it is out of date).

The file may hold the options at top level or in a ``[finetune]`` table (the ``section``), so one
experiment file serves ``spurcli finetune`` and ``spurcli run``. With the table present, the
table's keys must all be known and top-level keys are taken only where the config has a field of
that name (others belong to other commands); without it, every top-level key must be known.
Tables other than ``section`` are left to other commands.

Names are the CLI option names with ``_`` for ``-`` (``-`` is accepted too). Values are checked
against the field's type hint: ``str``, ``int``, ``float`` (an int is fine), ``bool``, ``Path``,
``list[str]`` (a single string becomes a one-element list), ``Literal[...]`` (choices), and unions
of those (``int | str``, ``X | None``; TOML has no null, so ``None`` only comes from defaults
and overrides). ``Path`` fields are resolved relative to the file they come from; ``str`` fields
declared with ``maybe_path=True`` (a hub id *or* a folder, ``random`` *or* a file) are resolved
only when the value looks like a path (starts with ``.``, ``/`` or ``~``) or exists there.
Unknown keys are a `UsageError` with "did you mean"; a wrong type is one line naming the file
and the key. ``overrides`` keys are field names; values of None mean "not given" and are skipped.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar

from spurcli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

MAYBE_PATH = {"path": "maybe"}  # field metadata: a name or a path; resolve it only if it is a path
NAMED_PATHS = {"path": "pairs"}  # field metadata: NAME=PATH items, PATH resolved like MAYBE_PATH


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    zero: str | None = None,
    above: float | None = None,
    below: float | None = None,
    required: bool = False,
    maybe_path: bool = False,
    flags: tuple[str, ...] = (),
    comma: bool = False,
    named_paths: bool = False,
) -> Any:
    """A config field declared once: its default, its help and its bounds. The command-line
    option (`spurcli.cli` builds it from the field), the ``--help`` default, the TOML key (the
    field name), the bounds check (`check_fields`) and docs/settings.md all derive from it.

    ``min``: the smallest value allowed; ``max``: the largest (every count and size has one that
    real use never meets, so a typo such as ``--steps 1000000000`` is an error before the work,
    not an out-of-memory kill hours later); ``zero``: what 0 means, for a ``min=0`` option whose
    error should say it ("0 (no bootstrap intervals) or more"); ``above``/``below``: exclusive
    bounds; ``None`` values
    (the "not set" of an optional field) are never out of bounds. ``required``: the check fails
    while the value is None or empty (a dataclass needs a default for every field after the
    first, and a config is built before all of its values are known). ``maybe_path``: a hub
    id *or* a folder, ``random`` *or* a file (see `MAYBE_PATH`). ``flags``: extra option names
    (``-o``) or, for a bool, the ``--on/--off`` pair when it is not ``--name/--no-name``.
    ``comma``: a list given on the command line as one comma-separated value (``-c resnet,vit``;
    ``''``: none) rather than by repeating the option.
    """
    metadata: dict[str, Any] = {
        "help": help,
        "min": min,
        "max": max,
        "zero": zero,
        "above": above,
        "below": below,
        "required": required,
        "flags": flags,
        "comma": comma,
    }
    if maybe_path:
        metadata.update(MAYBE_PATH)
    if named_paths:  # NAME=PATH items (--weights): a config file's PATH is relative to it
        metadata.update(NAMED_PATHS)
    if isinstance(default, list):  # a mutable default: each config gets its own copy
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def option_name(fld: dataclasses.Field[Any]) -> str:
    """The field's command-line name, as errors quote it: ``--output-dir`` for output_dir,
    ``--prompt`` for a field ``prompts`` declared with ``flags=("--prompt", "-p")``."""
    for flag in fld.metadata.get("flags", ()):
        if flag.startswith("--"):
            return flag.split("/")[0]
    return "--" + fld.name.replace("_", "-")


def option_flags(fld: dataclasses.Field[Any], hint: Any) -> list[str]:
    """The field's command-line flags: ``--name`` (a bool: ``--name/--no-name``), unless its
    declaration names the pair, then the declared extras (``-o``)."""
    flags = list(fld.metadata.get("flags", ()))
    if not any(f.startswith("--") for f in flags):
        flag = option_name(fld)
        flags.insert(0, f"{flag}/--no-{flag[2:]}" if hint is bool else flag)
    return flags


def check_fields(config: Any) -> None:
    """What `option` declared: finite numbers, required values, bounds; one-line errors.
    Runs first in each command's ``check``."""
    check_finite(config)
    fields = dataclasses.fields(config)
    for fld in fields:
        if fld.metadata.get("required") and getattr(config, fld.name) in (None, "", []):
            raise UsageError(f"{option_name(fld)} is required (or `{fld.name}` in the config)")
    for fld in fields:
        value = getattr(config, fld.name)
        if value is None or isinstance(value, (bool, str, list)):
            continue  # bounds are about numbers ("off" of an int | str field is not one)
        low, above, below = (fld.metadata.get(k) for k in ("min", "above", "below"))
        high = fld.metadata.get("max")
        if high is not None and value > high:
            raise UsageError(
                f"{option_name(fld)} must be at most {_number(high)}, not {_number(value)} (a "
                "limit no real use meets: a typo?)"
            )
        if low is not None and value < low:
            bound = "not be negative" if low == 0 else f"be at least {low}"
            if low == 0 and fld.metadata.get("zero"):
                bound = f"be 0 ({fld.metadata['zero']}) or more"
            raise UsageError(f"{option_name(fld)} must {bound}, not {value}")
        if above is not None and not value > above:
            bound = "be positive" if above == 0 else f"be above {above}"
            raise UsageError(f"{option_name(fld)} must {bound}, not {value}")
        if below is not None and not value < below:
            raise UsageError(f"{option_name(fld)} must be below {below}, not {value}")


def _number(value: float) -> str:
    """A bound or a value as an error shows it: 10000000, 1e+22, 0.5."""
    if isinstance(value, int) and abs(value) < 10**12:
        return str(value)
    return f"{value:g}"


def device_option() -> Any:
    """The device a command runs its models on (sample, score, compare, curate)."""
    return option(None, "cpu, cuda, cuda:1 (none: the process's GPU, else CPU).")


def check_finite(config: Any) -> None:
    """Every number of a config is finite: ``inf`` and ``nan`` (TOML and --set accept both, and
    Typer parses ``--lr inf``) pass every sign check (``nan < 0`` is false), then poison the
    weights or the images. Runs first in each command's ``check``."""
    for fld in dataclasses.fields(config):
        value = getattr(config, fld.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise UsageError(
                    f"--{fld.name.replace('_', '-')} must be a finite number, not {item}"
                )


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    *,
    section: str | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    tables: Sequence[str] | None = None,
) -> T:
    """``cls`` filled from defaults < the TOML file < ``sets`` ("key=value") < ``overrides``.

    ``tables``: the tables the file may have (a misspelled ``[finetun]`` is an error, not a
    table silently left to another command); None: any.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path)
        for name in [k for k, v in data.items() if isinstance(v, dict)]:
            if tables is not None and name not in tables:
                close = difflib.get_close_matches(name, list(tables), n=1)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                raise UsageError(
                    f"{path}: unknown table [{name}]{hint} (tables: "
                    + ", ".join(f"[{t}]" for t in tables)
                    + ")"
                )
        where = f"{path} [{section}]" if section and isinstance(data.get(section), dict) else path
        for key, value in _select(data, section, fields, path).items():
            name = _field_name(key, fields, where)
            values[name] = _coerce(value, hints[name], fields[name], f"{where}: {key}", path.parent)
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set needs key=value, not '{item}'")
        name = _field_name(key.strip(), fields, "--set")
        values[name] = _parse_set(text.strip(), hints[name], fields[name], f"--set {key.strip()}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = _field_name(key, fields, "options")
        values[name] = _coerce(value, hints[name], fields[name], f"--{name.replace('_', '-')}")
    return cls(**values)


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file, or a one-line error naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a folder") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths as strings)."""
    return {
        k: (os.fspath(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(config).items()
    }


def _select(
    data: dict[str, Any], section: str | None, fields: dict[str, Any], path: Path
) -> dict[str, Any]:
    table = data.get(section) if section else None
    if table is None:
        return {k: v for k, v in data.items() if not isinstance(v, dict)}
    if not isinstance(table, dict):
        raise UsageError(f"{path}: '{section}' must be a table ([{section}])")
    shared = {
        k: v for k, v in data.items() if not isinstance(v, dict) and k.replace("-", "_") in fields
    }
    return {**shared, **table}  # the section's own values win over shared top-level ones


def _field_name(key: str, fields: dict[str, Any], where: Any) -> str:
    name = key.replace("-", "_")
    if name in fields:
        return name
    close = difflib.get_close_matches(name, list(fields), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"{where}: unknown option '{key}'{hint}")


def _parse_set(text: str, hint: Any, fld: Any, where: str) -> Any:
    """A ``--set`` value: TOML syntax (1e-5, true, ["a", "b"]) or, for text fields, bare text;
    ``none`` unsets an option whose default may be none (TOML has no null, and a config file's
    value could not be taken back otherwise)."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if text.lower() == "none" and optional and type(None) in typing.get_args(hint):
        return None
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # bare text such as --set model=runs/a
    try:
        return _coerce(value, hint, fld, where, Path.cwd())
    except UsageError:
        if isinstance(value, str):
            raise
        return _coerce(text, hint, fld, where, Path.cwd())  # e.g. --set identifier=123


def _coerce(value: Any, hint: Any, fld: Any, where: str, base: Path | None = None) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, fld, where, base)
            except UsageError:
                continue
        raise UsageError(f"{where}: expected {describe_type(hint)}, got {_show(value)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint_text = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(
            f"{where} must be one of {', '.join(map(str, choices))}, not {value!r}{hint_text}"
        )
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"{where}: expected {describe_type(hint)}, got {_show(value)}")
        return [_coerce(v, item, fld, where, base) for v in items]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, (str, os.PathLike)),
    }.get(hint)
    if ok is None:
        raise TypeError(f"config field type {hint!r} is not supported")  # a bug in a config class
    if not ok:
        raise UsageError(f"{where}: expected {describe_type(hint)}, got {_show(value)}")
    if hint is float:
        return float(value)
    if hint is Path:
        return _resolve(Path(value), base)
    if hint is str and base is not None and fld.metadata.get("path") == "maybe":
        return _maybe_resolve(value, base)
    if hint is str and base is not None and fld.metadata.get("path") == "pairs":
        name, sep, target = value.partition("=")
        if sep and target.strip():  # NAME=PATH: relative to the config file, as other paths
            return f"{name}={_maybe_resolve(target.strip(), base)}"
    return value


def _resolve(path: Path, base: Path | None) -> Path:
    path = path.expanduser()
    return path if base is None or path.is_absolute() else base / path


def _maybe_resolve(text: str, base: Path) -> str:
    if text.startswith((".", "/", "~")) or (base / text).exists():
        return os.fspath(_resolve(Path(text), base))
    return text


def describe_type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return " or ".join(map(str, typing.get_args(hint)))
    if origin is list:
        return "a list of " + describe_type(typing.get_args(hint)[0]) + "s"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "text", Path: "a path"}
    return names.get(hint, str(hint))


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
