"""The plugin API: four hooks, in the style of simonw/llm.

A plugin is a module registered under the entry-point group ``spurcli``:

    # pyproject.toml of your distribution
    [project.entry-points.spurcli]
    mycls = "spurcli_mycls"

    # spurcli_mycls.py
    from spurcli import hookimpl

    @hookimpl
    def register_classifiers(register):
        register("mycls", make_mycls, aliases=("mc",), description="what it is")

    def make_mycls(weights):  # None (plugin default), a local path, or "random"
        import torch          # import heavy libraries inside the factory: registration stays cheap
        return MyModule()     # (B,3,H,W) floats in [0,1] -> (B,1000) ImageNet-1k logits

Factories run only when a model is used, so `spurcli --help` and `spurcli plugins` import no torch.
The module this file lives in must stay import-light for the same reason.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "spurcli"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_classifiers(register: Any) -> None:
    """Register image classifiers.

    Call ``register(name, factory, *, aliases=(), description="", default_weights=None)``.
    ``factory(weights)`` returns a ``torch.nn.Module`` mapping float images in [0, 1] of shape
    (B, 3, H, W), any H and W, to logits over the 1000 ImageNet-1k classes; it does its own
    resizing and normalisation. A name ending in ``:*`` (``"timm:*"``) registers an open family:
    ``factory(weights, variant)`` then receives the part after the colon (``"timm:resnet18"`` ->
    ``"resnet18"``). ``default_weights`` names the source used when ``weights`` is None (shown in
    listings and results).
    """


@hookspec
def register_feature_extractors(register: Any) -> None:
    """Register feature extractors: same call shape as classifiers.

    The module maps images in [0, 1] of shape (B, 3, H, W) to features (B, D) (the penultimate,
    pre-logits features for a classifier backbone) and has an int attribute ``dim`` = D.
    """


@hookspec
def register_detectors(register: Any) -> None:
    """Register object-presence detectors (`spurcli curate`): same call shape as classifiers.

    The module is called as ``module(images, query)``: images in [0, 1] of shape (B, 3, H, W),
    any H and W (it does its own resizing), and a `spurcli.evaluate.detect.ObjectQuery` naming the
    class
    object (``query.names``: the class's ImageNet name, synonyms and any ``--object-prompt``;
    ``query.feature``: the spurious feature's text, or None). It returns a (B,) tensor of
    presence scores in [0, 1]: near 1 the object is in the image, 0.5 undecided.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Add sub-commands to the Typer ``app`` of the ``spurcli`` command."""
