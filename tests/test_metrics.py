"""spurcli.evaluate.metrics against scikit-learn (ties included) and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from spurcli.evaluate.metrics import (
    average_precision,
    average_precision_of_sets,
    bootstrap_interval,
    consensus,
    matched_average_precision,
    midranks,
    rate_difference,
    rate_interval,
    roc_auc,
    roc_auc_of_sets,
    target_prob,
    target_rank,
    wilson_interval,
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
    assert c.all_ci == wilson_interval(1, 5)
    assert c.any_ci == wilson_interval(4, 5)
    assert c.to_json() == {
        "all": c.all,
        "all_ci": c.all_ci,
        "any": c.any,
        "any_ci": c.any_ci,
        "histogram": [1, 2, 1, 1],
    }


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


# ------------------------------------------------------------------------------ uncertainty


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054  # the 97.5% normal quantile
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("k", "n", "published"),
    [
        # Newcombe (1998), Stat Med 17:857, worked examples, method 3 (Wilson score).
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
    ],
)
def test_wilson_interval_matches_formula_and_textbook(k, n, published):
    lo, hi = wilson_interval(k, n)
    by_hand = _wilson_by_hand(k, n)
    assert lo == pytest.approx(by_hand[0], abs=1e-12)
    assert hi == pytest.approx(by_hand[1], abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == published


def test_rate_interval_and_bad_counts():
    assert rate_interval(np.array([1, 0, 0, 0, 1], bool)) == wilson_interval(2, 5)
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(3)
    real, scored = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 70)
    first = bootstrap_interval([real, scored], roc_auc_of_sets, resamples=500, seed=7)
    again = bootstrap_interval([real, scored], roc_auc_of_sets, resamples=500, seed=7)
    other = bootstrap_interval([real, scored], roc_auc_of_sets, resamples=500, seed=8)
    assert first == again
    assert first != other
    for statistic in (roc_auc_of_sets, average_precision_of_sets):
        lo, hi = bootstrap_interval([real, scored], statistic, resamples=500, seed=7)
        assert lo < statistic(real, scored) < hi
        assert 0.0 <= lo < hi <= 1.0


def test_bootstrap_interval_of_a_mean_agrees_with_normal_theory():
    # With 400 values the percentile interval of a mean is close to mean +- 1.96 s / sqrt(n).
    values = np.random.default_rng(0).exponential(1.0, 400)
    lo, hi = bootstrap_interval([values], np.mean, resamples=2000, seed=1)
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert lo == pytest.approx(values.mean() - half, abs=0.02)
    assert hi == pytest.approx(values.mean() + half, abs=0.02)


def test_bootstrap_resamples_each_sample_within_itself():
    # Stratified: every resample keeps both sizes and draws positives only from positives.
    real, scored = np.arange(5.0) + 100, np.arange(7.0)
    seen = []

    def record(r, s):
        seen.append((r.size, s.size, bool((r >= 100).all() and (s < 100).all())))
        return roc_auc_of_sets(r, s)

    bootstrap_interval([real, scored], record, resamples=50, seed=0)
    assert len(seen) >= 50
    assert set(seen) == {(5, 7, True)}


def test_bootstrap_interval_none_when_off_or_too_small():
    assert bootstrap_interval([np.arange(5.0)], np.mean, resamples=0) is None
    assert bootstrap_interval([np.arange(5.0), np.array([1.0])], roc_auc_of_sets) is None
    with pytest.raises(ValueError):
        bootstrap_interval([np.arange(5.0)], np.mean, resamples=-1)


def _pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Hits of two paired sets with the given 2x2 table (A in rows, B in columns)."""
    a = np.r_[np.ones(both + only_a), np.zeros(only_b + neither)].astype(bool)
    b = np.r_[np.ones(both), np.zeros(only_a), np.ones(only_b), np.zeros(neither)].astype(bool)
    return a, b


def test_paired_difference_mcnemar_and_newcombe():
    # Cavo et al. (2012), complete response before/after consolidation: the example of
    # Fagerland, Lydersen & Laake (2014), Stat Med 33:2850 -- exact McNemar p = 0.052,
    # Newcombe hybrid score interval -0.1186 to -0.0046 for delta = -10/161.
    d = rate_difference(*_pairs(59, 6, 16, 80), paired=True)
    assert d["delta"] == pytest.approx(-10 / 161)
    assert round(d["p_value"], 3) == 0.052
    assert [round(x, 4) for x in d["delta_ci"]] == [-0.1186, -0.0046]
    assert d["test"] == "McNemar exact"
    assert d["interval"] == "Newcombe hybrid score, paired"
    assert (d["n_a"], d["n_b"]) == (161, 161)
    # Bentur et al. (2009): 1 vs 7 discordant pairs; exact p = 2 * (1 + 8) / 2**8 by hand.
    d = rate_difference(*_pairs(1, 1, 7, 12), paired=True)
    assert d["p_value"] == pytest.approx(18 / 256)
    assert d["delta_ci"][0] < d["delta"] < d["delta_ci"][1] < 0


def test_paired_difference_without_discordant_pairs():
    a = np.array([1, 1, 0, 0, 0], bool)
    d = rate_difference(a, a.copy(), paired=True)
    assert d["delta"] == 0.0
    assert d["p_value"] == 1.0
    assert d["delta_ci"][0] < 0 < d["delta_ci"][1]


def test_independent_difference_fisher_and_newcombe():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = (1 + 16 + 16 + 1) / 70.
    d = rate_difference([1, 1, 1, 0], [1, 0, 0, 0], paired=False)
    assert d["p_value"] == pytest.approx(34 / 70)
    assert d["test"] == "Fisher exact"
    assert d["interval"] == "Newcombe hybrid score"
    # Newcombe (1998), Stat Med 17:873, worked example (a), method 10: 56/70 - 48/80.
    d = rate_difference(np.arange(70) < 56, np.arange(80) < 48, paired=False)
    assert d["delta"] == pytest.approx(0.2)
    assert [round(x, 4) for x in d["delta_ci"]] == [0.0524, 0.3339]


def test_independent_difference_matches_statsmodels():
    from statsmodels.stats.proportion import confint_proportions_2indep

    rng = np.random.default_rng(5)
    for _ in range(50):
        n_a, n_b = (int(x) for x in rng.integers(1, 60, 2))
        k_a, k_b = int(rng.integers(0, n_a + 1)), int(rng.integers(0, n_b + 1))
        d = rate_difference(np.arange(n_a) < k_a, np.arange(n_b) < k_b, paired=False)
        expected = confint_proportions_2indep(k_a, n_a, k_b, n_b, method="newcomb")
        assert d["delta_ci"] == pytest.approx(list(expected), abs=1e-9)


def test_rate_difference_bad_input():
    with pytest.raises(ValueError, match="equal sizes"):
        rate_difference([1, 0], [1, 0, 1], paired=True)
    with pytest.raises(ValueError, match="at least one"):
        rate_difference([], [1], paired=False)


def test_matched_average_precision_removes_the_size_effect():
    # One score distribution for every scored set: only the set sizes differ.
    rng = np.random.default_rng(11)
    real = rng.normal(1.0, 1.0, 60)
    small, medium, large = (rng.normal(0.0, 1.0, n) for n in (60, 240, 960))
    raw = [average_precision_of_sets(real, s) for s in (small, medium, large)]
    matched = [
        matched_average_precision(real, s, small.size, subsamples=200, seed=0)
        for s in (small, medium, large)
    ]
    assert raw[1] - raw[2] > 0.1  # raw AP falls as scored images are added...
    assert abs(matched[1] - matched[2]) < 0.02  # ...matched AP does not depend on the size
    assert matched[0] == raw[0]  # already at the size: the plain AP
    assert matched_average_precision(real, large, 60, subsamples=20, seed=3) == (
        matched_average_precision(real, large, 60, subsamples=20, seed=3)
    )
    with pytest.raises(ValueError):
        matched_average_precision(real, small, 61, subsamples=10)
