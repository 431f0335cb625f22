"""The numbers `score` and `compare` report, and their uncertainty (numpy + scipy.stats).

    import numpy as np
    from spurcli.evaluate.metrics import average_precision, consensus, joint_ranking_scores, roc_auc

    y_true = np.array([1, 1, 0, 0, 0])               # 1: real image of the class, 0: spurious image
    p_k = np.array([0.9, 0.4, 0.4, 0.2, 0.1])        # softmax probability of the target class
    roc_auc(y_true, p_k)             # 0.9166...: ties between a positive and a negative count 1/2
    average_precision(y_true, p_k)   # 0.8333...: sum over thresholds of (R_n - R_n-1) * P_n
    consensus(np.array([[1, 0, 1], [1, 1, 0]], bool))  # all/any fractions and the histogram

    # Spurious ImageNet's pooled score: every class's real (positive) and spurious (negative)
    # images in one set, each image scored by the probability of its own class
    joint_ranking_scores({0: [0.9, 0.6], 2: [0.3]}, {0: [0.5], 2: [0.4, 0.1]})
    # {'joint_roc_auc': 0.777..., 'joint_average_precision': 0.866...}

Both ranking metrics follow scikit-learn's definitions exactly, ties included, so numbers agree
with `sklearn.metrics.roc_auc_score` / `average_precision_score` (and hence with the released
Spurious ImageNet code, which calls the latter); `tests/test_metrics.py` checks this on random
data with many ties.

Uncertainty (every method, its reference and the pairing rule: docs/statistics.md):

    from spurcli.evaluate.metrics import wilson_interval, bootstrap_interval, rate_difference
    wilson_interval(5, 20)                      # [0.1119, 0.4687]: 95% Wilson score interval
    bootstrap_interval([real_p, scored_p], roc_auc_of_sets, resamples=1000, seed=0)
                                                # seeded percentile interval, samples resampled
                                                # independently (stratified); None if too few
    rate_difference(hits_a, hits_b, paired=True)
    # {"delta": rate_a - rate_b, "delta_ci": [lo, hi], "p_value": .., "test": "McNemar exact",
    #  "interval": "Newcombe hybrid score, paired", "n_a": .., "n_b": ..}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _check_binary(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_score has {y_score.size}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 (negative) and 1 (positive)")
    y_true = y_true.astype(bool)
    if y_true.all() or not y_true.any():
        raise ValueError("needs at least one positive and one negative sample")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values")
    return y_true, y_score


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks in ascending order, tied values sharing the mean of their ranks."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # A tie group [start, end) gets rank (start + 1 + end) / 2, the mean of start+1 .. end.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve (positives should score higher).

    Equals the probability that a random positive scores above a random negative, a tie counting
    1/2 (the Mann-Whitney U statistic / (P N)); this is what scikit-learn's trapezoidal area over
    the curve with one point per distinct score computes.
    """
    y_true, y_score = _check_binary(y_true, y_score)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    rank_sum = midranks(y_score)[y_true].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (scikit-learn's definition).

    Thresholds are the distinct scores, highest first; samples with the same score enter together
    (no interpolation of precision, unlike the trapezoidal area under the PR curve).
    """
    y_true, y_score = _check_binary(y_true, y_score)
    order = np.argsort(-y_score, kind="mergesort")
    scores, hits = y_score[order], y_true[order]
    # The last index of each run of equal scores: where a threshold admits the whole tie group.
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    true_pos = np.cumsum(hits)[last]
    precision = true_pos / (last + 1)
    recall_step = np.diff(np.r_[0, true_pos]) / true_pos[-1]
    return float(np.sum(recall_step * precision))


@dataclass(frozen=True)
class Consensus:
    """How many classifiers put each image in the target class."""

    all: float  # fraction of images every classifier puts in the class ("consistently spurious")
    any: float  # fraction of images at least one classifier puts in the class
    histogram: list[int]  # histogram[c]: number of images put in the class by exactly c classifiers
    all_ci: list[float] | None = None  # 95% Wilson score intervals of `all` and `any`
    any_ci: list[float] | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "all": self.all,
            "all_ci": self.all_ci,
            "any": self.any,
            "any_ci": self.any_ci,
            "histogram": list(self.histogram),
        }


def consensus_hits(hits: np.ndarray) -> dict[str, np.ndarray]:
    """``hits[c, i]`` (see `consensus`) -> per image: ``{"all": .., "any": ..}`` booleans."""
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2 or hits.shape[0] == 0 or hits.shape[1] == 0:
        raise ValueError(f"hits must be (classifiers, images) with both > 0, got {hits.shape}")
    return {"all": hits.all(axis=0), "any": hits.any(axis=0)}


def consensus(hits: np.ndarray) -> Consensus:
    """``hits[c, i]``: classifier c's top-1 for image i is the target class."""
    per_image = consensus_hits(hits)
    count = np.asarray(hits, dtype=bool).sum(axis=0)
    n = len(hits)
    histogram = np.bincount(count, minlength=n + 1)
    return Consensus(
        all=float(np.mean(per_image["all"])),
        any=float(np.mean(per_image["any"])),
        histogram=[int(h) for h in histogram],
        all_ci=rate_interval(per_image["all"]),
        any_ci=rate_interval(per_image["any"]),
    )


def target_rank(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of ``target[i]`` in row i of ``logits``, highest first.

    Ties are broken by the lower class index, the same rule as argmax, so rank 1 <=> top-1.
    """
    logits = np.asarray(logits)
    target = np.asarray(target)
    own = logits[np.arange(len(target)), target][:, None]
    above = (logits > own).sum(axis=1)
    tied_before = ((logits == own) & (np.arange(logits.shape[1]) < target[:, None])).sum(axis=1)
    return 1 + above + tied_before


def target_prob(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Softmax probability of ``target[i]`` in row i, in float64 (log-sum-exp, so no overflow).

    float64 keeps confident images apart: in float32 every p above 1 - 6e-8 rounds to 1.0, which
    would turn them into ties for the AUC.
    """
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return np.exp(logits[np.arange(len(target)), target] - log_norm)


# ---------------------------------------------------------------------------------------------
# Uncertainty: intervals on single figures, tests and intervals on differences between two sets

CONFIDENCE = 0.95  # the level of every interval spurcli reports
PAIRED_TEST = "McNemar exact"  # binomial test on the discordant pairs
PAIRED_INTERVAL = "Newcombe hybrid score, paired"  # Newcombe 1998, Stat Med 17:2635, method 10
INDEPENDENT_TEST = "Fisher exact"
INDEPENDENT_INTERVAL = "Newcombe hybrid score"  # Newcombe 1998, Stat Med 17:873, method 10


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> list[float]:
    """The Wilson score interval of a proportion ``successes / n`` (no continuity correction).

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1, which
    is where spurious rates of a few dozen images live (Newcombe 1998, Stat Med 17:857, method 3).
    """
    from scipy.stats import binomtest

    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def rate_interval(hits: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """`wilson_interval` of the fraction of true entries of ``hits``."""
    hits = np.asarray(hits, dtype=bool).ravel()
    return wilson_interval(int(hits.sum()), hits.size, confidence)


def roc_auc_of_sets(positives: np.ndarray, negatives: np.ndarray) -> float:
    """`roc_auc` with the positives' and the negatives' scores given as two arrays."""
    return roc_auc(*_labelled(positives, negatives))


def average_precision_of_sets(positives: np.ndarray, negatives: np.ndarray) -> float:
    """`average_precision` with the positives' and the negatives' scores as two arrays."""
    return average_precision(*_labelled(positives, negatives))


def joint_ranking_scores(
    real_by_class: Mapping[int, np.ndarray], spurious_by_class: Mapping[int, np.ndarray]
) -> dict[str, float]:
    """The pooled ("joint") ROC-AUC and AP over all classes at once, as Spurious ImageNet's
    released code reports its "Joint SpuriousScore".

    ``real_by_class[k]``: p_k (the probability of class k) of every real image of class k;
    ``spurious_by_class[k]``: p_k of every spurious image of class k. All of them go into one
    set, every real image a positive and every spurious image a negative, each keeping the
    probability of its *own* class, and one ROC-AUC and one AP are taken over that set. So a
    real image of class a is also ranked against the spurious images of every other class b
    (p_a against p_b), and classes weigh by their number of images: this is not the mean of the
    per-class scores. The released code computes only the AP (sklearn's
    average_precision_score, which its output calls "AUC"). Returns
    ``{"joint_roc_auc": .., "joint_average_precision": ..}``.
    """
    if set(real_by_class) != set(spurious_by_class):
        only = sorted(set(real_by_class) ^ set(spurious_by_class))
        raise ValueError(f"real and spurious images must cover the same classes; differ in {only}")
    classes = sorted(real_by_class)
    # np.empty(0) first: no classes at all is then refused by `_check_binary`, not by concatenate
    real = np.concatenate([np.empty(0), *(np.ravel(real_by_class[k]) for k in classes)])
    spurious = np.concatenate([np.empty(0), *(np.ravel(spurious_by_class[k]) for k in classes)])
    y_true, y_score = _labelled(real, spurious)
    return {
        "joint_roc_auc": roc_auc(y_true, y_score),
        "joint_average_precision": average_precision(y_true, y_score),
    }


def _labelled(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positives, negatives = np.ravel(positives), np.ravel(negatives)
    y_true = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    return y_true, np.r_[positives, negatives]


def bootstrap_interval(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., float],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[float] | None:
    """Percentile bootstrap interval of ``statistic(*samples)`` (`scipy.stats.bootstrap`).

    Each sample is resampled independently, with its own size kept: for ROC-AUC / AP of real vs
    scored images that is a stratified bootstrap, so every resample has both classes. The same
    ``seed`` gives the same interval. None when ``resamples`` is 0 or a sample has fewer than
    two values (a resample of one value is that value: no interval to speak of).
    """
    from scipy.stats import bootstrap

    samples = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
    if resamples < 0:
        raise ValueError(f"resamples must be 0 (no interval) or more, got {resamples}")
    if resamples == 0 or min(s.size for s in samples) < 2:
        return None
    result = bootstrap(
        tuple(samples),
        statistic,
        n_resamples=resamples,
        method="percentile",
        confidence_level=confidence,
        vectorized=False,
        paired=False,
        batch=100,  # bounds the resampled index arrays' memory for large sets
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return [float(ci.low), float(ci.high)]


def rate_difference(
    hits_a: np.ndarray, hits_b: np.ndarray, paired: bool, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """Is the rate of true entries in ``hits_a`` different from that in ``hits_b``?

    ``hits_a[i]``: image i of set A counts (e.g. its top-1 is the target class). With
    ``paired=True`` image i of A and image i of B are a pair (same seed and prompt, so the same
    starting noise; equal lengths required): the exact McNemar test (a two-sided binomial test
    of the discordant pairs against 1/2) and Newcombe's paired hybrid score interval (Stat Med
    1998, 17:2635, method 10). Otherwise the two sets are independent samples: Fisher's exact
    test and Newcombe's hybrid score interval (Stat Med 1998, 17:873, method 10). The test and
    the interval are separate methods and can disagree near the boundary. Returns::

        {"delta": rate_a - rate_b, "delta_ci": [lo, hi], "p_value": two-sided p,
         "test": name of the test, "interval": name of the interval method,
         "n_a": len(hits_a), "n_b": len(hits_b)}
    """
    a = np.asarray(hits_a, dtype=bool).ravel()
    b = np.asarray(hits_b, dtype=bool).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("both sets need at least one image")
    if paired and a.size != b.size:
        raise ValueError(f"paired sets need equal sizes, got {a.size} and {b.size}")
    if paired:
        delta_ci, p_value = _paired_difference(a, b, confidence)
        test, interval = PAIRED_TEST, PAIRED_INTERVAL
    else:
        delta_ci, p_value = _independent_difference(a, b, confidence)
        test, interval = INDEPENDENT_TEST, INDEPENDENT_INTERVAL
    return {
        "delta": float(a.mean() - b.mean()),
        "delta_ci": [float(max(-1.0, delta_ci[0])), float(min(1.0, delta_ci[1]))],
        "p_value": p_value,
        "test": test,
        "interval": interval,
        "n_a": int(a.size),
        "n_b": int(b.size),
    }


def _independent_difference(
    a: np.ndarray, b: np.ndarray, confidence: float
) -> tuple[list[float], float]:
    from scipy.stats import fisher_exact

    hits_a, hits_b = int(a.sum()), int(b.sum())
    table = [[hits_a, a.size - hits_a], [hits_b, b.size - hits_b]]
    p_value = float(fisher_exact(table, alternative="two-sided").pvalue)
    p1, p2 = hits_a / a.size, hits_b / b.size
    l1, u1 = wilson_interval(hits_a, a.size, confidence)
    l2, u2 = wilson_interval(hits_b, b.size, confidence)
    # Square-and-add: each limit combines the two Wilson half-widths on its side.
    lower = p1 - p2 - np.hypot(p1 - l1, u2 - p2)
    upper = p1 - p2 + np.hypot(u1 - p1, p2 - l2)
    return [float(lower), float(upper)], p_value


def _paired_difference(
    a: np.ndarray, b: np.ndarray, confidence: float
) -> tuple[list[float], float]:
    from scipy.stats import binomtest

    n = a.size
    both = int(np.sum(a & b))
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    neither = n - both - only_a - only_b
    discordant = only_a + only_b
    # Concordant pairs carry no information on the difference; with none discordant, p = 1.
    p_value = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    hits_a, hits_b = both + only_a, both + only_b
    p1, p2 = hits_a / n, hits_b / n
    l1, u1 = wilson_interval(hits_a, n, confidence)
    l2, u2 = wilson_interval(hits_b, n, confidence)
    # phi: the correlation of the two rates' estimates, continuity-corrected as in Newcombe's
    # method 10 (0 when a margin is empty or the correlation is small and positive).
    margins = hits_a * (n - hits_a) * hits_b * (n - hits_b)
    cross = both * neither - only_a * only_b
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / np.sqrt(margins)
    else:
        phi = cross / np.sqrt(margins)
    low_a, high_b = p1 - l1, u2 - p2
    high_a, low_b = u1 - p1, p2 - l2
    lower = p1 - p2 - np.sqrt(max(0.0, low_a**2 + high_b**2 - 2 * phi * low_a * high_b))
    upper = p1 - p2 + np.sqrt(max(0.0, low_b**2 + high_a**2 - 2 * phi * low_b * high_a))
    return [float(lower), float(upper)], p_value


def matched_average_precision(
    positives: np.ndarray, negatives: np.ndarray, size: int, *, subsamples: int, seed: int = 0
) -> float:
    """Average precision of ``positives`` against ``size`` of the ``negatives``: the mean over
    ``subsamples`` seeded subsamples drawn without replacement (all of them if ``size`` is
    their number).

    AP falls as negatives are added (precision is diluted), so two sets of scored images are
    comparable by AP only at one size: `compare` brings the larger set down to the smaller's.
    """
    negatives = np.ravel(negatives)
    if not 1 <= size <= negatives.size:
        raise ValueError(f"size must be 1..{negatives.size}, got {size}")
    if size == negatives.size:
        return average_precision_of_sets(positives, negatives)
    if subsamples < 1:
        raise ValueError(f"subsamples must be at least 1, got {subsamples}")
    rng = np.random.default_rng(seed)
    values = [
        average_precision_of_sets(positives, rng.choice(negatives, size, replace=False))
        for _ in range(subsamples)
    ]
    return float(np.mean(values))
