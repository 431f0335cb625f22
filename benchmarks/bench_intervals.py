"""What the uncertainty costs: seconds per interval of `spurcli.evaluate.metrics`, by set size.

    python benchmarks/bench_intervals.py                       # 1000 resamples, n = 50..5000
    python benchmarks/bench_intervals.py --resamples 2000 --sizes 100 1000

Per size n (n real and n scored images, scores from two normal distributions): the Wilson
interval of a rate, the bootstrap interval of the mean p_target, of ROC-AUC and of AP (each a
stratified percentile bootstrap), and `rate_difference` paired and independent. The median of
the repeats is reported; `score` computes per classifier one Wilson interval per rate and four
bootstrap intervals, `compare` adds the differences.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from spurcli.evaluate import metrics


def seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    metrics.rate_interval(np.ones(2, bool))  # imports scipy.stats: not part of any interval
    print(f"seconds per interval, {args.resamples} resamples, median of {args.repeats}")
    columns = ("n", "wilson", "boot mean", "boot auc", "boot ap", "diff paired", "diff indep")
    print(" | ".join(f"{c:>11}" for c in columns))
    for n in args.sizes:
        real, scored = rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)
        hits_a, hits_b = rng.random(n) < 0.3, rng.random(n) < 0.2
        boot = {"resamples": args.resamples, "seed": 0}
        work = [
            partial(metrics.rate_interval, hits_a),
            partial(metrics.bootstrap_interval, [scored], np.mean, **boot),
            partial(metrics.bootstrap_interval, [real, scored], metrics.roc_auc_of_sets, **boot),
            partial(
                metrics.bootstrap_interval,
                [real, scored],
                metrics.average_precision_of_sets,
                **boot,
            ),
            partial(metrics.rate_difference, hits_a, hits_b, paired=True),
            partial(metrics.rate_difference, hits_a, hits_b, paired=False),
        ]
        row = [seconds(w, args.repeats) for w in work]
        print(" | ".join([f"{n:>11}", *(f"{t:>11.4f}" for t in row)]))


if __name__ == "__main__":
    main()
