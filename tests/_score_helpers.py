"""A test plugin whose logits are a known function of the image, and image-writing helpers.

Classifier ``det-r`` (``det-g``, ``det-b``) reads the mean of the red (green, blue) channel of a
solid-colour image as an 8-bit value u and returns logits z_j = -|j - u| / 2: class u is top-1,
and the rank and softmax probability of any class follow from u alone. So every metric of
`spurcli score` has a value the tests can work out by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spurcli import hookimpl

FACTORY_CALLS: list[str] = []  # names built by the factories (to check models load once)
MODES: list[bool] = []  # torch.is_inference_mode_enabled() at each forward of a det-* model


class ChannelClassifier(torch.nn.Module):
    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        MODES.append(torch.is_inference_mode_enabled())
        u = (images[:, self.channel].mean(dim=(1, 2)) * 255).round()
        classes = torch.arange(1000, dtype=images.dtype, device=images.device)
        return -(classes[None, :] - u[:, None]).abs() / 2


class WrongShape(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 10)


class NotFinite(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(images), 1000)
        out[0, 3] = float("nan")
        return out


class InPlace(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images.sub_(0.5)  # the bug the scorer must catch: later classifiers would see this
        return torch.zeros(len(images), 1000)


class Tuple(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.zeros(len(images), 1000),)


def _factory(name, module_fn):
    def factory(weights):
        FACTORY_CALLS.append(name)
        return module_fn().eval()

    return factory


class ScoreTestPlugin:
    """Registered in code by the tests (``get_plugins().register(ScoreTestPlugin(), ...)``)."""

    @hookimpl
    def register_classifiers(self, register):
        for channel, name in enumerate(("det-r", "det-g", "det-b")):
            register(
                name,
                _factory(name, lambda c=channel: ChannelClassifier(c)),
                default_weights="deterministic",
            )
        register("bad-shape", _factory("bad-shape", WrongShape))
        register("bad-nan", _factory("bad-nan", NotFinite))
        register("bad-inplace", _factory("bad-inplace", InPlace))
        register("bad-tuple", _factory("bad-tuple", Tuple))


def write_solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


def expected_prob(u: int, k: int) -> float:
    """p_k of the channel classifier for an image whose channel value is u (plain numpy)."""
    z = -np.abs(np.arange(1000) - u) / 2
    return float(np.exp(z[k]) / np.exp(z).sum())
