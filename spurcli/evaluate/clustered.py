"""Rates pooled over replicated training runs: the training run is the unit of inference.

    from spurcli.evaluate.clustered import cluster_rate, cluster_difference, holm
    runs = [np.array([1, 0, 1, 1]), np.array([0, 0, 1, 0]), np.array([1, 1, 1, 0])]  # hits per run
    cluster_rate(runs, resamples=2000, seed=0)
    # {"rate": 0.583, "ci": [0.25, 0.92], "runs": 3, "n": 12, "interval": "two-stage cluster ..."}
    cluster_difference(runs_a, runs_b, paired=True, resamples=2000, seed=0)
    # {"delta": 0.25, "delta_ci": [...], "p_value": 0.31, "test": "two-stage cluster bootstrap"}
    holm({"a-vs-b": 0.01, "a-vs-c": 0.04})   # {"a-vs-b": 0.02, "a-vs-c": 0.04} (statsmodels)

Why: images sampled from one fine-tuned model share that model's draw of training noise (its
seed, its reference split), so they are not independent observations of the *method*. Pooling
every image of every run and using a binomial interval would treat 3 runs x 24 images as 72
independent draws; the interval would cover sampling noise around three fixed checkpoints only.

The two-stage (hierarchical) bootstrap resamples what varies in the experiment, in its order:
first the training runs (with replacement), then the images within each drawn run (with
replacement; a run drawn twice is resampled twice, independently). Paired sets (image i of A and
of B share a seed and a prompt within a run) are resampled as pairs, so the difference keeps its
pairing. The interval is the percentile interval of the pooled statistic; the p-value of a
difference is twice the smaller share of bootstrap differences on either side of 0, counted as
(1 + r) / (B + 1) so that B resamples never claim a p below 2 / (B + 1), capped at 1: the usual
bootstrap test of "no difference". With few runs the interval is wide, and must be:
three training runs say little about a fourth (docs/statistics.md).

Holm's step-down correction of the secondary tests is statsmodels' (`multipletests`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from spurcli.evaluate.metrics import CONFIDENCE

INTERVAL = (
    "95% percentile interval of a two-stage cluster bootstrap (training runs, then images "
    "within each run)"
)


def _resampled_sums(
    runs: Sequence[np.ndarray], resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(sums, sizes), each ``(resamples, len(runs))``: slot j of draw b holds a run drawn at
    random, its values resampled with replacement; the pooled statistic is sums / sizes."""
    k = len(runs)
    chosen = rng.integers(0, k, size=(resamples, k))
    sums = np.zeros((resamples, k))
    sizes = np.zeros((resamples, k))
    for r, values in enumerate(runs):
        values = np.asarray(values, dtype=float)
        where = chosen == r
        count = int(where.sum())
        if count == 0 or values.size == 0:
            continue
        picks = rng.integers(0, values.size, size=(count, values.size))
        sums[where] = values[picks].sum(axis=1)
        sizes[where] = values.size
    return sums, sizes


def _percentile(draws: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(draws, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _pooled(runs: Sequence[np.ndarray]) -> float:
    n = sum(len(r) for r in runs)
    return float(sum(np.sum(r) for r in runs) / n) if n else float("nan")


def cluster_rate(
    runs: Sequence[np.ndarray], resamples: int, seed: int, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """The pooled rate of per-image hits over runs, with its cluster bootstrap interval."""
    rng = np.random.default_rng(seed)
    sums, sizes = _resampled_sums(runs, resamples, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = sums.sum(axis=1) / sizes.sum(axis=1)
    return {
        "rate": _pooled(runs),
        "ci": _percentile(draws, confidence) if resamples else None,
        "runs": len(runs),
        "n": int(sum(len(r) for r in runs)),
        "per_run": [float(np.mean(r)) if len(r) else None for r in runs],
        "interval": INTERVAL,
    }


def cluster_difference(
    runs_a: Sequence[np.ndarray],
    runs_b: Sequence[np.ndarray],
    *,
    paired: bool,
    resamples: int,
    seed: int,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Pooled rate of A minus pooled rate of B, over the same training runs (run r of A and run r
    of B share the seed and the reference split, so runs are drawn together). ``paired``: image
    i of A pairs with image i of B within each run (equal lengths), and pairs are resampled
    together; otherwise each set's images are resampled on their own."""
    if len(runs_a) != len(runs_b):
        raise ValueError(f"{len(runs_a)} runs of A but {len(runs_b)} of B")
    rng = np.random.default_rng(seed)
    k = len(runs_a)
    chosen = rng.integers(0, k, size=(resamples, k))
    sum_a = np.zeros((resamples, k))
    sum_b = np.zeros((resamples, k))
    n_a = np.zeros((resamples, k))
    n_b = np.zeros((resamples, k))
    for r, (a, b) in enumerate(zip(runs_a, runs_b, strict=True)):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        where = chosen == r
        count = int(where.sum())
        if count == 0:
            continue
        if paired:
            if a.size != b.size:
                raise ValueError(f"run {r}: {a.size} images in A but {b.size} in B, not paired")
            picks = rng.integers(0, a.size, size=(count, a.size))
            picks_b = picks
        else:
            picks = rng.integers(0, a.size, size=(count, a.size))
            picks_b = rng.integers(0, b.size, size=(count, b.size))
        sum_a[where], n_a[where] = a[picks].sum(axis=1), a.size
        sum_b[where], n_b[where] = b[picks_b].sum(axis=1), b.size
    with np.errstate(invalid="ignore", divide="ignore"):
        diff_draws = sum_a.sum(axis=1) / n_a.sum(axis=1) - sum_b.sum(axis=1) / n_b.sum(axis=1)
    delta = _pooled(runs_a) - _pooled(runs_b)
    if resamples:
        # (1 + r) / (B + 1): B resamples cannot show a p below about 1/B (Davison & Hinkley
        # 1997, eq. 4.11), so a difference no resample crosses is p = 2 / (B + 1), not 0.
        below, above = np.sum(diff_draws <= 0), np.sum(diff_draws >= 0)
        p_value = float(min(1.0, 2 * (1 + min(below, above)) / (resamples + 1)))
        ci = _percentile(diff_draws, confidence)
    else:
        p_value, ci = None, None
    return {
        "delta": float(delta),
        "delta_ci": ci,
        "p_value": p_value,
        "test": "two-stage cluster bootstrap" + (" (paired)" if paired else ""),
        "interval": INTERVAL,
        "runs": k,
        "resamples": resamples,
        "per_run": [
            float(np.mean(a) - np.mean(b)) if len(a) and len(b) else None
            for a, b in zip(runs_a, runs_b, strict=True)
        ],
    }


def holm(p_values: dict[Hashable, float | None]) -> dict[Hashable, float | None]:
    """Holm-adjusted p-values of a family of tests (statsmodels' `multipletests`); a test
    without a p-value stays without one and does not count in the family."""
    from statsmodels.stats.multitest import multipletests

    named = [(name, p) for name, p in p_values.items() if p is not None]
    adjusted: dict[Hashable, float | None] = dict.fromkeys(p_values)
    if named:
        _, corrected, _, _ = multipletests([p for _, p in named], method="holm")
        adjusted.update({name: float(p) for (name, _), p in zip(named, corrected, strict=True)})
    return adjusted
