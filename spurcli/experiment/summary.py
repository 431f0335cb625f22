"""The answer of a `spurcli run`: per classifier, how often each set's images are put in the
target class, with 95% intervals, and whether the differences that matter are real.

    from spurcli.experiment import load_experiment
    from spurcli.experiment.summary import summarize, summary_tables
    summary = summarize(load_experiment("examples/quickstart.toml"))   # after the run's scores
    summary["classifiers"]["effnet-lite0"]["differences"]["sfsl-vs-baseline"]
    # {"delta": 0.31, "delta_ci": [0.12, 0.48], "p_value": 0.002, "p_holm": 0.01, "test": ...}
    summary["primary"]          # the one pre-declared comparison, tested alone
    summary_tables(summary)     # rates, (object-free,) differences, memorisation: "rows", ...

With several training runs per arm (``replicates``) every rate and difference is pooled over
the runs with a two-stage cluster bootstrap (`spurcli.evaluate.clustered`). With one, the
differences are exact tests (`spurcli.evaluate.metrics.rate_difference`):

- SFSL vs the untuned baseline, DreamBooth-only vs the baseline, and SFSL vs DreamBooth-only
  (SFSL's own contribution) are *paired*: image i of each set was sampled from the same seed and
  the same prompt (without [V] for the baseline), so the exact McNemar test applies. The pairs
  are matched by `spurcli.evaluate.compare.find_pairs` (seed and prompt from each image's sample
  record, the tuned identifier ignored), as `spurcli compare` matches them; sets that do not pair
  one to one fall back to the unpaired test, and the summary's notes say so.
- Generated vs references is *unpaired* (Fisher's exact test); the references judged against are
  the held-out ones unless none could be held out (then the summary says so).

A victim classifier that is also the SFSL extractor (the same model and weights) was optimised
against: its rates are kept and marked ``"circular": true``, and it is left out of the consensus
unless the config says ``exclude_circular = false``; ``excluded_from_consensus`` says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spurcli.errors import SpurcliError
from spurcli.evaluate import metrics
from spurcli.evaluate.clustered import INTERVAL, cluster_difference, cluster_rate, holm
from spurcli.evaluate.compare import find_pairs
from spurcli.evaluate.differences import consensus_members, fmt_p, shown_as_real
from spurcli.experiment.layout import REFERENCES, TRAIN_REFERENCES
from spurcli.experiment.plan import BASELINE, DREAMBOOTH, LABELS, SFSL, Experiment
from spurcli.experiment.results import model_identities, read_json, saved_scores
from spurcli.records import FINETUNE_CARD
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
    present: dict[str, np.ndarray] | None  # set -> images the detector finds the object in
    detected_by: dict[str, Any] | None  # the detector, its weights and query (presence records)

    def object_free(self, hits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The hits of the images in which the detector finds no object."""
        assert self.present is not None
        return {n: hits[n][~self.present[n]] for n in self.names}

    def pair(self, hits: dict[str, np.ndarray], a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        """The hits of A and of B, B reordered so that B's image i pairs with A's (if paired)."""
        partner = self.pairings[f"{a}-vs-{b}"].partner
        return hits[a], hits[b] if partner is None else hits[b][partner]


@dataclass
class _Victims:
    """Which victims are the SFSL extractor itself, and which the consensus leaves out (why)."""

    circular: list[str]
    left_out: dict[str, str]
    members: list[str]  # the consensus: every victim not left out


def _victims(exp: Experiment, first: Experiment) -> _Victims:
    """Decided once for the experiment, with the weights identities that its first training run
    recorded (weights left to a plugin's default are known only once loaded)."""
    names = first.all_sets()
    scores = json.loads(first.layout.scores(names[0]).read_text(encoding="utf-8"))
    card = read_json(Path(first.arms()[SFSL].output_dir) / FINETUNE_CARD) or {}
    recorded = {
        "extractor": (card.get("extractor") or {}).get("weights_id"),
        "classifiers": {
            c: scores["classifiers"][c].get("weights_id") for c in exp.compare.classifiers
        },
    }
    left_out = exp.left_out_of_consensus(recorded)  # the same in the compare JSON and the report
    return _Victims(
        circular=exp.circular(recorded),
        left_out=left_out,
        members=consensus_members(exp.compare.classifiers, left_out),
    )


def _run_verdicts(exp: Experiment, members: list[str]) -> _Verdicts:
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
    consensus = {n: np.all([hits[c][n] for c in members], axis=0) for n in names} if members else {}
    return _Verdicts(names, scores, hits, consensus, pairings, *_presence(exp, saved))


def _presence(
    exp: Experiment, saved: dict[str, Any]
) -> tuple[dict[str, np.ndarray] | None, dict[str, Any] | None]:
    """With a detector: set -> which images show the object (presence score above
    ``max_presence``), from the detect stage's records, and what the records say made them
    (detector, weights, query); (None, None) without a detector."""
    if exp.config.detector is None:
        return None, None
    present, record = {}, {}
    for n, scored in saved.items():
        record = json.loads(exp.layout.presence(n).read_text(encoding="utf-8"))
        scores = record["presence"]
        missing = [i for i in scored.spurious.images if i not in scores]
        if missing:
            raise SpurcliError(
                f"{exp.layout.presence(n)} has no presence score for {missing[0]}: "
                "run again to detect the set anew"
            )
        present[n] = np.array([scores[i] > exp.config.max_presence for i in scored.spurious.images])
    return present, {key: value for key, value in record.items() if key != "presence"}


# Rates of each set from per-run hits: {set: {"rate", "ci", ...}}. One run: Wilson intervals;
# several: the cluster bootstrap.
Rates = Callable[[list[dict[str, np.ndarray]]], dict[str, dict[str, Any]]]


def _wilson_rates(hits_of: list[dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    (hits,) = hits_of
    return {
        n: {"rate": float(h.mean()), "ci": metrics.rate_interval(h)}
        if h.size
        else {"rate": None, "ci": None}
        for n, h in hits.items()
    }


def summarize(exp: Experiment) -> dict[str, Any]:
    """The run's answer, from the score files of every set (see the module docstring): one
    training run per arm, or pooled over the replicates' runs with clustered intervals; the
    primary comparison first, every other test Holm-corrected."""
    runs = exp.replicates()
    victims = _victims(exp, runs[0])
    verdicts = [_run_verdicts(run, victims.members) for run in runs]
    if len(runs) == 1:
        summary = _summarize_run(exp, victims, verdicts[0])
        summary["replication"] = {
            "replicates": 1,
            "note": "unreplicated: one training run per arm, so every interval covers the "
            "sampling of images from two fixed checkpoints, not the training noise of the method",
        }
    else:
        summary = _summarize_pooled(exp, victims, runs, verdicts)
    return _with_tests(exp, summary)


def _common(exp: Experiment, victims: _Victims) -> tuple[dict[str, str], list[str]]:
    """The notes and exclusions that do not depend on the numbers."""
    notes: list[str] = []
    runs = exp.replicates()
    for run in runs:
        # "in replicate 2" only where there are several training runs (each its own split)
        where = f" (replicate {run.replicate})" if len(runs) > 1 else ""
        split = run.split
        if not split.held_out:
            notes.append(
                f"No reference image was held out{where} ({len(split.train)} references, "
                f"train_references = {exp.config.train_references}): the generated images are "
                "judged against the images they were trained on."
            )
        if split.moved:
            notes.append(
                f"{len(split.moved)} held-out reference(s) moved into training{where} as "
                "near-duplicates of training ones: "
                + "; ".join(f"{m['file']} ~ {m['duplicate_of']} ({m['why']})" for m in split.moved)
            )
        if split.not_independent:
            notes.append(
                f"The held-out references are not independent of the training ones{where}: "
                f"{len(split.not_independent)} of them share a photo with a training image "
                "(near_duplicate_references = keep): "
                + "; ".join(
                    f"{m['file']} ~ {m['duplicate_of']} ({m['why']})" for m in split.not_independent
                )
            )
    excluded = {
        c: "also the SFSL extractor (same model and weights): the images were optimised "
        "against it, so its verdict is not independent evidence"
        if c in victims.circular
        else why
        for c, why in victims.left_out.items()
    }
    if victims.circular:
        notes.append(
            f"{', '.join(victims.circular)}: also the SFSL extractor, marked as circular"
            + (" and left out of the consensus." if exp.config.exclude_circular else ".")
        )
    return excluded, notes


def _summarize_run(exp: Experiment, victims: _Victims, v: _Verdicts) -> dict[str, Any]:
    """One training run per arm: exact tests on the images (see the module docstring)."""
    circular = victims.circular
    excluded, notes = _common(exp, victims)
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
        "classifiers": victims.members,
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
    similarity = similarity_summary(exp, compared_similarity(exp))
    notes += similarity.pop("notes")
    object_free = object_free_summary(exp, victims, [v], _wilson_rates, WILSON)
    if object_free is None:
        notes.append(NO_DETECTOR_NOTE)
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
        "similarity": similarity,
        **_headline(object_free),
        "interval": f"{WILSON} (rates); differences: see each entry's test",
        "notes": notes,
        "reference_set": REFERENCES,
    }


def _weights(scores: dict[str, Any], names: list[str], clf: str) -> dict[str, Any]:
    entry = scores[names[0]]["classifiers"][clf]
    return {"weights": entry["weights"], "weights_id": entry.get("weights_id")}


def _summarize_pooled(
    exp: Experiment, victims: _Victims, runs: list[Experiment], verdicts: list[_Verdicts]
) -> dict[str, Any]:
    """Several training runs per arm: every rate and difference pooled over the runs, with
    the two-stage cluster bootstrap (`spurcli.evaluate.clustered`); each run's own rates and
    similarity figures under ``per_replicate``."""
    circular = victims.circular
    excluded, notes = _common(exp, victims)
    names = verdicts[0].names
    resamples = exp.compare.bootstrap or CLUSTER_RESAMPLES
    seed = exp.compare.bootstrap_seed

    def rates(hits_of: list[dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
        pooled = {
            n: cluster_rate([h[n] for h in hits_of], resamples, derive_seed(seed, n)) for n in names
        }
        for entry in pooled.values():
            if not entry["n"]:  # no image at all (object-free rates): no rate
                entry.update(rate=None, ci=None)
        return pooled

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
    consensus: dict[str, Any] = {"classifiers": victims.members}
    if verdicts[0].consensus:
        hits_of = [v.consensus for v in verdicts]
        pooled = rates(hits_of)
        consensus["all"] = {n: pooled[n]["rate"] for n in names}
        consensus["all_ci"] = {n: pooled[n]["ci"] for n in names}
        consensus["all_per_run"] = {n: pooled[n]["per_run"] for n in names}
        consensus["differences"] = pooled_differences(hits_of, "consensus")
    else:
        consensus.update({"all": {}, "all_ci": {}, "differences": {}})
    compared = [compared_similarity(run) for run in runs]  # each compare JSON read once
    similarities = [similarity_summary(run, c) for run, c in zip(runs, compared, strict=True)]
    notes += similarities[0].pop("notes")
    object_free = object_free_summary(exp, victims, verdicts, rates, INTERVAL)
    if object_free is None:
        notes.append(NO_DETECTOR_NOTE)
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
            "similarity": similarity["comparisons"],
        }
        for run, v, similarity in zip(runs, verdicts, similarities, strict=True)
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
        "similarity": {  # pooled over the runs; each run's own figures are in per_replicate
            **{k: value for k, value in similarities[0].items() if k != "comparisons"},
            "interval": POOLED_SIMILARITY_INTERVAL,
            "comparisons": pooled_similarity(
                [s["comparisons"] for s in similarities],
                [nearest_cosines(c) for c in compared],
                resamples,
                seed,
            ),
        },
        **_headline(object_free),
        "interval": INTERVAL,
        "per_replicate": per_replicate,
        "notes": notes,
        "reference_set": REFERENCES,
    }


SIMILARITY_INTERVAL = (
    "95% seeded percentile bootstrap over images: mean_cosine resamples the images of both sets "
    "independently, nn_cosine_mean those of the first set; training runs are not resampled"
)


NO_DETECTOR_NOTE = "no detector: rates may include images of the object itself"

POOLED_SIMILARITY_INTERVAL = (
    "pooled over the training runs: nn_cosine_mean over every run's images, with the 95% "
    "percentile interval of a two-stage cluster bootstrap (training runs, then images); the "
    "other figures the mean of the runs' (nn_cosine_max their largest), without an interval; "
    "every run's value in per_run, and its own intervals under per_replicate"
)


WILSON = "95% Wilson score interval"


def object_free_summary(
    exp: Experiment, victims: _Victims, verdicts: list[_Verdicts], rates: Rates, interval: str
) -> dict[str, Any] | None:
    """With a detector: per set the presence rate (images whose presence score is above
    ``max_presence``: they show the object), and per classifier and for the consensus the
    spurious rate among the other, object-free images, pooled over the training runs; each with
    its interval (``rates``). None without a detector."""
    if exp.config.detector is None:
        return None
    names = verdicts[0].names
    present = [v.present for v in verdicts]
    presence = rates(present)  # type: ignore[arg-type]
    record = verdicts[0].detected_by or {}

    def among_free(hits_of: list[dict[str, np.ndarray]]) -> tuple[dict[str, Any], ...]:
        pooled = rates([v.object_free(h) for v, h in zip(verdicts, hits_of, strict=True)])
        return {n: pooled[n]["rate"] for n in names}, {n: pooled[n]["ci"] for n in names}

    classifiers = {}
    for clf in exp.compare.classifiers:
        rate, ci = among_free([v.hits[clf] for v in verdicts])
        classifiers[clf] = {"object_free_rate": rate, "object_free_rate_ci": ci}
    consensus: dict[str, Any] = {"classifiers": victims.members, "all": {}, "all_ci": {}}
    if victims.members:
        consensus["all"], consensus["all_ci"] = among_free([v.consensus for v in verdicts])
    limit = exp.config.max_presence
    return {
        "detector": record.get("detector"),
        "weights": record.get("weights"),
        "weights_id": record.get("weights_id"),
        "query": record.get("query"),
        "max_presence": limit,
        "rule": f"an image shows the object when its presence score is above {limit}",
        "presence_rate": {n: presence[n]["rate"] for n in names},
        "presence_rate_ci": {n: presence[n]["ci"] for n in names},
        "n_object_free": {n: int(sum((~p[n]).sum() for p in present)) for n in names},  # type: ignore[index]
        "classifiers": classifiers,
        "consensus": consensus,
        "interval": interval,
    }


def _headline(object_free: dict[str, Any] | None) -> dict[str, Any]:
    return {
        # with a detector the headline is the rate among the images that show no object
        "headline": "object_free_rate" if object_free is not None else "spurious_rate",
        "object_free": object_free,
        "object_check": NO_DETECTOR_NOTE if object_free is None else None,
    }


def _rates_table(
    sets: list[str],
    columns: dict[str, tuple[dict[str, Any], dict[str, Any]]],
    size: dict[str, str],
) -> tuple[list[str], list[list[Any]]]:
    """Sets as rows (``size``: what the row's name adds in brackets), ``columns``: name ->
    (rates by set, intervals by set)."""
    rows = [
        [
            f"{_short(s)} ({size[s]})",
            *(_rate_entry(r.get(s), ci.get(s)) for r, ci in columns.values()),
        ]
        for s in sets
    ]
    return ["set (images)", *columns], rows


def _victim_columns(
    summary: dict[str, Any], entries: dict[str, Any], consensus: dict[str, Any], key: str
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """A column per victim (``key``: which of its rates) and one for the consensus."""
    columns = {
        _victim_name(c, summary["classifiers"][c]): (e[key], e[f"{key}_ci"])
        for c, e in entries.items()
    }
    if consensus["classifiers"]:
        columns["consensus"] = (consensus["all"], consensus["all_ci"])
    return columns


def object_free_table(summary: dict[str, Any], interval: str) -> dict[str, Any] | None:
    """The headline with a detector: the spurious rate among each set's object-free images per
    victim (and the consensus), and how many images show the object; None without a detector."""
    free = summary.get("object_free")
    if not free:
        return None
    sets = list(summary["n_images"])
    columns = {
        f"object present ({free['detector']})": (free["presence_rate"], free["presence_rate_ci"]),
        **_victim_columns(summary, free["classifiers"], free["consensus"], "object_free_rate"),
    }
    size = {s: f"{free['n_object_free'][s]} of {summary['n_images'][s]} object-free" for s in sets}
    header, rows = _rates_table(sets, columns, size)
    target = summary["target"]
    return {
        "title": "object-free rates (the headline)",
        "columns": ["set (object-free of all)", *header[1:]],
        "rows": rows,
        "caption": f"The headline: the spurious rate among the images in which "
        f"{free['detector']} finds no {target['name']} (presence score <= "
        f"{free['max_presence']}), with {interval}; the first column is the share of images in "
        "which it finds one. The rates above count every image.",
    }


SIMILARITY_FIGURES = (
    "mean_cosine",
    "mean_cosine_ci",
    "nn_cosine_mean",
    "nn_cosine_mean_ci",
    "nn_cosine_max",
    "within_cosine_a",
)


def similarity_summary(
    exp: Experiment, compared: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """Feature-space similarity of each comparison, every space marked circular (the SFSL
    extractor's, which SFSL optimised towards the references) or not, with its interval.
    ``compared``: `compared_similarity` of ``exp``, each compare JSON read once."""
    weights = exp.feature_spaces()
    spaces, circular = list(weights), exp.circular_spaces()
    independent = [e for e in spaces if e not in circular]
    untrained = [e for e in independent if weights[e] == "random"]
    per_pair = {
        pair: {
            e: {**{k: sim.get(k) for k in SIMILARITY_FIGURES}, "circular": e in circular}
            for e, sim in similarity.items()
        }
        for pair, similarity in compared
    }
    notes = []
    if circular:
        notes.append(
            f"Feature similarity in the space of {', '.join(circular)} is circular: SFSL "
            "optimised the images towards the references in that space, so it is no evidence."
            + (
                f" Measured also in {', '.join(independent)}, a space SFSL did not optimise."
                if independent
                else ""
            )
            + (
                f" {', '.join(untrained)} has random weights: its space is no evidence either."
                if untrained
                else ""
            )
        )
    if not independent and spaces:
        notes.append(
            "No feature space independent of SFSL: add an extractor that is not the SFSL "
            "extractor to [compare] extractors."
        )
    return {
        "circular_spaces": circular,
        "independent_spaces": independent,
        "interval": SIMILARITY_INTERVAL,
        "comparisons": per_pair,
        "notes": notes,
    }


def compared_similarity(exp: Experiment) -> list[tuple[str, dict[str, Any]]]:
    """("a-vs-b", its compare JSON's similarity per feature space) for each comparison."""
    pairs = []
    for a, b in exp.comparisons():
        data = json.loads(exp.layout.comparison(a, b).read_text(encoding="utf-8"))
        pairs.append((f"{a}-vs-{b}", data.get("similarity", {})))
    return pairs


def nearest_cosines(compared: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per comparison and feature space, each first-set image's cosine to its nearest neighbour
    in the second set, as a run's compare JSON lists them (``nearest``; `compared_similarity`)."""
    return {
        pair: {
            e: np.array([n["cosine"] for n in sim.get("nearest", [])], dtype=float)
            for e, sim in similarity.items()
        }
        for pair, similarity in compared
    }


def pooled_similarity(
    runs: list[dict[str, Any]],
    nearest: list[dict[str, dict[str, np.ndarray]]],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Each comparison's similarity figures over the training runs, in a run's shape.

    ``nn_cosine_mean`` is the mean over every run's images (``nearest``: each run's per-image
    cosines), its interval the two-stage cluster bootstrap the rates get; the other figures are
    the mean of the runs' (the largest for ``nn_cosine_max``), without an interval (``mean_cosine``
    averages every pair of images, which the image-level bootstrap does not resample). A figure a
    run lacks (None) is left out; ``per_run`` keeps every run's."""
    pooled: dict[str, Any] = {}
    for pair, spaces in runs[0].items():
        pooled[pair] = {}
        for space, first in spaces.items():
            figures = [run.get(pair, {}).get(space, {}) for run in runs]
            entry: dict[str, Any] = {"circular": first["circular"], "per_run": {}}
            for key in SIMILARITY_FIGURES:
                if key.endswith("_ci"):
                    entry[key] = None
                    continue
                values = [f.get(key) for f in figures]
                entry["per_run"][key] = values
                known = [v for v in values if v is not None]
                pool = max if key == "nn_cosine_max" else np.mean
                entry[key] = float(pool(known)) if known else None
            cosines = [run.get(pair, {}).get(space, np.array([])) for run in nearest]
            if all(len(c) for c in cosines):
                bootstrap = cluster_rate(cosines, resamples, derive_seed(seed, pair, space))
                entry["nn_cosine_mean"] = bootstrap["rate"]
                entry["nn_cosine_mean_ci"] = bootstrap["ci"]
            pooled[pair][space] = entry
    return pooled


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


def _weights_text(clf: str, entry: dict[str, Any]) -> str:
    """``name = weights (sha256 0123456789ab)``: the exact weights behind a victim's column."""
    sha = (entry.get("weights_id") or {}).get("sha256")
    return f"{clf} = {entry['weights']}" + (f" (sha256 {sha[:12]})" if sha else "")


def _short(name: str) -> str:
    """A set's label short enough for a 100-column terminal table."""
    label = LABELS[name].replace("DreamBooth only", "DreamBooth")
    return label.replace(" references", " refs").replace(" (recontext)", " recontext")


def _difference_row(
    label: str, victims: str, diff: dict[str, Any], p_key: str, replicated: bool = False
) -> list[str | dict[str, str]]:
    """A difference as cells; coloured by the p-value printed (``p_key``: the raw one for the
    primary test, Holm's for the others) below 0.05, and never when the difference is 0.
    ``replicated``: a last cell counts the training runs on each side (`runs_ahead`)."""
    p = diff.get(p_key)
    delta = diff["delta"]
    css = {1: "pos", -1: "neg", 0: ""}[shown_as_real(diff, p_key)]
    ci = diff.get("delta_ci")
    cells = [
        label,
        {"text": victims, "css": ""},
        {"text": f"{delta:+.3f}", "css": css},
        {"text": f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-", "css": ""},
        {"text": fmt_p(p) or "-", "css": css},
    ]
    if replicated:
        cells.append({"text": runs_ahead(diff.get("per_run") or []), "css": ""})
    return cells


def runs_ahead(per_run: list[float | None]) -> str:
    """'2+ 0- of 2': in how many training runs the first set's rate was higher, and lower. The
    bootstrap's p speaks for these runs; whether the method wins in runs in general rests on
    this count (a sign test over K runs cannot go below 2 / 2**K)."""
    known = [d for d in per_run if d is not None]
    if not known:
        return "-"
    higher, lower = sum(d > 0 for d in known), sum(d < 0 for d in known)
    return f"{higher}+ {lower}- of {len(known)}"


def summary_tables(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary as tables of cells ``{"text", "css"}`` for the report and the terminal, each
    readable at 100 columns: the rates (sets as rows, victims as columns), with a detector the
    rates among the object-free images (the headline), and the differences (one per row, the
    primary test first)."""
    sets = list(summary["n_images"])
    victims = summary["classifiers"]
    consensus = summary["consensus"]
    columns, rows = _rates_table(
        sets,
        _victim_columns(summary, victims, consensus, "spurious_rate"),
        {s: str(summary["n_images"][s]) for s in sets},
    )
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
        f"{members} at once. *: random weights; (circ.): the SFSL extractor itself. Weights: "
        + "; ".join(_weights_text(c, e) for c, e in victims.items())
        + f". {summary['replication']['note']}.",
    }

    def label(name: str) -> str:
        return " - ".join(_short(part) for part in _split_pair(name, summary["n_images"]))

    primary = summary["primary"]
    diff_rows = []
    if primary.get("delta") is not None:
        diff_rows.append(
            _difference_row(
                f"primary: {label(primary['comparison'])}",
                "consensus",
                primary,
                "p_value",
                replicated,
            )
        )
    for name, diff in consensus["differences"].items():
        if name != primary["comparison"]:
            diff_rows.append(_difference_row(label(name), "consensus", diff, "p_holm", replicated))
    for clf, entry in victims.items():
        for name, diff in entry["differences"].items():
            victim = _victim_name(clf, entry)
            diff_rows.append(_difference_row(label(name), victim, diff, "p_holm", replicated))
    tests = summary["tests"]
    tests_used = sorted({row_diff["test"] for row_diff in _all_differences(summary)})
    differences = {
        "title": "differences",
        "columns": ["difference", "victims", "Δ", "95% interval", "p"]
        + (["runs"] if replicated else []),
        "rows": diff_rows,
        "caption": f"Δ: the first set's rate minus the second's. The primary comparison "
        f"({primary['declared']}) is tested alone; p of the other {tests['secondary']} tests is "
        f"Holm-adjusted. Tests: {'; '.join(tests_used)} (paired: image i of both sets shares "
        "its seed and prompt). Coloured where the printed p is below 0.05 (red: the first set is "
        f"called {target['name']} more often). References: "
        f"{summary['references']['judged_against']}."
        + (
            " Runs: in how many training runs the first set's rate was higher (+) and lower "
            "(-); p speaks for these runs, and a sign test over them cannot go below "
            f"{2 / 2 ** summary['replication']['replicates']:.2g}."
            if replicated
            else ""
        ),
    }
    free = object_free_table(summary, interval)
    memorised = memorisation_table(summary)
    return [rates, *([free] if free else []), differences, *([memorised] if memorised else [])]


def memorisation_table(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Each set's cosine to its nearest training reference, in every feature space: the mean
    over the set's images (a run's interval; the runs' range when replicated) and the largest.
    The held-out references' row is the yardstick. None without held-out references."""
    runs = [r["similarity"] for r in summary.get("per_replicate", [])] or [
        summary["similarity"]["comparisons"]
    ]
    pooled = summary["similarity"].get("comparisons", {})  # replicated: over the runs
    suffix = f"-vs-{TRAIN_REFERENCES}"
    pairs = [p for p in runs[0] if p.endswith(suffix)]
    if not pairs:
        return None
    spaces = list(runs[0][pairs[0]])
    rows = []
    for pair in pairs:
        name = pair[: -len(suffix)]
        cells = []
        for space in spaces:
            figures = [run[pair][space] for run in runs if space in run.get(pair, {})]
            means = [f["nn_cosine_mean"] for f in figures if f["nn_cosine_mean"] is not None]
            if not means:
                cells.append({"text": "-", "css": ""})
                continue
            mean, ci = np.mean(means), figures[0].get("nn_cosine_mean_ci")
            spread = ""
            if len(runs) > 1:  # the pooled figure and its cluster interval, and the runs' range
                entry = pooled.get(pair, {}).get(space, {})
                mean, ci = entry.get("nn_cosine_mean", mean), entry.get("nn_cosine_mean_ci")
                spread = f" (runs {min(means):.3f}-{max(means):.3f})"
            interval = f" [{ci[0]:.3f},{ci[1]:.3f}]" if ci else ""
            largest = max(f["nn_cosine_max"] for f in figures if f["nn_cosine_max"] is not None)
            text = f"{mean:.3f}{interval}{spread}, max {largest:.3f}"
            alike = [f["within_cosine_a"] for f in figures if f["within_cosine_a"] is not None]
            if alike:  # None in comparisons made before it was measured
                text += f", alike {np.mean(alike):.2f}"
                if len(runs) > 1:
                    text += f" (runs {min(alike):.2f}-{max(alike):.2f})"
            cells.append({"text": text, "css": ""})
        rows.append([f"{_short(name)} ({summary['n_images'].get(name, '?')})", *cells])
    circular = summary["similarity"].get("circular_spaces", [])
    columns = [f"{s} (circ.)" if s in circular else s for s in spaces]
    spread = (
        "its 95% bootstrap interval over images"
        if len(runs) == 1
        else "its 95% two-stage cluster bootstrap interval (runs, then images) and the runs' range"
    )
    return {
        "title": "memorisation: cosine to the nearest training reference",
        "columns": ["set (images)", *columns],
        "rows": rows,
        "caption": "Each image's cosine to its nearest training reference in an extractor's "
        f"feature space (near 1: a copy): the mean over the set, with {spread}, and the "
        "largest. The held-out references are the yardstick: new images of the feature, none "
        "a copy; a set well above them is nearer its training images than a new image of the "
        "feature is. Alike: the mean cosine between two different images of the set (1: one "
        "image over and over; the mean over runs, with their range when replicated), which "
        "rises when fine-tuning narrows what the model draws. (circ.): the SFSL extractor's "
        "space, which SFSL optimised towards the references.",
    }


def _all_differences(summary: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [*summary["classifiers"].values(), summary["consensus"]]
    return [d for entry in entries for d in entry["differences"].values()]


def _split_pair(name: str, sets: dict[str, int]) -> tuple[str, str]:
    """'sfsl-recontext-vs-baseline-recontext' -> ('sfsl-recontext', 'baseline-recontext'), for
    set names that hold '-'."""
    for a in sets:
        if name.startswith(f"{a}-vs-") and name[len(a) + 4 :] in sets:
            return a, name[len(a) + 4 :]
    raise ValueError(f"not a pair of sets: {name}")
