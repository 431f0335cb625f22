"""The clustered statistics of a replicated run, against reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from spurcli.evaluate.clustered import cluster_difference, cluster_rate, holm
from spurcli.evaluate.metrics import rate_interval


def test_one_run_is_the_ordinary_percentile_bootstrap():
    from scipy.stats import bootstrap

    hits = np.random.default_rng(0).random(60) < 0.3
    ours = cluster_rate([hits], resamples=20000, seed=1)
    ref = bootstrap((hits.astype(float),), np.mean, n_resamples=20000, method="percentile", rng=2)
    assert ours["rate"] == pytest.approx(hits.mean())
    assert ours["ci"] == pytest.approx(
        [ref.confidence_interval.low, ref.confidence_interval.high], abs=0.02
    )


def test_runs_that_disagree_widen_the_interval_beyond_the_pooled_binomial_one():
    # Three training runs: one makes spurious images, two do not. Pooling 3 x 40 images as
    # independent draws would give a narrow interval around 1/3; the runs are the evidence.
    runs = [np.ones(40, bool), np.zeros(40, bool), np.zeros(40, bool)]
    pooled = rate_interval(np.concatenate(runs))
    clustered = cluster_rate(runs, resamples=4000, seed=0)
    assert clustered["rate"] == pytest.approx(1 / 3)
    assert clustered["per_run"] == [1.0, 0.0, 0.0]
    assert clustered["ci"][1] - clustered["ci"][0] > 2 * (pooled[1] - pooled[0])
    assert clustered["ci"] == pytest.approx([0.0, 1.0], abs=0.01)  # 0/3 .. 3/3 runs drawn


def test_a_paired_difference_keeps_its_pairs_and_tests_zero():
    rng = np.random.default_rng(3)
    a = [rng.random(30) < 0.6 for _ in range(3)]
    b = [x.copy() for x in a]  # identical sets: every resampled difference is exactly 0
    same = cluster_difference(a, b, paired=True, resamples=2000, seed=0)
    assert same["delta"] == 0 and same["delta_ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    unpaired = cluster_difference(a, b, paired=False, resamples=2000, seed=0)
    assert unpaired["delta_ci"][0] < 0 < unpaired["delta_ci"][1]  # pairing removes that noise
    up = [np.ones(30, bool)] * 3
    down = [np.zeros(30, bool)] * 3
    clear = cluster_difference(up, down, paired=True, resamples=2000, seed=0)
    assert clear["delta"] == 1 and clear["per_run"] == [1.0] * 3
    assert clear["p_value"] == pytest.approx(2 / 2001)  # no resample crosses 0: (1 + 0) / (B + 1)
    with pytest.raises(ValueError, match="not paired"):
        cluster_difference([np.ones(3)], [np.ones(4)], paired=True, resamples=10, seed=0)


def test_the_same_seed_gives_the_same_interval():
    runs = [np.arange(10) % 3 == 0, np.arange(12) % 2 == 0]
    assert cluster_rate(runs, 500, seed=7) == cluster_rate(runs, 500, seed=7)
    assert cluster_rate(runs, 500, seed=7)["ci"] != cluster_rate(runs, 500, seed=8)["ci"]


def test_holm_matches_the_step_down_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    adjusted = holm({"a": 0.04, "b": 0.01, "c": 0.03, "d": None})
    assert adjusted == pytest.approx({"a": 0.06, "b": 0.03, "c": 0.06, "d": None})


def test_a_difference_is_coloured_by_the_printed_test_and_never_when_zero():
    from spurcli.evaluate.metrics import rate_difference
    from spurcli.experiment.summary import _difference_row

    # 5 vs 0 discordant pairs of 24: Newcombe's interval excludes 0, the exact test p = 0.0625.
    a = np.array([1] * 5 + [0] * 19, bool)
    b = np.zeros(24, bool)
    diff = rate_difference(a, b, paired=True)
    assert diff["delta_ci"][0] > 0 and diff["p_value"] == pytest.approx(0.0625)
    cells = _difference_row("SFSL - baseline", "consensus", diff, "p_value")
    assert all(c["css"] == "" for c in cells[1:]) and cells[4]["text"] == "0.0625"
    strong = rate_difference(np.ones(24, bool), b, paired=True)
    assert _difference_row("x", "c", strong, "p_value")[2]["css"] == "pos"
    # ...but a Holm-adjusted p above 0.05 leaves it plain: the printed p decides.
    assert _difference_row("x", "c", {**strong, "p_holm": 0.2}, "p_holm")[2]["css"] == ""
    zero = {"delta": 0.0, "delta_ci": [0.0, 0.0], "p_value": 0.0, "test": "t"}
    assert all(c["css"] == "" for c in _difference_row("x", "c", zero, "p_value")[1:])
