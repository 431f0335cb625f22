"""spurcli.metrics against scikit-learn (ties included) and against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from spurcli.metrics import (
    average_precision,
    consensus,
    midranks,
    roc_auc,
    target_prob,
    target_rank,
)


def _random_cases(n_cases: int = 300):
    rng = np.random.default_rng(0)
    for case in range(n_cases):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1  # both classes present
        rng.shuffle(y)
        # Few distinct values -> many ties (within and across classes); some cases tie-free.
        levels = int(rng.integers(1, 6)) if case % 3 else n * 10
        scores = rng.integers(0, levels, n) / max(levels, 1)
        if case % 5 == 0:
            scores = scores + y * rng.random(n) * 0.3  # positives tend to score higher
        yield y, scores


def test_roc_auc_matches_sklearn_with_ties():
    for y, s in _random_cases():
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_average_precision_matches_sklearn_with_ties():
    for y, s in _random_cases():
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_known_values():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.4, 0.2, 0.1])
    # Pairs (pos, neg): 0.9 beats all 3; 0.4 ties one (1/2) and beats two -> 5.5 / 6.
    assert roc_auc(y, p) == pytest.approx(5.5 / 6)
    # Thresholds 0.9: R=1/2, P=1; 0.4: R=2/2, P=2/3 -> 1/2 * 1 + 1/2 * 2/3.
    assert average_precision(y, p) == pytest.approx(0.5 + 1 / 3)
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert roc_auc([1, 0], [0.1, 0.9]) == 0.0


def test_degenerate_inputs_raise():
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive and one negative"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="entries"):
        roc_auc([0, 1], [0.1])


def test_midranks():
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_consensus():
    hits = np.array(
        [
            [1, 1, 0, 0, 1],
            [1, 0, 0, 0, 1],
            [1, 0, 0, 1, 0],
        ],
        bool,
    )
    c = consensus(hits)
    assert c.all == pytest.approx(1 / 5)
    assert c.any == pytest.approx(4 / 5)
    assert c.histogram == [1, 2, 1, 1]
    assert c.to_json() == {"all": c.all, "any": c.any, "histogram": [1, 2, 1, 1]}


def test_target_rank_ties_follow_argmax():
    logits = np.array(
        [
            [0.0, 5.0, 5.0, 1.0],  # target 2 ties with 1 (lower index wins) -> rank 2
            [0.0, 5.0, 5.0, 1.0],  # target 1 -> rank 1, and argmax is 1
            [3.0, 2.0, 1.0, 0.0],  # target 3 -> last
        ]
    )
    target = np.array([2, 1, 3])
    assert target_rank(logits, target).tolist() == [2, 1, 4]
    assert np.argmax(logits[1]) == 1


def test_target_prob_is_softmax_without_overflow():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    p = target_prob(logits, np.array([0, 2]))
    assert p[0] == pytest.approx(1.0)
    assert p[1] == pytest.approx(np.exp(3) / np.exp([1, 2, 3]).sum())
