"""The answer of a `spurcli run`: per classifier, how often each set's images are put in the
target class, with 95% intervals, and whether the differences that matter are real.

    from spurcli.experiment import load_experiment
    from spurcli.experiment.summary import summarize, summary_tables
    summary = summarize(load_experiment("examples/quickstart.toml"))   # after the run's scores
    summary["classifiers"]["effnet-lite0"]["differences"]["generated-vs-baseline"]
    # {"delta": 0.31, "delta_ci": [0.12, 0.48], "p_value": 0.002, "test": "McNemar exact", ...}
    summary["primary"]          # the one pre-declared comparison, tested alone
    summary_tables(summary)     # [rates, differences]: {"columns", "rows", "caption"} each

The differences (`spurcli.evaluate.metrics.rate_difference`):

- SFSL vs the untuned baseline, DreamBooth-only vs the baseline, and SFSL vs DreamBooth-only
  (SFSL's own contribution) are *paired*: image i of each set was sampled from the same seed and
  the same prompt (without [V] for the baseline), so the exact McNemar test applies. The pairs
  are matched by `spurcli.evaluate.compare.find_pairs` (seed and prompt from each image's sample
  record,
  the tuned identifier ignored), as `spurcli compare` matches them; sets that do not pair one to
  one fall back to the unpaired test, and the summary's notes say so.
- Generated vs references is *unpaired* (Fisher's exact test); the references judged against are
  the held-out ones unless none could be held out (then the summary says so).

A victim classifier that is also the SFSL extractor (the same model and weights) was optimised
against: its rates are kept and marked ``"circular": true``, and it is left out of the consensus
unless the config says ``exclude_circular = false``; ``excluded_from_consensus`` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from spurcli.evaluate import metrics
from spurcli.evaluate.clustered import INTERVAL, cluster_difference, cluster_rate, holm
from spurcli.evaluate.compare import find_pairs
from spurcli.evaluate.differences import fmt_p
from spurcli.experiment.layout import REFERENCES
from spurcli.experiment.plan import BASELINE, DREAMBOOTH, LABELS, SFSL, Experiment
from spurcli.experiment.results import model_identities, saved_scores
from spurcli.seeds import derive_seed

CLUSTER_RESAMPLES = 2000  # when [compare] bootstrap = 0 turns the image-level bootstrap off


def tested_differences(exp: Experiment) -> list[tuple[str, str, bool]]:
    """(set a, set b, paired by construction) for every difference the summary tests."""
    sets = exp.sample_sets()
    pairs = [(arm, BASELINE, True) for arm in exp.arms() if BASELINE in sets]
    if DREAMBOOTH in sets:
        pairs.append((SFSL, DREAMBOOTH, True))
    pairs += [
        (f"{arm}-recontext", "baseline-recontext", True)
        for arm in exp.arms()
        if "baseline-recontext" in sets
    ]
    pairs += [(arm, REFERENCES, False) for arm in exp.arms()]
    return pairs


@dataclass
class _Verdicts:
    """One training run's per-image verdicts: for each victim and the consensus, which images
    of each set are called the target class, and how each difference's sets pair up."""

    names: list[str]
    scores: dict[str, Any]  # set -> its score JSON
    hits: dict[str, dict[str, np.ndarray]]  # victim -> set -> hits
    consensus: dict[str, np.ndarray]  # set -> hits of every consensus member at once
    pairings: dict[str, Any]  # "a-vs-b" -> compare.find_pairs' Pairing

    def pair(self, hits: dict[str, np.ndarray], a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        """The hits of A and of B, B reordered so that B's image i pairs with A's (if paired)."""
        partner = self.pairings[f"{a}-vs-{b}"].partner
        return hits[a], hits[b] if partner is None else hits[b][partner]


def _consensus_members(exp: Experiment) -> list[str]:
    circular = exp.circular()
    return [
        c for c in exp.compare.classifiers if not (exp.config.exclude_circular and c in circular)
    ]


def _verdicts(exp: Experiment) -> _Verdicts:
    names = exp.all_sets()
    scores = {n: json.loads(exp.layout.scores(n).read_text(encoding="utf-8")) for n in names}
    saved = {n: saved_scores(exp, n) for n in names}
    k = scores[names[0]]["target"]["index"]
    pairings = {
        f"{a}-vs-{b}": find_pairs(
            exp.set_dir(a),
            saved[a].spurious.images,
            exp.set_dir(b),
            saved[b].spurious.images,
            "auto" if paired else "no",
        )
        for a, b, paired in tested_differences(exp)
    }
    hits = {
        clf: {n: saved[n].spurious.top1[c] == k for n in names}
        for c, clf in enumerate(exp.compare.classifiers)
    }
    members = _consensus_members(exp)
    consensus = {n: np.all([hits[c][n] for c in members], axis=0) for n in names} if members else {}
    return _Verdicts(names, scores, hits, consensus, pairings)


def summarize(exp: Experiment) -> dict[str, Any]:
    """The run's answer, from the score files of every set (see the module docstring): one
    training run per arm, or pooled over the replicates' runs with clustered intervals; the
    primary comparison first, every other test Holm-corrected."""
    runs = exp.replicates()
    verdicts = [_verdicts(run) for run in runs]
    if len(runs) == 1:
        summary = _summarize_run(exp, verdicts[0])
        summary["replication"] = {
            "replicates": 1,
            "note": "unreplicated: one training run per arm, so every interval covers the "
            "sampling of images from two fixed checkpoints, not the training noise of the method",
        }
    else:
        summary = _summarize_pooled(exp, runs, verdicts)
    return _with_tests(exp, summary)


def _common(exp: Experiment, circular: list[str]) -> tuple[dict[str, str], list[str]]:
    """The notes and exclusions that do not depend on the numbers."""
    notes: list[str] = []
    held_out = [run for run in exp.replicates() if not run.split.held_out]
    if held_out:
        run = held_out[0]
        notes.append(
            f"No reference image was held out ({len(run.split.train)} references, "
            f"train_references = {exp.config.train_references}): the generated images are judged "
            "against the images they were trained on."
        )
    excluded = {
        c: "also the SFSL extractor (same model and weights): the images were optimised "
        "against it, so its verdict is not independent evidence"
        for c in circular
        if exp.config.exclude_circular
    }
    if circular:
        notes.append(
            f"{', '.join(circular)}: also the SFSL extractor, marked as circular"
            + (" and left out of the consensus." if exp.config.exclude_circular else ".")
        )
    return excluded, notes


def _summarize_run(exp: Experiment, v: _Verdicts) -> dict[str, Any]:
    """One training run per arm: exact tests on the images (see the module docstring)."""
    circular = exp.circular()
    excluded, notes = _common(exp, circular)
    unpaired = sorted(
        f"{name} ({pairing.rule})"
        for (a, b, paired), (name, pairing) in zip(
            tested_differences(exp), v.pairings.items(), strict=True
        )
        if paired and not pairing.paired
    )

    def difference(hits: dict[str, np.ndarray], a: str, b: str) -> dict[str, Any]:
        pairing = v.pairings[f"{a}-vs-{b}"]
        result = metrics.rate_difference(*v.pair(hits, a, b), paired=pairing.paired)
        return {**result, "pairing": pairing.rule if pairing.paired else "unpaired"}

    names, scores = v.names, v.scores
    per_classifier: dict[str, Any] = {}
    for clf, hits in v.hits.items():
        per_classifier[clf] = {
            **_weights(scores, names, clf),
            "circular": clf in circular,
            "spurious_rate": {n: scores[n]["classifiers"][clf]["spurious_rate"] for n in names},
            "spurious_rate_ci": {n: metrics.rate_interval(hits[n]) for n in names},
            "mean_target_prob": {
                n: scores[n]["classifiers"][clf]["mean_target_prob"] for n in names
            },
            "differences": {
                f"{a}-vs-{b}": difference(hits, a, b) for a, b, _ in tested_differences(exp)
            },
        }
    consensus: dict[str, Any] = {
        "classifiers": _consensus_members(exp),
        "all": {n: float(np.mean(h)) for n, h in v.consensus.items()},
        "all_ci": {n: metrics.rate_interval(h) for n, h in v.consensus.items()},
        "differences": {
            f"{a}-vs-{b}": difference(v.consensus, a, b) for a, b, _ in tested_differences(exp)
        }
        if v.consensus
        else {},
    }
    if unpaired:
        notes.append("Not paired one to one, tested as independent sets: " + ", ".join(unpaired))
    return {
        "target": scores[names[0]]["target"],
        "n_images": {n: scores[n]["n_images"] for n in names},
        "references": {
            "judged_against": "held-out" if exp.split.held_out else "training (none held out)",
            **exp.split.to_json(),
        },
        "arms": {
            arm: {"output_dir": str(cfg.output_dir), "sfsl_weight": cfg.sfsl_weight}
            for arm, cfg in exp.arms().items()
        },
        "models": model_identities(exp),  # the exact weights (docs/reproducibility.md)
        "classifiers": per_classifier,
        "consensus": consensus,
        "excluded_from_consensus": excluded,
        "interval": "95% Wilson score interval (rates); differences: see each entry's test",
        "notes": notes,
        "reference_set": REFERENCES,
    }


def _weights(scores: dict[str, Any], names: list[str], clf: str) -> dict[str, Any]:
    entry = scores[names[0]]["classifiers"][clf]
    return {"weights": entry["weights"], "weights_id": entry.get("weights_id")}


def _summarize_pooled(
    exp: Experiment, runs: list[Experiment], verdicts: list[_Verdicts]
) -> dict[str, Any]:
    """Several training runs per arm: every rate and difference pooled over the runs, with
    the two-stage cluster bootstrap (`spurcli.evaluate.clustered`); each run's own exact-test
    summary under ``per_replicate``."""
    circular = exp.circular()
    excluded, notes = _common(exp, circular)
    names = verdicts[0].names
    resamples = exp.compare.bootstrap or CLUSTER_RESAMPLES
    seed = exp.compare.bootstrap_seed

    def rates(hits_of: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        return {
            n: cluster_rate([h[n] for h in hits_of], resamples, derive_seed(seed, n)) for n in names
        }

    def pooled_differences(hits_of: list[dict[str, np.ndarray]], victim: str) -> dict[str, Any]:
        out = {}
        for a, b, paired in tested_differences(exp):
            name = f"{a}-vs-{b}"
            paired = paired and all(v.pairings[name].paired for v in verdicts)
            pairs = [v.pair(h, a, b) for v, h in zip(verdicts, hits_of, strict=True)]
            out[name] = {
                **cluster_difference(
                    [p[0] for p in pairs],
                    [p[1] for p in pairs],
                    paired=paired,
                    resamples=resamples,
                    seed=derive_seed(seed, victim, name),
                ),
                "pairing": "paired within each run" if paired else "unpaired",
                "n_a": int(sum(len(p[0]) for p in pairs)),
                "n_b": int(sum(len(p[1]) for p in pairs)),
            }
        return out

    def n_images(n: str) -> int:
        return sum(v.scores[n]["n_images"] for v in verdicts)

    per_classifier: dict[str, Any] = {}
    for clf in exp.compare.classifiers:
        hits_of = [v.hits[clf] for v in verdicts]
        pooled = rates(hits_of)
        per_classifier[clf] = {
            **_weights(verdicts[0].scores, names, clf),
            "circular": clf in circular,
            "spurious_rate": {n: pooled[n]["rate"] for n in names},
            "spurious_rate_ci": {n: pooled[n]["ci"] for n in names},
            "spurious_rate_per_run": {n: pooled[n]["per_run"] for n in names},
            "mean_target_prob": {
                n: sum(
                    v.scores[n]["classifiers"][clf]["mean_target_prob"] * v.scores[n]["n_images"]
                    for v in verdicts
                )
                / max(1, n_images(n))
                for n in names
            },
            "differences": pooled_differences(hits_of, clf),
        }
    consensus: dict[str, Any] = {"classifiers": _consensus_members(exp)}
    if verdicts[0].consensus:
        hits_of = [v.consensus for v in verdicts]
        pooled = rates(hits_of)
        consensus["all"] = {n: pooled[n]["rate"] for n in names}
        consensus["all_ci"] = {n: pooled[n]["ci"] for n in names}
        consensus["all_per_run"] = {n: pooled[n]["per_run"] for n in names}
        consensus["differences"] = pooled_differences(hits_of, "consensus")
    else:
        consensus.update({"all": {}, "all_ci": {}, "differences": {}})
    per_replicate = [
        {
            "replicate": run.replicate,
            "out": str(run.out),
            "finetune_seed": run.finetune.seed,
            "split_seed": run.split_seed,
            "references": run.split.to_json(),
            "n_images": {n: v.scores[n]["n_images"] for n in names},
            "spurious_rate": {
                clf: {n: float(np.mean(h[n])) for n in names} for clf, h in v.hits.items()
            },
            "consensus": {n: float(np.mean(h)) for n, h in v.consensus.items()},
        }
        for run, v in zip(runs, verdicts, strict=True)
    ]
    return {
        "target": verdicts[0].scores[names[0]]["target"],
        "n_images": {n: n_images(n) for n in names},
        "replication": {
            "replicates": len(runs),
            "note": f"{len(runs)} training runs per arm (each its own training seed and "
            "reference split, shared by the arms); rates and differences pooled over the runs, "
            "intervals and tests by a two-stage cluster bootstrap (runs, then images) with "
            f"{resamples} resamples",
        },
        "references": {
            "judged_against": "held-out" if all(r.split.held_out for r in runs) else "training",
            "per_replicate": [r.split.to_json() for r in runs],
        },
        "arms": {
            arm: {
                "output_dir": [str(r.arms()[arm].output_dir) for r in runs],
                "sfsl_weight": cfg.sfsl_weight,
            }
            for arm, cfg in exp.arms().items()
        },
        "models": [model_identities(run) for run in runs],
        "classifiers": per_classifier,
        "consensus": consensus,
        "excluded_from_consensus": excluded,
        "interval": INTERVAL,
        "per_replicate": per_replicate,
        "notes": notes,
        "reference_set": REFERENCES,
    }


def _with_tests(exp: Experiment, summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with the primary comparison first, as declared in the config before the run,
    and every other difference's p-value Holm-adjusted (``p_holm``) over the secondary family."""
    name = exp.primary()
    victims = summary["consensus"]["classifiers"]
    on = summary["consensus"]["differences"] if victims else {}
    primary = {
        "comparison": name,
        "victims": victims,
        "declared": f"primary = {name!r} in {exp.path.name}, before any number was made",
        **(on.get(name) or {}),
    }
    family: dict[tuple[str, str], float | None] = {}
    for clf, entry in summary["classifiers"].items():
        for diff, result in entry["differences"].items():
            family[(clf, diff)] = result["p_value"]
    for diff, result in summary["consensus"]["differences"].items():
        if diff != name:
            family[("consensus", diff)] = result["p_value"]
    adjusted = holm(family)
    for victim, diff in family:
        entries = summary["consensus" if victim == "consensus" else "classifiers"]
        entry = entries if victim == "consensus" else entries[victim]
        entry["differences"][diff]["p_holm"] = adjusted[(victim, diff)]
    tests = {
        "primary": 1 if primary.get("p_value") is not None else 0,
        "secondary": sum(p is not None for p in family.values()),
        "correction": "Holm (statsmodels multipletests) over the secondary tests; the primary "
        "test is not corrected",
    }
    return {"primary": primary, "tests": tests, **summary}


def _rate_entry(value: float | None, ci: list[float] | None) -> dict[str, str]:
    if value is None:
        return {"text": "-", "css": ""}
    interval = f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else ""
    return {"text": f"{value:.2f}{interval}", "css": ""}


def _victim_name(clf: str, entry: dict[str, Any]) -> str:
    """The victim, marked: ``*`` random weights, ``(circ.)`` the SFSL extractor itself."""
    return (
        clf
        + ("*" if entry["weights"] == "random" else "")
        + (" (circ.)" if entry["circular"] else "")
    )


def _short(name: str) -> str:
    """A set's label short enough for a 100-column terminal table."""
    label = LABELS[name].replace("DreamBooth only", "DreamBooth")
    return label.replace(" references", " refs").replace(" (recontext)", " recontext")


def _difference_row(
    label: str, victims: str, diff: dict[str, Any], p_key: str
) -> list[str | dict[str, str]]:
    """A difference as cells; coloured by the p-value printed (``p_key``: the raw one for the
    primary test, Holm's for the others) below 0.05, and never when the difference is 0."""
    p = diff.get(p_key)
    delta = diff["delta"]
    css = ("pos" if delta > 0 else "neg") if p is not None and p < 0.05 and delta != 0 else ""
    ci = diff.get("delta_ci")
    return [
        label,
        {"text": victims, "css": ""},
        {"text": f"{delta:+.3f}", "css": css},
        {"text": f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-", "css": ""},
        {"text": fmt_p(p) or "-", "css": css},
    ]


def summary_tables(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary as two tables of cells ``{"text", "css"}`` for the report and the terminal,
    each readable at 100 columns: the rates (sets as rows, victims as columns) and the
    differences (one per row, the primary test first)."""
    sets = list(summary["n_images"])
    victims = summary["classifiers"]
    consensus = summary["consensus"]
    columns = ["set (images)", *(_victim_name(c, e) for c, e in victims.items())]
    if consensus["classifiers"]:
        columns.append("consensus")
    rows = []
    for s in sets:
        cells = [
            _rate_entry(e["spurious_rate"][s], e["spurious_rate_ci"][s]) for e in victims.values()
        ]
        if consensus["classifiers"]:
            cells.append(_rate_entry(consensus["all"].get(s), consensus["all_ci"].get(s)))
        rows.append([f"{_short(s)} ({summary['n_images'][s]})", *cells])
    target = summary["target"]
    replicated = summary["replication"]["replicates"] > 1
    interval = (
        "its 95% cluster bootstrap interval over the training runs and images"
        if replicated
        else "its 95% Wilson interval"
    )
    members = ", ".join(consensus["classifiers"]) or "none"
    rates = {
        "title": "spurious rates",
        "columns": columns,
        "rows": rows,
        "caption": f"Spurious rate: the share of a set's images whose top-1 class is "
        f"{target['index']} {target['name']}, with {interval}. Consensus: every one of "
        f"{members} at once. *: random weights; (circ.): the SFSL extractor itself. "
        f"{summary['replication']['note']}.",
    }

    def label(name: str) -> str:
        return " - ".join(_short(part) for part in _split_pair(name, summary["n_images"]))

    primary = summary["primary"]
    diff_rows = []
    if primary.get("delta") is not None:
        diff_rows.append(
            _difference_row(
                f"primary: {label(primary['comparison'])}", "consensus", primary, "p_value"
            )
        )
    for name, diff in consensus["differences"].items():
        if name != primary["comparison"]:
            diff_rows.append(_difference_row(label(name), "consensus", diff, "p_holm"))
    for clf, entry in victims.items():
        for name, diff in entry["differences"].items():
            diff_rows.append(_difference_row(label(name), _victim_name(clf, entry), diff, "p_holm"))
    tests = summary["tests"]
    tests_used = sorted({row_diff["test"] for row_diff in _all_differences(summary)})
    differences = {
        "title": "differences",
        "columns": ["difference", "victims", "Δ", "95% interval", "p"],
        "rows": diff_rows,
        "caption": f"Δ: the first set's rate minus the second's. The primary comparison "
        f"({primary['declared']}) is tested alone; p of the other {tests['secondary']} tests is "
        f"Holm-adjusted. Tests: {'; '.join(tests_used)} (paired: image i of both sets shares "
        "its seed and prompt). Coloured where the printed p is below 0.05 (red: the first set is "
        f"called {target['name']} more often). References: "
        f"{summary['references']['judged_against']}.",
    }
    return [rates, differences]


def _all_differences(summary: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [*summary["classifiers"].values(), summary["consensus"]]
    return [d for entry in entries for d in entry["differences"].values()]


def _split_pair(name: str, sets: dict[str, int]) -> tuple[str, str]:
    """'generated-vs-baseline' -> ('generated', 'baseline'), for set names that hold '-'."""
    for a in sets:
        if name.startswith(f"{a}-vs-") and name[len(a) + 4 :] in sets:
            return a, name[len(a) + 4 :]
    raise ValueError(f"not a pair of sets: {name}")
