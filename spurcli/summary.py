"""The answer of a `spurcli run`: per classifier, how often each set's images are put in the
target class, with 95% intervals, and whether the differences that matter are real.

    from spurcli.pipeline import load_experiment
    from spurcli.summary import summarize, summary_table
    summary = summarize(load_experiment("examples/quickstart.toml"))   # after the run's scores
    summary["classifiers"]["effnet-lite0"]["differences"]["generated-vs-baseline"]
    # {"delta": 0.31, "delta_ci": [0.12, 0.48], "p_value": 0.002, "test": "McNemar exact", ...}
    summary_table(summary)      # {"columns", "rows", "caption"} for the report and the terminal

The differences (`spurcli.metrics.rate_difference`):

- SFSL vs the untuned baseline, DreamBooth-only vs the baseline, and SFSL vs DreamBooth-only
  (SFSL's own contribution) are *paired*: image i of each set was sampled from the same seed and
  the same prompt (without [V] for the baseline), so the exact McNemar test applies. The pairs
  are matched by (prompt position, image index) from each set's manifest; a set whose images do
  not pair one to one falls back to the unpaired test, and the summary says so.
- Generated vs references is *unpaired* (Fisher's exact test); the references judged against are
  the held-out ones unless none could be held out (then the summary says so).

A victim classifier that is also the SFSL extractor (the same model and weights) was optimised
against: its rates are kept and marked ``"circular": true``, and it is left out of the consensus
unless the config says ``exclude_circular = false``; ``excluded_from_consensus`` says why.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from spurcli import metrics

PAIRED_BY_SEED = "paired: same seed and prompt, image by image"


def _differences(exp: Any) -> list[tuple[str, str, bool]]:
    """(set a, set b, paired by construction) for every difference the summary tests."""
    from spurcli.pipeline import DREAMBOOTH_ARM, REFERENCES, SFSL_ARM

    sets = exp.sample_sets()
    pairs = [(arm, "baseline", True) for arm in exp.arms() if "baseline" in sets]
    if DREAMBOOTH_ARM in sets:
        pairs.append((SFSL_ARM, DREAMBOOTH_ARM, True))
    pairs += [
        (f"{arm}-recontext", "baseline-recontext", True)
        for arm in exp.arms()
        if "baseline-recontext" in sets
    ]
    pairs += [(arm, REFERENCES, False) for arm in exp.arms()]
    return pairs


def _pair_keys(exp: Any, name: str) -> dict[str, tuple[int, int]] | None:
    """image file -> (prompt position, image index) of a sample set, from its manifest."""
    from spurcli.sample import MANIFEST, read_manifest

    sets = exp.sample_sets()
    if name not in sets:
        return None
    arm, templates = sets[name]
    prompts = [t.replace("[V]", exp.run.identifier) if arm else t for t in templates]
    position = {_normal(p): i for i, p in enumerate(prompts)}
    folder = exp.set_dir(name)
    if not (folder / MANIFEST).is_file():
        return None
    keys = {}
    for file, record in read_manifest(folder).items():
        prompt = _normal(record.get("prompt", ""))
        if prompt not in position or "index" not in record:
            return None
        keys[file] = (position[prompt], int(record["index"]))
    return keys


def _normal(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt).strip()


def _hits(rows: list[dict[str, Any]], classifier: str, target: int) -> dict[str, bool]:
    return {r["image"]: r["top1_index"] == target for r in rows if r["classifier"] == classifier}


def _aligned(
    hits_a: dict[str, bool], hits_b: dict[str, bool], keys_a: Any, keys_b: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """The two sets' hits in pair order, or None when they do not pair one to one."""
    if keys_a is None or keys_b is None or set(hits_a) != set(keys_a) or set(hits_b) != set(keys_b):
        return None
    by_key_b = {key: file for file, key in keys_b.items()}
    if sorted(keys_a.values()) != sorted(by_key_b):
        return None
    order = sorted(keys_a, key=keys_a.get)
    return (
        np.array([hits_a[f] for f in order]),
        np.array([hits_b[by_key_b[keys_a[f]]] for f in order]),
    )


def summarize(exp: Any) -> dict[str, Any]:
    """The run's answer, from the score files of every set (see the module docstring)."""
    from spurcli.pipeline import REFERENCES, _all_sets, _score_paths, model_identities, read_rows

    names = _all_sets(exp)
    scores = {n: json.loads(_score_paths(exp, n)[0].read_text(encoding="utf-8")) for n in names}
    rows = {n: read_rows(_score_paths(exp, n)[1]) for n in names}
    keys = {n: _pair_keys(exp, n) for n in names}
    target = scores[names[0]]["target"]
    k = target["index"]
    circular = exp.circular()
    consensus_members = [
        c for c in exp.compare.classifiers if not (exp.run.exclude_circular and c in circular)
    ]
    notes: list[str] = []
    if not exp.split.held_out:
        notes.append(
            f"No reference image was held out ({len(exp.split.train)} references, "
            f"train_references = {exp.run.train_references}): the generated images are judged "
            "against the images they were trained on."
        )
    unpaired: set[str] = set()

    def difference(hits: dict[str, dict[str, bool]], a: str, b: str, paired: bool) -> dict:
        aligned = _aligned(hits[a], hits[b], keys[a], keys[b]) if paired else None
        if paired and aligned is None:
            unpaired.add(f"{a}-vs-{b}")
        if aligned is not None:
            result = metrics.rate_difference(*aligned, paired=True)
            return {**result, "pairing": PAIRED_BY_SEED}
        result = metrics.rate_difference(list(hits[a].values()), list(hits[b].values()), False)
        return {**result, "pairing": "unpaired"}

    per_classifier: dict[str, Any] = {}
    all_hits: dict[str, dict[str, dict[str, bool]]] = {}
    for clf in exp.compare.classifiers:
        hits = {n: _hits(rows[n], clf, k) for n in names}
        all_hits[clf] = hits
        entry: dict[str, Any] = {
            "weights": scores[names[0]]["classifiers"][clf]["weights"],
            "weights_id": scores[names[0]]["classifiers"][clf].get("weights_id"),
            "circular": clf in circular,
            "spurious_rate": {n: scores[n]["classifiers"][clf]["spurious_rate"] for n in names},
            "spurious_rate_ci": {n: metrics.rate_interval(list(hits[n].values())) for n in names},
            "mean_target_prob": {
                n: scores[n]["classifiers"][clf]["mean_target_prob"] for n in names
            },
            "differences": {
                f"{a}-vs-{b}": difference(hits, a, b, paired) for a, b, paired in _differences(exp)
            },
        }
        per_classifier[clf] = entry

    consensus_hits = (
        {
            n: {
                image: all(all_hits[c][n][image] for c in consensus_members)
                for image in all_hits[consensus_members[0]][n]
            }
            for n in names
        }
        if consensus_members
        else {}
    )
    consensus: dict[str, Any] = {
        "classifiers": consensus_members,
        "all": {n: float(np.mean(list(h.values()))) for n, h in consensus_hits.items()},
        "all_ci": {n: metrics.rate_interval(list(h.values())) for n, h in consensus_hits.items()},
        "differences": {
            f"{a}-vs-{b}": difference(consensus_hits, a, b, paired)
            for a, b, paired in _differences(exp)
        }
        if consensus_hits
        else {},
    }
    excluded = {
        c: "also the SFSL extractor (same model and weights): the images were optimised "
        "against it, so its verdict is not independent evidence"
        for c in circular
        if exp.run.exclude_circular
    }
    if circular:
        notes.append(
            f"{', '.join(circular)}: also the SFSL extractor, marked as circular"
            + (" and left out of the consensus." if exp.run.exclude_circular else ".")
        )
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
        "interval": "95% Wilson score interval (rates); differences: see each entry's test",
        "notes": notes,
        "reference_set": REFERENCES,
    }


def _rate(value: float | None, ci: list[float] | None) -> dict[str, str]:
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
    from spurcli.pipeline import LABELS

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
        cells = [_rate(entry["spurious_rate"][s], entry["spurious_rate_ci"][s]) for s in sets]
        cells += [_delta(entry["differences"][d]) for d in deltas]
        rows.append([name, *cells])
    consensus = summary["consensus"]
    if consensus["classifiers"]:
        cells = [_rate(consensus["all"][s], consensus["all_ci"][s]) for s in sets]
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
