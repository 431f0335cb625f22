"""The numbers `score` and `compare` report, in plain numpy (no scikit-learn at run time).

    import numpy as np
    from spurcli.metrics import roc_auc, average_precision, consensus

    y_true = np.array([1, 1, 0, 0, 0])               # 1: real image of the class, 0: spurious image
    p_k = np.array([0.9, 0.4, 0.4, 0.2, 0.1])        # softmax probability of the target class
    roc_auc(y_true, p_k)             # 0.9166...: ties between a positive and a negative count 1/2
    average_precision(y_true, p_k)   # 0.8333...: sum over thresholds of (R_n - R_n-1) * P_n
    consensus(np.array([[1, 0, 1], [1, 1, 0]], bool))  # all/any fractions and the histogram

Both ranking metrics follow scikit-learn's definitions exactly, ties included, so numbers agree
with `sklearn.metrics.roc_auc_score` / `average_precision_score` (and hence with the released
Spurious ImageNet code, which calls the latter); `tests/test_metrics.py` checks this on random
data with many ties.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def to_json(self) -> dict[str, object]:
        return {"all": self.all, "any": self.any, "histogram": list(self.histogram)}


def consensus(hits: np.ndarray) -> Consensus:
    """``hits[c, i]``: classifier c's top-1 for image i is the target class."""
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2 or hits.shape[0] == 0 or hits.shape[1] == 0:
        raise ValueError(f"hits must be (classifiers, images) with both > 0, got {hits.shape}")
    count = hits.sum(axis=0)
    n = hits.shape[0]
    histogram = np.bincount(count, minlength=n + 1)
    return Consensus(
        all=float(np.mean(count == n)),
        any=float(np.mean(count > 0)),
        histogram=[int(h) for h in histogram],
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
