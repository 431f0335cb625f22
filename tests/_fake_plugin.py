"""A deterministic in-code spurcli plugin for tests (used by the `fake_plugin` fixture).

    plugin = FakePlugin()
    spurcli.plugins.get_plugins().register(plugin, name=plugin.name)
    model = spurcli.plugins.classifiers().load("fake", weights="random")
    model.module(torch.ones(1, 3, 8, 8) * torch.tensor([1.0, 0, 0])[:, None, None])  # -> class 94

Classifier ``fake`` (alias ``fk``): "redness" r - (g + b) / 2 of the mean colour decides the class:
logit[target] = scale * redness, logit[other] = 0.5 - scale * redness, every other logit 0. So red
images are "hummingbirds" (94), grey/green/blue ones class 1 (goldfish). ``scale`` is a parameter
(20 by default) that a weights file can change, to test real loading. Family ``fake:<index>``
targets <index> instead of 94. Extractor ``fake``: 2x2 average-pooled colours, (B, 12),
``dim = 12``. Detector ``fake``: presence = the mean green channel (green images "show the
object"); every query it is called with is appended to ``plugin.queries``. Torch is imported
inside the factories only, like a real plugin must.
"""

from __future__ import annotations

import functools
from typing import Any

from spurcli import hookimpl
from spurcli.errors import UsageError

TARGET = 94  # hummingbird: a red feeder or flower is its spurious feature
OTHER = 1  # goldfish


@functools.cache
def _modules() -> tuple[type, type, type]:
    import torch
    from torch import nn

    class FakeClassifier(nn.Module):
        def __init__(self, target: int = TARGET, other: int = OTHER) -> None:
            super().__init__()
            self.target, self.other = target, other
            self.scale = nn.Parameter(torch.tensor(20.0))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            mean = images.float().mean(dim=(2, 3))  # (B, 3)
            redness = mean[:, 0] - (mean[:, 1] + mean[:, 2]) / 2
            logits = torch.zeros(images.shape[0], 1000, dtype=mean.dtype, device=images.device)
            logits[:, self.target] = self.scale * redness
            logits[:, self.other] = 0.5 - self.scale * redness
            return logits

    class FakeExtractor(nn.Module):
        dim = 12

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(1)

    class FakeDetector(nn.Module):
        def __init__(self, queries: list[Any]) -> None:
            super().__init__()
            self.queries = queries

        def forward(self, images: torch.Tensor, query: Any) -> torch.Tensor:
            self.queries.append(query)
            return images.float()[:, 1].mean(dim=(1, 2))

    return FakeClassifier, FakeExtractor, FakeDetector


class FakePlugin:
    """Plugin object (pluggy accepts any object with @hookimpl methods); see module docstring."""

    name = "fake-plugin"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, str | None]] = []  # (name, weights, variant)
        self.queries: list[Any] = []  # every ObjectQuery the fake detector was called with

    @hookimpl
    def register_classifiers(self, register: Any) -> None:
        register(
            "fake",
            self.make_classifier,
            aliases=("fk",),
            description="test classifier: red -> 94",
            default_weights="fake-default",
        )
        register("fake:*", self.make_family, description="test family: fake:<index>")

    @hookimpl
    def register_feature_extractors(self, register: Any) -> None:
        register("fake", self.make_extractor, description="test extractor: 2x2 colours")

    def make_classifier(self, weights: str | None, variant: str | None = None) -> Any:
        self.calls.append(("fake", weights, variant))
        classifier_cls, _, _ = _modules()
        target = TARGET
        if variant is not None:
            if not variant.isdigit() or int(variant) >= 1000:
                raise UsageError(f"fake:{variant}: the variant must be a class index 0-999")
            target = int(variant)
        model = classifier_cls(target=target)
        if weights not in (None, "random"):
            from spurcli.weights import load_state_dict

            model.load_state_dict(load_state_dict(weights))
        return model.eval()

    def make_family(self, weights: str | None, variant: str) -> Any:
        return self.make_classifier(weights, variant)

    def make_extractor(self, weights: str | None) -> Any:
        self.calls.append(("fake-extractor", weights, None))
        _, extractor_cls, _ = _modules()
        return extractor_cls().eval()

    @hookimpl
    def register_detectors(self, register: Any) -> None:
        register("fake", self.make_detector, description="test detector: green = object")

    def make_detector(self, weights: str | None) -> Any:
        self.calls.append(("fake-detector", weights, None))
        _, _, detector_cls = _modules()
        return detector_cls(self.queries).eval()
