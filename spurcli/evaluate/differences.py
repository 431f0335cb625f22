"""Differences (A - B), per classifier and for the consensus rates, under ``differences`` in the
JSON, each ``{"delta", "delta_ci", "p_value", "test", "interval"}`` (methods, references and the
pairing rule: docs/statistics.md):

- ``spurious_rate``, ``top5_rate``, consensus ``all``/``any``:
`spurcli.evaluate.metrics.rate_difference`,
  the exact McNemar test when the sets are paired, Fisher's exact test otherwise, with Newcombe's
  (paired) hybrid score interval on the difference.
- ``mean_target_prob``, ``roc_auc``: a seeded percentile bootstrap of the difference (pairs
  resampled together when paired; the shared real images resampled on their own).
- ``average_precision``: AP depends on how many scored images stand against the real ones, so
  it is compared at one size: the larger set's AP is the mean over seeded subsamples down to the
  smaller set's size (``matched_size``, ``subsamples``); unequal sets get no interval (never a
  coloured delta in the report). ROC-AUC, which does not depend on the size, is the headline.
- Pairing (``--paired auto|yes|no``): image i of A and image j of B are a pair when they share
  the sample seed and the prompt (from `spurcli sample`'s manifest or PNG chunk; words that every
  prompt of one set has and no prompt of the other, such as the tuned identifier, are ignored),
  or, for images without such a record, the relative file name. ``auto`` pairs the sets when
  this matches every image of A with exactly one of B and vice versa.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate import metrics
from spurcli.records import sample_records

log = logging.getLogger(__name__)

PAIRED = ("auto", "yes", "no")


AP_SUBSAMPLES = 200  # seeded subsamples of the larger set behind a matched-size AP


def fmt_difference(diff: dict[str, Any]) -> str:
    """``+0.250 [+0.050, +0.450]`` (a `rate_difference`-shaped dict); matched AP says so."""
    text = f"{diff['delta']:+.3f}"
    if diff.get("delta_ci") is not None:
        lo, hi = diff["delta_ci"]
        text += f" [{lo:+.3f}, {hi:+.3f}]"
    if diff.get("subsamples"):
        text += f" (n={diff['matched_size']} matched)"
    return text


def fmt_p(p_value: float | None) -> str:
    if p_value is None:
        return ""
    return f"{p_value:.3g}" if p_value >= 1e-4 else "<1e-4"


def consensus_members(
    classifiers: Sequence[str], left_out: Sequence[str] | dict[str, str]
) -> list[str]:
    """The classifiers the consensus is taken over: all but those ``left_out``; an unknown name
    there is a usage error (a typo must not silently keep a circular victim in)."""
    unknown = [c for c in left_out if c not in classifiers]
    if unknown:
        raise UsageError(
            f"exclude_from_consensus names {unknown[0]}, which is not among the classifiers "
            f"({', '.join(classifiers)})"
        )
    return [c for c in classifiers if c not in left_out]


def consensus_text(consensus_of: dict[str, Any]) -> str:
    """ "consensus of 2 victims (a, b); c left out: circular (...)" (what the tables say)."""
    members, left_out = consensus_of.get("classifiers", []), consensus_of.get("left_out", {})
    if not members:
        text = "no consensus: every classifier is left out"
    else:
        text = (
            f"consensus of {len(members)} victim{'s' if len(members) != 1 else ''} "
            f"({', '.join(members)})"
        )
    for name, why in left_out.items():
        text += f"; {name} left out: {why}"
    return text


def excludes_zero(diff: dict[str, Any] | None) -> bool:
    """The difference's interval lies wholly above or below 0 (False without an interval)."""
    ci = (diff or {}).get("delta_ci")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


ALPHA = 0.05  # the level a shown difference is coloured at (1 - CONFIDENCE)


def shown_as_real(diff: dict[str, Any] | None, p_key: str = "p_value") -> int:
    """+1 or -1 (the sign of the difference) where a table colours it, else 0: by the test whose
    p-value is printed beside it (``p_key``: a Holm-adjusted one, say) below ``ALPHA``, by its
    interval only where it has no test; never without an interval, never where it prints as 0.
    An exact test and a score interval can disagree (5 vs 0 discordant pairs of 24: McNemar p =
    0.0625, Newcombe's interval above 0); the reader sees the p-value, so the p-value decides."""
    if not diff or diff.get("delta") is None or abs(diff["delta"]) < 5e-4:  # printed "0.000"
        return 0
    if diff.get("delta_ci") is None:  # a number without an interval (an unmatched AP, ...)
        return 0
    p = diff.get(p_key)
    real = p < ALPHA if p is not None else excludes_zero(diff)
    return (1 if diff["delta"] > 0 else -1) if real else 0


def _prompt_keys(records_a: list[dict], records_b: list[dict]) -> tuple[list[Any], list[Any]]:
    """(seed, prompt) per image, minus the words that every prompt of one set has and no prompt
    of the other (the tuned identifier: "a photo of sks flower" pairs with "a photo of flower")."""

    def words(records: list[dict]) -> list[set[str]]:
        return [set(str(r["prompt"]).split()) for r in records]

    words_a, words_b = words(records_a), words(records_b)
    own_a = set.intersection(*words_a) - set.union(*words_b)
    own_b = set.intersection(*words_b) - set.union(*words_a)

    def key(record: dict, own: set[str]) -> tuple[Any, str]:
        return record["seed"], " ".join(w for w in str(record["prompt"]).split() if w not in own)

    return [key(r, own_a) for r in records_a], [key(r, own_b) for r in records_b]


@dataclass
class Pairing:
    """How the images of A and B correspond: ``partner[i]`` is B's index of A's image i."""

    partner: np.ndarray | None  # None: the sets are treated as independent samples
    rule: str  # what was matched ("seed and prompt", "file name") or why there are no pairs
    mode: str = "auto"

    @property
    def paired(self) -> bool:
        return self.partner is not None

    def to_json(self) -> dict[str, Any]:
        return {"paired": self.paired, "mode": self.mode, "rule": self.rule}


def find_pairs(
    dir_a: str | os.PathLike[str],
    names_a: Sequence[str],
    dir_b: str | os.PathLike[str],
    names_b: Sequence[str],
    mode: str = "auto",
) -> Pairing:
    """Pair the images of A with those of B (the rule: the module docstring). ``mode`` ``"yes"``
    makes a failed pairing an error, ``"no"`` skips it."""
    if mode not in PAIRED:
        raise UsageError(f"--paired must be one of {', '.join(PAIRED)}, got '{mode}'")
    if mode == "no":
        return Pairing(None, "not paired (--paired no)", mode)
    records_a, records_b = sample_records(dir_a, names_a), sample_records(dir_b, names_b)
    if all(records_a) and all(records_b):
        keys_a, keys_b = _prompt_keys(records_a, records_b)  # type: ignore[arg-type]
        how = "seed and prompt"
    else:
        keys_a, keys_b, how = list(names_a), list(names_b), "file name"
    index_b = {key: j for j, key in enumerate(keys_b)}
    problem = None
    if len(set(keys_a)) < len(keys_a) or len(index_b) < len(keys_b):
        problem = f"two images of one set share a {how}"
    elif set(keys_a) != set(index_b):
        lonely_a, lonely_b = len(set(keys_a) - set(index_b)), len(set(index_b) - set(keys_a))
        problem = f"{lonely_a} images of A and {lonely_b} of B have no partner by {how}"
    if problem is None:
        return Pairing(np.array([index_b[key] for key in keys_a], np.int64), how, mode)
    if mode == "yes":
        raise SpurcliError(f"--paired yes, but the sets do not pair: {problem}")
    return Pairing(None, f"not paired: {problem}", mode)


def _resampled_difference(
    statistic: Any,
    values_a: np.ndarray,
    values_b: np.ndarray,
    real: np.ndarray | None,
    pairing: Pairing,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """``statistic(values, real)`` of A minus that of B, with a percentile bootstrap interval:
    pairs resampled together when paired, the sets independently otherwise; the real images
    (shared by both) resampled on their own."""
    shared = [] if real is None else [real]
    if pairing.paired:
        values_b = values_b[pairing.partner]

        def delta(*samples: np.ndarray) -> float:
            rows = samples[-1].astype(np.int64)  # resampled pair numbers
            r = samples[0] if real is not None else None
            return statistic(values_a[rows], r) - statistic(values_b[rows], r)

        samples = [*shared, np.arange(len(values_a))]
        how = "percentile bootstrap, pairs resampled"
    else:

        def delta(*samples: np.ndarray) -> float:
            r = samples[0] if real is not None else None
            return statistic(samples[-2], r) - statistic(samples[-1], r)

        samples = [*shared, values_a, values_b]
        how = "percentile bootstrap, sets resampled independently"
    if real is not None:
        how += ", real images resampled on their own"
    ci = metrics.bootstrap_interval(samples, delta, resamples=resamples, seed=seed)
    return {
        "delta": float(statistic(values_a, real) - statistic(values_b, real)),
        "delta_ci": ci,
        "p_value": None,
        "test": None,
        "interval": how if ci is not None else None,
    }


def _matched_ap_difference(
    real: np.ndarray,
    values_a: np.ndarray,
    values_b: np.ndarray,
    pairing: Pairing,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """AP of A minus AP of B at one size (see the module docstring)."""
    size = min(len(values_a), len(values_b))
    if len(values_a) == len(values_b):
        out = _resampled_difference(
            lambda v, r: metrics.average_precision_of_sets(r, v),
            values_a,
            values_b,
            real,
            pairing,
            resamples,
            seed,
        )
        subsamples = 0
    else:
        subsamples = AP_SUBSAMPLES
        a, b = (
            metrics.matched_average_precision(real, v, size, subsamples=subsamples, seed=seed)
            for v in (values_a, values_b)
        )
        out = {"delta": a - b, "delta_ci": None, "p_value": None, "test": None, "interval": None}
    return {**out, "matched_size": size, "subsamples": subsamples}


def differences(
    a: Any,
    b: Any,
    pairing: Pairing,
    *,
    resamples: int = 1000,
    seed: int = 0,
    consensus_of: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A minus B (two `ScoreResult`s of one pass) per classifier and for the consensus rates
    (over the classifiers ``consensus_of``; None: all; none: no consensus differences)."""
    k = a.target.index
    sa, sb = a.spurious, b.spurious
    partner = pairing.partner

    def rate(hits_a: np.ndarray, hits_b: np.ndarray) -> dict[str, Any]:
        if partner is not None:
            hits_b = hits_b[partner]
        return metrics.rate_difference(hits_a, hits_b, paired=pairing.paired)

    per_classifier = {}
    for c, name in enumerate(sa.classifiers):
        pa, pb = sa.target_prob[c], sb.target_prob[c]
        entry = {
            "spurious_rate": rate(sa.top1[c] == k, sb.top1[c] == k),
            "top5_rate": rate(sa.target_rank[c] <= 5, sb.target_rank[c] <= 5),
            "mean_target_prob": _resampled_difference(
                lambda v, _: float(np.mean(v)), pa, pb, None, pairing, resamples, seed
            ),
        }
        if a.real is not None:
            real = a.real.target_prob[c]
            entry["roc_auc"] = _resampled_difference(
                lambda v, r: metrics.roc_auc_of_sets(r, v), pa, pb, real, pairing, resamples, seed
            )
            entry["average_precision"] = _matched_ap_difference(
                real, pa, pb, pairing, resamples, seed
            )
        per_classifier[name] = entry
    members = list(sa.classifiers) if consensus_of is None else list(consensus_of)
    rows = [sa.classifiers.index(name) for name in members]
    consensus: dict[str, Any] = {}
    if rows:
        hits_a = metrics.consensus_hits(sa.top1[rows] == k)
        hits_b = metrics.consensus_hits(sb.top1[rows] == k)
        consensus = {key: rate(hits_a[key], hits_b[key]) for key in ("all", "any")}
    return {
        "pairing": pairing.to_json(),
        "classifiers": per_classifier,
        "consensus": consensus,
        "consensus_classifiers": members,
    }
