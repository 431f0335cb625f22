"""The template plugin's networks: plain torch modules, imported only when a model is built.

from spurcli_template_models import build_classifier
model = build_classifier("random")
model(torch.rand(2, 3, 100, 150)).shape          # (2, 1000)
"""

from __future__ import annotations

import torch
from torch import nn

from spurcli.preprocess import Preprocess, Preprocessed, seeded
from spurcli.weights import is_random, load_state_dict


def preprocess() -> Preprocess:
    """What the network expects: 64x64 images, values as they are (mean 0, std 1). A real model
    puts the transform it was trained with here (timm: its data config)."""
    return Preprocess((64, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_mode="squash")


class ColourGrid(nn.Module):
    """(B, 3, H, W) -> (B, 192): the mean colour of each cell of an 8x8 grid."""

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


def build_net(weights: str | None) -> LinearClassifier:
    with seeded():  # the same "random" model in every process and run
        net = LinearClassifier()
    if not is_random(weights) and weights is not None:
        net.load_state_dict(load_state_dict(weights))
    return net.eval()


def build_classifier(weights: str | None) -> Preprocessed:
    return Preprocessed(preprocess(), build_net(weights)).eval()


def build_extractor(weights: str | None) -> Preprocessed:
    return Preprocessed(preprocess(), build_net(weights).features, dim=ColourGrid.dim).eval()
