"""The numbers of a scored set per classifier, and how score tables print them: shared by the
folder layout (`spurcli.evaluate.score`) and the Spurious ImageNet layout
(`spurcli.evaluate.benchmark`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from spurcli.evaluate import metrics
from spurcli.evaluate.imagepass import PerImage, protocol_size
from spurcli.plugins import LoadedModel

log = logging.getLogger(__name__)

METRICS = (
    "spurious_rate",
    "top5_rate",
    "mean_target_prob",
    "median_target_prob",
    "roc_auc",
    "average_precision",
    "real_accuracy",
)


BOOTSTRAP = 1000  # default resamples of the bootstrap intervals


RANDOM_NOTE = "* random weights: these numbers describe an untrained model, not the classifier"


def classifier_metrics(
    spurious: PerImage,
    real: PerImage | None,
    c: int,
    k: int,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The seven numbers for classifier row ``c`` and target class ``k``, each followed
    by its 95% interval ``<metric>_ci``: Wilson for the rates, a percentile bootstrap of
    ``bootstrap`` seeded resamples for the others (None with 0; see docs/statistics.md)."""
    probs = spurious.target_prob[c]
    hits, top5 = spurious.top1[c] == k, spurious.target_rank[c] <= 5

    def resampled(samples: list[np.ndarray], statistic: Any) -> list[float] | None:
        return metrics.bootstrap_interval(samples, statistic, resamples=bootstrap, seed=seed)

    out: dict[str, Any] = {
        "spurious_rate": float(np.mean(hits)),
        "spurious_rate_ci": metrics.rate_interval(hits),
        "top5_rate": float(np.mean(top5)),
        "top5_rate_ci": metrics.rate_interval(top5),
        "mean_target_prob": float(np.mean(probs)),
        "mean_target_prob_ci": resampled([probs], np.mean),
        "median_target_prob": float(np.median(probs)),
        "median_target_prob_ci": resampled([probs], np.median),
        "roc_auc": None,
        "roc_auc_ci": None,
        "average_precision": None,
        "average_precision_ci": None,
        "real_accuracy": None,
        "real_accuracy_ci": None,
    }
    if real is not None:
        # Real and scored images resampled each within itself: a stratified bootstrap.
        samples = [real.target_prob[c], probs]
        out["roc_auc"] = metrics.roc_auc_of_sets(*samples)
        out["roc_auc_ci"] = resampled(samples, metrics.roc_auc_of_sets)
        out["average_precision"] = metrics.average_precision_of_sets(*samples)
        out["average_precision_ci"] = resampled(samples, metrics.average_precision_of_sets)
        out["real_accuracy"] = float(np.mean(real.top1[c] == k))
        out["real_accuracy_ci"] = metrics.rate_interval(real.top1[c] == k)
    return out


def uncertainty_json(bootstrap: int, seed: int) -> dict[str, Any]:
    """How the ``_ci`` intervals of a score JSON were made (and how to make them again)."""
    return {
        "confidence": metrics.CONFIDENCE,
        "rates": "Wilson score",
        "bootstrap": {
            "method": "percentile; real and scored images resampled independently",
            "resamples": bootstrap,
            "seed": seed,
        },
    }


def fmt_metric(value: float | None, ci: Sequence[float] | None = None, sep: str = " ") -> str:
    """``0.250``, or with its interval ``0.250 [0.102, 0.495]`` (``sep`` between them); ``-``
    for no value. In a rich table pass it through `plain`: brackets would be read as markup."""
    if value is None:
        return "-"
    return f"{value:.3f}" if ci is None else f"{value:.3f}{sep}[{ci[0]:.3f}, {ci[1]:.3f}]"


def plain(text: str) -> Any:
    """A rich Text that is never markup: "[0.102, 0.495]" and "[lo, hi]" show as they are."""
    from rich.text import Text

    return Text(text)


def add_columns(table: Any, numbers: Sequence[str]) -> None:
    # Narrow terminals fold cells and headers rather than cutting the metric names off.
    table.add_column("classifier", overflow="fold")
    table.add_column("weights", overflow="fold", max_width=48)
    for name in numbers:
        table.add_column(name, justify="right", overflow="fold", min_width=5)


class Rows:
    """The per-image output both results share: rows of the scored (not the real) images."""

    spurious: PerImage

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per scored image and classifier (the CSV rows), image-major."""
        return list(self.spurious.iter_rows())

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        self.spurious.write_csv(path)


def protocol_json(model: LoadedModel, preprocess: str) -> dict[str, Any]:
    """Under a scoring protocol, the side each classifier was fed at (timm's test size)."""
    size = protocol_size(model, preprocess)
    return {} if size is None else {"protocol_size": size}
