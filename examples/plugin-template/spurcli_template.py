"""A minimal spurcli plugin: one classifier and one feature extractor.

    pip install -e examples/plugin-template
    spurcli plugins                                   # shows spurcli-plugin-template
    spurcli score my_images/ --target hummingbird --classifiers template-linear \
        --weights template-linear=random

The model is deliberately tiny (mean colour of an 8x8 grid -> linear -> 1000 logits) so that the
file shows the contract rather than a network: images in [0, 1], any size, in; ImageNet-1k logits
out; resizing done inside the module; heavy imports inside the factory.
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


def _build():
    import torch
    from torch import nn

    class ColourGrid(nn.Module):
        dim = 3 * 8 * 8

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)

    class LinearClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = ColourGrid()
            self.head = nn.Linear(ColourGrid.dim, 1000)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(images))

    return LinearClassifier()


def make_classifier(weights):
    # weights: None (our default: here random, as no trained file exists), "random", or a path.
    import torch

    torch.manual_seed(0)  # the same "random" model in every process and run
    model = _build()
    if weights not in (None, "random"):
        from spurcli.weights import load_state_dict

        model.load_state_dict(load_state_dict(weights))
    return model.eval()


def make_extractor(weights):
    extractor = make_classifier(weights).features
    return extractor.eval()
