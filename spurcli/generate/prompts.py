"""Prompts: DreamBooth's ``[V]`` identifier, its templates, recontextualisation, prompt files.

fill_prompt("a photo of {identifier} {noun}", "sks", "flower")   # "a photo of sks flower"
with_recontext(["a photo of [V] flower"])      # + "... on the beach", "... on Mount Fuji", ...
without_identifier("a photo of [V] flower")    # "a photo of flower": the untuned baseline's
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from spurcli.errors import SpurcliError, UsageError

log = logging.getLogger(__name__)


IDENTIFIER = "[V]"  # stands for the fine-tuned run's identifier token in prompts


# DreamBooth's recontextualisation: the subject in places the references never showed.
RECONTEXT = ("on the beach", "on Mount Fuji", "in a garden", "in a market")


def read_prompts_file(path: str | os.PathLike[str]) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpurcliError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SpurcliError(f"prompts file {path} holds no prompt")
    return prompts


def with_recontext(prompts: Sequence[str]) -> list[str]:
    """The prompts followed by each one in the recontextualisation settings."""
    extra = [f"{p.rstrip(' .')} {place}" for p in prompts for place in RECONTEXT]
    return list(dict.fromkeys([*prompts, *extra]))  # keep order, drop repeats


def without_identifier(prompt: str) -> str:
    """The untuned baseline's prompt: "a photo of [V] flower" -> "a photo of flower"."""
    return re.sub(r"\s+", " ", prompt.replace(IDENTIFIER, " ")).strip()


def fill_identifier(prompts: Sequence[str], identifier: str | None, tuned: bool) -> list[str]:
    """Replace `[V]`; a tuned model prompted without it gets a warning (its token goes unused)."""
    out = []
    for prompt in prompts:
        if IDENTIFIER in prompt:
            if not identifier:
                raise UsageError(
                    f"prompt '{prompt}' uses {IDENTIFIER} but the model is not a spurcli finetune "
                    "run; pass --identifier TOKEN or remove [V]"
                )
            prompt = prompt.replace(IDENTIFIER, identifier)
        elif tuned and identifier and identifier not in prompt.split():
            log.warning(
                "prompt '%s' has no %s: the tuned token '%s' is not used",
                prompt,
                IDENTIFIER,
                identifier,
            )
        out.append(prompt)
    return out


def fill_prompt(template: str, identifier: str, noun: str | None) -> str:
    """``{identifier}`` and ``[V]`` become the identifier, ``{noun}`` the class noun."""
    text = template.replace("[V]", identifier).replace("{identifier}", identifier)
    return text.replace("{noun}", noun or "")
