"""`spurcli compare`: two image sets side by side, by classifier scores and in feature spaces.

    from spurcli.evaluate.compare import compare
    result = compare("samples/generated", "refs/", target="hummingbird",
                     classifiers=["resnet", "clip"], extractors=["robust-resnet50"])
    result.to_json()    # {"a": <score json>, "b": <score json>, "similarity": {"robust-resnet50":
                        #   {"mean_cosine", "frechet", "nn_cosine_mean", "nn_cosine_max", ...}}}
    from spurcli.experiment.report import write_report
    write_report("report.html", [result.report_data()])     # the HTML report

    spurcli compare samples/ refs/ --target 94 --classifiers resnet,clip \
        --extractors robust-resnet50 --report report.html --json compare.json

Scores come from `spurcli.evaluate.score` (same numbers as `spurcli score` on each folder): one
pass over
both folders (and the real images) decodes every image once, and the classifiers and the feature
extractors run on the same batches. Similarity, per feature extractor (a plugin's penultimate
features):

- ``mean_cosine``, ``frechet`` (``frechet_<extractor>``), ``nn_cosine_mean``/``max``: see
  `spurcli.evaluate.similarity`.

Differences (A - B), per classifier and for the consensus rates, tested as
`spurcli.evaluate.differences` says (pairing by seed and prompt, exact tests, intervals).

Unreadable images are skipped (and named) like in `score`; images of any size are fine (each is
cut to its central square, as `score` does, before the extractor resizes it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spurcli import imagenet
from spurcli.errors import UsageError
from spurcli.evaluate import metrics
from spurcli.evaluate.config import CompareConfig
from spurcli.evaluate.differences import (
    PAIRED,
    consensus_members,
    consensus_text,
    differences,
    find_pairs,
    fmt_difference,
    fmt_p,
)
from spurcli.evaluate.imagepass import find_items
from spurcli.evaluate.score import METRICS, RANDOM_NOTE, fmt_metric, plain, score_folders
from spurcli.evaluate.similarity import Features, similarity
from spurcli.images import find_images
from spurcli.plugins import load_classifiers, load_extractors, parse_weights
from spurcli.text import rich_text, terminal

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- the math


# ------------------------------------------------------------------------------- features


# ------------------------------------------------------------------------ pairing, differences


# -------------------------------------------------------------------------------- compare


def consensus_of(
    score_json: dict[str, Any], per_image: Any, target: int, members: list[str]
) -> dict[str, Any]:
    """A set's score JSON with its ``consensus`` over ``members`` only (None with no member):
    the consensus of `compare` and of `run` leaves the same classifiers out as the summary."""
    rows = [per_image.classifiers.index(name) for name in members]
    consensus = metrics.consensus(per_image.top1[rows] == target).to_json() if rows else None
    return {**score_json, "consensus": consensus}


@dataclass
class CompareResult:
    """Both sets' scores (as `ScoreResult.to_json()` + per-image rows) and their similarity.

    Plain data only, so a `spurcli run` can save it and render the report again later.
    """

    a: dict[str, Any]  # score JSON of A
    b: dict[str, Any]
    rows_a: list[dict[str, Any]]  # per image and classifier: image, classifier, top1_name, ...
    rows_b: list[dict[str, Any]]
    similarity: dict[str, dict[str, Any]]  # extractor -> similarity()
    dir_a: str
    dir_b: str
    label_a: str = "A"
    label_b: str = "B"
    skipped: list[str] = field(default_factory=list)
    differences: dict[str, Any] = field(default_factory=dict)  # `differences()`; {}: not made
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> weights, _id
    # {"classifiers": those the consensus is over, "left_out": {name: why}}; {}: all of them
    consensus_of: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The documented JSON: scores of both sets, their differences and the similarity per
        extractor."""
        return {
            "a": self.a,
            "b": self.b,
            "differences": self.differences,
            "similarity": {
                name: {k: v for k, v in sim.items() if k != "nearest"}
                for name, sim in self.similarity.items()
            },
            "extractors": self.extractors,
            "consensus_of": self.consensus_of
            or {"classifiers": list(self.a["classifiers"]), "left_out": {}},
            # how the classifiers got their pixels (both sets alike): model or spurious-imagenet
            "preprocess": self.a.get("preprocess", "model"),
        }

    def report_data(self) -> dict[str, Any]:
        """Everything the HTML report shows (JSON-ready; `from_report_data` reads it back)."""
        return {
            **self.to_json(),
            "similarity": self.similarity,
            "rows": {"a": self.rows_a, "b": self.rows_b},
            "dirs": {"a": self.dir_a, "b": self.dir_b},
            "labels": {"a": self.label_a, "b": self.label_b},
            "skipped": self.skipped,
        }

    @classmethod
    def from_report_data(cls, data: dict[str, Any]) -> CompareResult:
        return cls(
            a=data["a"],
            b=data["b"],
            rows_a=data["rows"]["a"],
            rows_b=data["rows"]["b"],
            similarity=data["similarity"],
            dir_a=data["dirs"]["a"],
            dir_b=data["dirs"]["b"],
            label_a=data["labels"]["a"],
            label_b=data["labels"]["b"],
            skipped=data.get("skipped", []),
            differences=data.get("differences") or {},
            extractors=data.get("extractors", {}),
            consensus_of=data.get("consensus_of") or {},
        )

    def tables(self) -> list[Any]:
        """Rich tables: the score metrics side by side, then the similarity numbers."""
        from rich.table import Table

        target = self.a["target"]
        la, lb = self.label_a, self.label_b
        diffs = self.differences.get("classifiers", {})
        scores = Table(title=f"spurcli compare: target {target['index']} {target['name']}")
        for column in ("classifier", "metric", la, lb, f"{la} - {lb}", "p"):
            scores.add_column(
                rich_text(column),  # the labels are user text, not markup
                justify="left" if column in ("classifier", "metric") else "right",
                overflow="fold",
            )
        for name, a in self.a["classifiers"].items():
            b = self.b["classifiers"][name]
            label = rich_text(f"{name}*" if a["weights"] == "random" else name)
            for i, metric in enumerate(METRICS):
                va, vb = a[metric], b[metric]
                diff = diffs.get(name, {}).get(metric)
                if diff is None:
                    delta = None if va is None or vb is None else va - vb
                    delta_text, p_text = fmt_metric(delta), ""
                else:
                    delta_text, p_text = fmt_difference(diff), fmt_p(diff["p_value"])
                scores.add_row(
                    label if i == 0 else "",
                    metric,
                    plain(fmt_metric(va, a.get(f"{metric}_ci"))),
                    plain(fmt_metric(vb, b.get(f"{metric}_ci"))),
                    plain(delta_text),
                    p_text,
                )
            scores.add_section()
        ca, cb = self.a["consensus"], self.b["consensus"]

        def agreement(c: dict[str, Any] | None) -> str:
            if c is None:
                return "no consensus"
            return (
                f"consensus all {fmt_metric(c['all'], c.get('all_ci'))} "
                f"any {fmt_metric(c['any'], c.get('any_ci'))}"
            )

        lines = [
            f"{la}: {self.a['n_images']} images ({self.dir_a}), {agreement(ca)}; "
            f"{lb}: {self.b['n_images']} images ({self.dir_b}), {agreement(cb)}",
            consensus_text(self.to_json()["consensus_of"]),
        ]
        if self.differences and self.differences.get("consensus"):
            consensus = self.differences["consensus"]
            first = consensus["all"]
            lines.append(
                f"consensus {la} - {lb}: all {fmt_difference(first)} (p {fmt_p(first['p_value'])}),"
                f" any {fmt_difference(consensus['any'])} (p {fmt_p(consensus['any']['p_value'])})"
            )
            pairing = self.differences["pairing"]
            lines.append(
                f"{'paired by ' + pairing['rule'] if pairing['paired'] else pairing['rule']}; "
                f"rates: {first['test']} test, {first['interval']} interval on the difference; "
                "others: percentile bootstrap; [lo, hi]: 95% intervals"
            )
            matched = [
                d["average_precision"]
                for d in diffs.values()
                if d.get("average_precision", {}).get("subsamples")
            ]
            if matched:
                lines.append(
                    f"average_precision {la} - {lb}: at the smaller set's size "
                    f"(n={matched[0]['matched_size']}, mean of {matched[0]['subsamples']} "
                    "subsamples of the larger set); roc_auc is the size-free comparison"
                )
        if any(a["weights"] == "random" for a in self.a["classifiers"].values()):
            lines.append(RANDOM_NOTE)
        scores.caption = plain("\n".join(terminal(line) for line in lines))  # lines stay lines
        out = [scores]
        if self.similarity:
            sims = Table(title=rich_text(f"similarity of {la} to {lb} in feature spaces"))
            for column in ("extractor", "mean_cosine", "Fréchet distance", "nn_cosine_mean"):
                sims.add_column(column, justify="left" if column == "extractor" else "right")
            sims.add_column("nn_cosine_max", justify="right")
            notes = []
            for name, sim in self.similarity.items():
                sims.add_row(
                    name,
                    fmt_metric(sim["mean_cosine"]),
                    f"frechet_{name} = {fmt_metric(sim['frechet'])}",
                    fmt_metric(sim["nn_cosine_mean"]),
                    fmt_metric(sim["nn_cosine_max"]),
                )
                if sim.get("frechet_note"):
                    notes.append(f"frechet_{name}: {sim['frechet_note']}")
            sims.caption = "\n".join(notes) or None
            out.append(sims)
        return out


def compare(
    dir_a: str | os.PathLike[str],
    dir_b: str | os.PathLike[str],
    config: CompareConfig,
    *,
    labels: tuple[str, str] = ("A", "B"),
) -> CompareResult:
    """Score both folders with the same classifiers and compare them in each feature space.

    One pass over both folders (and the real images) serves the classifiers and extractors.
    """

    if config.target is None:
        raise UsageError("--target CLASS is required (an ImageNet index or name)")
    config.check()
    imagenet.resolve_class(config.target)  # "did you mean" before anything slow
    for folder in (dir_a, dir_b):
        find_images(folder)  # missing or empty set: one line now, not after loading models
    if config.paired not in PAIRED:
        raise UsageError(f"--paired must be one of {', '.join(PAIRED)}, got '{config.paired}'")
    if config.paired == "yes":  # sets that cannot pair: say so before loading any model
        names = [[i.name for i in find_items(Path(d), 0, real=False)] for d in (dir_a, dir_b)]
        find_pairs(dir_a, names[0], dir_b, names[1], "yes")
    members = consensus_members(config.classifiers, config.exclude_from_consensus)
    models = load_classifiers(config.classifiers, parse_weights(config.weights))
    extractor_weights = parse_weights(config.extractor_weights, "--extractor-weights")
    extractors = load_extractors(config.extractors, extractor_weights)
    scored = score_folders(
        [dir_a, dir_b],
        config.target,
        models,
        config,
        real_dir=config.real,
        extractors=extractors,
        bootstrap=config.bootstrap,
        bootstrap_seed=config.bootstrap_seed,
    )
    pairing = find_pairs(
        dir_a, scored[0].spurious.images, dir_b, scored[1].spurious.images, config.paired
    )
    diffs = differences(
        scored[0],
        scored[1],
        pairing,
        resamples=config.bootstrap,
        seed=config.bootstrap_seed,
        consensus_of=members,
    )
    k = scored[0].target.index
    left_out = {name: "--exclude-from-consensus" for name in config.exclude_from_consensus}
    sims = {
        e.name: similarity(
            *(Features(s.spurious.images, s.features[e.name]) for s in scored),
            resamples=config.bootstrap,
            seed=config.bootstrap_seed,
        )
        for e in extractors
    }
    return CompareResult(
        a=consensus_of(scored[0].to_json(), scored[0].spurious, k, members),
        b=consensus_of(scored[1].to_json(), scored[1].spurious, k, members),
        rows_a=scored[0].rows,
        rows_b=scored[1].rows,
        similarity=sims,
        dir_a=str(dir_a),
        dir_b=str(dir_b),
        label_a=labels[0],
        label_b=labels[1],
        skipped=[*scored[0].skipped, *scored[1].skipped],
        differences=diffs,
        extractors={e.name: {"weights": e.weights, "weights_id": e.weights_id} for e in extractors},
        consensus_of={"classifiers": members, "left_out": left_out},
    )
