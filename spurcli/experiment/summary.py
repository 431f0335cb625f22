"""The answer of a `spurcli run`: per classifier, how often each set's images are put in the
target class, with 95% intervals, and whether the differences that matter are real.

    from spurcli.experiment import load_experiment
    from spurcli.experiment.summary import summarize, summary_table
    summary = summarize(load_experiment("examples/quickstart.toml"))   # after the run's scores
    summary["classifiers"]["effnet-lite0"]["differences"]["generated-vs-baseline"]
    # {"delta": 0.31, "delta_ci": [0.12, 0.48], "p_value": 0.002, "test": "McNemar exact", ...}
    summary_table(summary)      # {"columns", "rows", "caption"} for the report and the terminal

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
from pathlib import Path
from typing import Any

import numpy as np

from spurcli.errors import SpurcliError
from spurcli.evaluate import metrics
from spurcli.evaluate.compare import find_pairs
from spurcli.experiment.layout import REFERENCES
from spurcli.experiment.plan import BASELINE, DREAMBOOTH, LABELS, SFSL, Experiment
from spurcli.experiment.results import model_identities, read_json, saved_scores
from spurcli.records import FINETUNE_CARD


def _differences(exp: Experiment) -> list[tuple[str, str, bool]]:
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


def summarize(exp: Experiment) -> dict[str, Any]:
    """The run's answer, from the score files of every set (see the module docstring)."""
    names = exp.all_sets()
    scores = {n: json.loads(exp.layout.scores(n).read_text(encoding="utf-8")) for n in names}
    saved = {n: saved_scores(exp, n) for n in names}
    target = scores[names[0]]["target"]
    k = target["index"]
    sfsl_card = read_json(Path(exp.arms()[SFSL].output_dir) / FINETUNE_CARD) or {}
    recorded = {
        "extractor": (sfsl_card.get("extractor") or {}).get("weights_id"),
        "classifiers": {
            c: scores[names[0]]["classifiers"][c].get("weights_id") for c in exp.compare.classifiers
        },
    }
    circular = exp.circular(recorded)
    left_out = exp.left_out_of_consensus(recorded)  # the same in the compare JSON and the report
    consensus_members = [c for c in exp.compare.classifiers if c not in left_out]
    notes: list[str] = []
    if not exp.split.held_out:
        notes.append(
            f"No reference image was held out ({len(exp.split.train)} references, "
            f"train_references = {exp.config.train_references}): the generated images are judged "
            "against the images they were trained on."
        )
    if exp.split.moved:
        notes.append(
            f"{len(exp.split.moved)} held-out reference(s) moved into training as near-duplicates "
            "of training ones: "
            + "; ".join(f"{m['file']} ~ {m['duplicate_of']} ({m['why']})" for m in exp.split.moved)
        )
    if exp.split.not_independent:
        notes.append(
            f"The held-out references are not independent of the training ones: "
            f"{len(exp.split.not_independent)} of them share a photo with a training image "
            "(near_duplicate_references = keep): "
            + "; ".join(
                f"{m['file']} ~ {m['duplicate_of']} ({m['why']})" for m in exp.split.not_independent
            )
        )
    unpaired: set[str] = set()
    pairings: dict[str, Any] = {}
    for a, b, paired in _differences(exp):
        pairing = find_pairs(
            exp.set_dir(a),
            saved[a].spurious.images,
            exp.set_dir(b),
            saved[b].spurious.images,
            "auto" if paired else "no",
        )
        pairings[f"{a}-vs-{b}"] = pairing
        if paired and not pairing.paired:
            unpaired.add(f"{a}-vs-{b} ({pairing.rule})")

    def difference(hits: dict[str, np.ndarray], a: str, b: str) -> dict[str, Any]:
        pairing = pairings[f"{a}-vs-{b}"]
        hits_b = hits[b] if pairing.partner is None else hits[b][pairing.partner]
        result = metrics.rate_difference(hits[a], hits_b, paired=pairing.paired)
        return {**result, "pairing": pairing.rule if pairing.paired else "unpaired"}

    per_classifier: dict[str, Any] = {}
    hits_of: dict[str, dict[str, np.ndarray]] = {}  # classifier -> set -> per-image hits
    for c, clf in enumerate(exp.compare.classifiers):
        hits = {n: saved[n].spurious.top1[c] == k for n in names}
        hits_of[clf] = hits
        per_classifier[clf] = {
            "weights": scores[names[0]]["classifiers"][clf]["weights"],
            "weights_id": scores[names[0]]["classifiers"][clf].get("weights_id"),
            "circular": clf in circular,
            "spurious_rate": {n: scores[n]["classifiers"][clf]["spurious_rate"] for n in names},
            "spurious_rate_ci": {n: metrics.rate_interval(hits[n]) for n in names},
            "mean_target_prob": {
                n: scores[n]["classifiers"][clf]["mean_target_prob"] for n in names
            },
            "differences": {f"{a}-vs-{b}": difference(hits, a, b) for a, b, _ in _differences(exp)},
        }
    consensus: dict[str, Any] = {"classifiers": consensus_members, "all": {}, "all_ci": {}}
    consensus["differences"] = {}
    if consensus_members:
        every = {n: np.all([hits_of[c][n] for c in consensus_members], axis=0) for n in names}
        consensus["all"] = {n: float(np.mean(h)) for n, h in every.items()}
        consensus["all_ci"] = {n: metrics.rate_interval(h) for n, h in every.items()}
        consensus["differences"] = {
            f"{a}-vs-{b}": difference(every, a, b) for a, b, _ in _differences(exp)
        }
    excluded = {
        c: "also the SFSL extractor (same model and weights): the images were optimised "
        "against it, so its verdict is not independent evidence"
        if c in circular
        else why
        for c, why in left_out.items()
    }
    if circular:
        notes.append(
            f"{', '.join(circular)}: also the SFSL extractor, marked as circular"
            + (" and left out of the consensus." if exp.config.exclude_circular else ".")
        )
    similarity = similarity_summary(exp)
    notes += similarity.pop("notes")
    object_free = object_free_summary(exp, saved, hits_of, consensus_members)
    if object_free is None:
        notes.append(NO_DETECTOR_NOTE)
    if unpaired:
        notes.append(
            "Not paired one to one, tested as independent sets: " + ", ".join(sorted(unpaired))
        )
    return {
        "target": target,
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
        # with a detector the headline is the rate among the images that show no object
        "headline": "object_free_rate" if object_free is not None else "spurious_rate",
        "object_free": object_free,
        "object_check": NO_DETECTOR_NOTE if object_free is None else None,
        "interval": "95% Wilson score interval (rates); differences: see each entry's test",
        "notes": notes,
        "reference_set": REFERENCES,
    }


SIMILARITY_INTERVAL = (
    "95% seeded percentile bootstrap over images: mean_cosine resamples the images of both sets "
    "independently, nn_cosine_mean those of the first set; training runs are not resampled"
)


NO_DETECTOR_NOTE = "no detector: rates may include images of the object itself"


def object_free_summary(
    exp: Experiment,
    saved: dict[str, Any],
    hits_of: dict[str, dict[str, np.ndarray]],
    members: list[str],
) -> dict[str, Any] | None:
    """With a detector: per set the presence rate (images whose presence score is above
    ``max_presence``: they show the object), and per classifier and for the consensus the
    spurious rate among the other, object-free images; each with its Wilson interval. None
    without a detector."""
    if exp.config.detector is None:
        return None
    limit = exp.config.max_presence
    names = list(saved)
    present: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}
    for n in names:
        record = json.loads(exp.layout.presence(n).read_text(encoding="utf-8"))
        scores = record["presence"]
        missing = [i for i in saved[n].spurious.images if i not in scores]
        if missing:
            raise SpurcliError(
                f"{exp.layout.presence(n)} has no presence score for {missing[0]}: "
                "run again to detect the set anew"
            )
        present[n] = np.array([scores[i] > limit for i in saved[n].spurious.images], bool)

    def among_free(hits: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
        rates, cis = {}, {}
        for n in names:
            free = hits[n][~present[n]]
            rates[n] = float(free.mean()) if free.size else None
            cis[n] = metrics.rate_interval(free) if free.size else None
        return rates, cis

    classifiers = {}
    for clf, hits in hits_of.items():
        rate, ci = among_free(hits)
        classifiers[clf] = {"object_free_rate": rate, "object_free_rate_ci": ci}
    consensus: dict[str, Any] = {"classifiers": members, "all": {}, "all_ci": {}}
    if members:
        every = {n: np.all([hits_of[c][n] for c in members], axis=0) for n in names}
        consensus["all"], consensus["all_ci"] = among_free(every)
    return {
        "detector": record.get("detector"),
        "weights": record.get("weights"),
        "weights_id": record.get("weights_id"),
        "query": record.get("query"),
        "max_presence": limit,
        "rule": f"an image shows the object when its presence score is above {limit}",
        "presence_rate": {n: float(present[n].mean()) for n in names},
        "presence_rate_ci": {n: metrics.rate_interval(present[n]) for n in names},
        "n_object_free": {n: int((~present[n]).sum()) for n in names},
        "classifiers": classifiers,
        "consensus": consensus,
        "interval": "95% Wilson score interval",
    }


def object_free_table(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The headline with a detector: per classifier (and the consensus) the spurious rate among
    the object-free images of each set, and the presence rate; None without a detector."""
    free = summary.get("object_free")
    if not free:
        return None
    sets = [s for s in summary["n_images"] if not s.endswith("-recontext")]
    columns = [
        "classifier",
        *(
            f"{LABELS[s]} ({free['n_object_free'][s]} of {summary['n_images'][s]} object-free)"
            for s in sets
        ),
    ]
    rows = [
        [
            f"object present ({free['detector']})",
            *(_rate_entry(free["presence_rate"][s], free["presence_rate_ci"][s]) for s in sets),
        ]
    ]
    for clf, entry in free["classifiers"].items():
        name = clf + (
            " (circular: SFSL extractor)" if summary["classifiers"][clf]["circular"] else ""
        )
        rows.append(
            [
                name,
                *(
                    _rate_entry(entry["object_free_rate"][s], entry["object_free_rate_ci"][s])
                    for s in sets
                ),
            ]
        )
    consensus = free["consensus"]
    if consensus["classifiers"]:
        rows.append(
            [
                f"consensus of {', '.join(consensus['classifiers'])}",
                *(_rate_entry(consensus["all"][s], consensus["all_ci"][s]) for s in sets),
            ]
        )
    target = summary["target"]
    caption = (
        f"The headline: the spurious rate among the images in which {free['detector']} finds no "
        f"{target['name']} (presence score <= {free['max_presence']}), with its 95% Wilson "
        "interval; the first row is the fraction of images in which it finds one. The table "
        "above gives the raw rates over every image."
    )
    return {
        "title": "Object-free rates (headline)",
        "columns": columns,
        "rows": rows,
        "caption": caption,
    }


SIMILARITY_FIGURES = ("mean_cosine", "mean_cosine_ci", "nn_cosine_mean", "nn_cosine_mean_ci")


def similarity_summary(exp: Experiment) -> dict[str, Any]:
    """Feature-space similarity of each comparison, every space marked circular (the SFSL
    extractor's, which SFSL optimised towards the references) or not, with its interval."""
    weights = exp.feature_spaces()
    spaces, circular = list(weights), exp.circular_spaces()
    independent = [e for e in spaces if e not in circular]
    untrained = [e for e in independent if weights[e] == "random"]
    per_pair: dict[str, Any] = {}
    for a, b in exp.comparisons():
        data = json.loads(exp.layout.comparison(a, b).read_text(encoding="utf-8"))
        per_pair[f"{a}-vs-{b}"] = {
            e: {
                **{
                    k: sim.get(k)
                    for k in (
                        "mean_cosine",
                        "mean_cosine_ci",
                        "nn_cosine_mean",
                        "nn_cosine_mean_ci",
                    )
                },
                "circular": e in circular,
            }
            for e, sim in data.get("similarity", {}).items()
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


def _rate_entry(value: float | None, ci: list[float] | None) -> dict[str, str]:
    if value is None:
        return {"text": "-", "css": ""}
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return {"text": f"{value:.3f}{interval}", "css": ""}


def _delta(diff: dict[str, Any] | None) -> dict[str, str]:
    """A tested difference: coloured only when its interval excludes 0."""
    if diff is None:
        return {"text": "-", "css": ""}
    lo, hi = diff["delta_ci"]
    significant = lo > 0 or hi < 0
    css = ("pos" if lo > 0 else "neg") if significant else ""
    p = diff["p_value"]
    text = f"{diff['delta']:+.3f} [{lo:+.2f}, {hi:+.2f}] p={p:.2g}"
    return {"text": text, "css": css}


def summary_table(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as columns and rows of cells ``{"text", "css"}`` (report and terminal)."""

    sets = [s for s in summary["n_images"] if not s.endswith("-recontext")]
    first = next(iter(summary["classifiers"].values()))
    deltas = [d for d in first["differences"] if "recontext" not in d]
    columns = ["classifier", *(f"{LABELS[s]} ({summary['n_images'][s]})" for s in sets)]
    columns += [
        "Δ " + " - ".join(LABELS[part] for part in _split_pair(d, summary["n_images"]))
        for d in deltas
    ]
    rows = []
    for clf, entry in summary["classifiers"].items():
        name = clf + (" (random weights)" if entry["weights"] == "random" else "")
        name += " (circular: SFSL extractor)" if entry["circular"] else ""
        cells = [_rate_entry(entry["spurious_rate"][s], entry["spurious_rate_ci"][s]) for s in sets]
        cells += [_delta(entry["differences"][d]) for d in deltas]
        rows.append([name, *cells])
    consensus = summary["consensus"]
    if consensus["classifiers"]:
        cells = [_rate_entry(consensus["all"][s], consensus["all_ci"][s]) for s in sets]
        cells += [_delta(consensus["differences"].get(d)) for d in deltas]
        rows.append([f"consensus of {', '.join(consensus['classifiers'])}", *cells])
    target = summary["target"]
    caption = (
        f"spurious rate: the fraction of each set's images whose top-1 class is {target['index']} "
        f"{target['name']} (number of images in brackets), with its 95% Wilson interval. "
        "Δ: the first set's rate minus the second's, its 95% interval and the p-value of the "
        "exact test (McNemar for sets paired by seed, Fisher otherwise); coloured only when the "
        f"interval excludes 0. References: {summary['references']['judged_against']}."
    )
    return {"columns": columns, "rows": rows, "caption": caption}


def _split_pair(name: str, sets: dict[str, int]) -> tuple[str, str]:
    """'generated-vs-baseline' -> ('generated', 'baseline'), for set names that hold '-'."""
    for a in sets:
        if name.startswith(f"{a}-vs-") and name[len(a) + 4 :] in sets:
            return a, name[len(a) + 4 :]
    raise ValueError(f"not a pair of sets: {name}")
