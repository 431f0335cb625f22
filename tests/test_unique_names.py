"""Each top-level function and class of the core package has one name in the whole package.

Two `load_checkpoint`s or two `generate`s that do different things make a grep, a traceback
and a code review ambiguous. (Plugins are separate distributions that follow the template's
names on purpose: `make_classifier`, the `register_*` hooks.)
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import spurcli

PACKAGE = Path(spurcli.__file__).parent


def test_top_level_names_are_unique_across_the_package():
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                where[node.name].append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    duplicated = {name: places for name, places in where.items() if len(places) > 1}
    assert not duplicated, duplicated
