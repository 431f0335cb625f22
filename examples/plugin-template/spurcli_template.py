"""A minimal spurcli plugin: one classifier and one feature extractor.

    pip install -e examples/plugin-template
    spurcli plugins                                   # shows spurcli-plugin-template
    spurcli score my_images/ --target hummingbird --classifiers template-linear \
        --weights template-linear=random

The model is deliberately tiny (mean colour of an 8x8 grid -> linear -> 1000 logits) so that the
files show the contract rather than a network: images in [0, 1], any size, in; ImageNet-1k logits
out; resizing and normalisation done inside the module (`spurcli.preprocess.Preprocessed`).

Two files, because registration must not import torch (`spurcli plugins` lists every plugin
without loading a model): this one registers names and factories; the factories import the
model classes from `spurcli_template_models` only when a model is asked for.
"""

from __future__ import annotations

from spurcli import hookimpl


@hookimpl
def register_classifiers(register):
    register(
        "template-linear",
        make_classifier,
        aliases=("tl",),
        description="example plugin: linear classifier on an 8x8 colour grid",
        default_weights="random (this example ships no trained weights)",
    )


@hookimpl
def register_feature_extractors(register):
    register("template-linear", make_extractor, description="example plugin: 8x8 colour grid")


def make_classifier(weights):
    # weights: None (our default: here random, as no trained file exists), "random", or a path.
    from spurcli_template_models import build_classifier

    return build_classifier(weights)


def make_extractor(weights):
    from spurcli_template_models import build_extractor

    return build_extractor(weights)
