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

Scores come from `spurcli.evaluate.score` (same numbers as `spurcli score` on each folder): one pass over
both folders (and the real images) decodes every image once, and the classifiers and the feature
extractors run on the same batches. Similarity, per feature extractor (a plugin's penultimate
features):

- ``mean_cosine``: the mean cosine similarity over all pairs (a in A, b in B); it equals the dot
  product of the two sets' mean unit vectors, so it costs O(N), not O(N^2).
- ``frechet`` (shown as ``frechet_<extractor>``): the Fréchet distance between Gaussians fitted
  to the two feature sets, ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))``: FID's formula
  in another feature space, so not called FID. The trace of the matrix square root is computed as
  ``sum sqrt(eig(C_a^(1/2) C_b C_a^(1/2)))`` (symmetric PSD, `eigh`, negative rounding clipped),
  which needs no eps and is exact also for singular covariances. But with fewer images than
  dimensions (n <= dim, the usual case for a few dozen images) the covariances are rank-deficient
  sample estimates: the number is biased upwards and comparable only between set pairs of the
  same sizes; the JSON's ``frechet_note`` says so whenever it applies.
- ``nn_cosine_mean`` / ``nn_cosine_max``: for each image of A, the cosine to its nearest
  neighbour in B; with B = the training references, values near 1 flag memorised copies (the
  report shows the closest pairs).

Differences (A - B), per classifier and for the consensus rates, under ``differences`` in the
JSON, each ``{"delta", "delta_ci", "p_value", "test", "interval"}`` (methods, references and the
pairing rule: docs/statistics.md):

- ``spurious_rate``, ``top5_rate``, consensus ``all``/``any``: `spurcli.evaluate.metrics.rate_difference`,
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

Unreadable images are skipped (and named) like in `score`; images of any size are fine (each is
cut to its central square, as `score` does, before the extractor resizes it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate import metrics
from spurcli.evaluate.config import CompareConfig
from spurcli.records import sample_records

log = logging.getLogger(__name__)

SIMILARITY_KEYS = ("mean_cosine", "frechet", "nn_cosine_mean", "nn_cosine_max")
NN_CHUNK = 1024  # rows of A per similarity block: memory stays O(chunk * |B|)
PAIRED = ("auto", "yes", "no")
AP_SUBSAMPLES = 200  # seeded subsamples of the larger set behind a matched-size AP


@dataclass
class Features:
    """One extractor's features of one image set."""

    names: list[str]  # image paths relative to the set's folder
    values: np.ndarray  # (N, D) float32

    def save(self, path: str | os.PathLike[str]) -> None:
        from spurcli.fileio import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, names=np.array(self.names), values=self.values)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Features:
        with np.load(path) as data:
            return cls([str(n) for n in data["names"]], data["values"])


# ---------------------------------------------------------------------------------- the math


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of cos(a_i, b_j) over all pairs = <mean of unit a, mean of unit b>."""
    return float(unit(a).mean(axis=0) @ unit(b).mean(axis=0))


def nearest_neighbours(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the index of its most cosine-similar row of ``b``, and the cosine."""
    ua, ub = unit(a), unit(b)
    index = np.empty(len(ua), np.int64)
    cosine = np.empty(len(ua), np.float64)
    for start in range(0, len(ua), NN_CHUNK):
        sims = ua[start : start + NN_CHUNK] @ ub.T
        index[start : start + NN_CHUNK] = sims.argmax(axis=1)
        cosine[start : start + NN_CHUNK] = sims.max(axis=1)
    return index, cosine


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b`` (see docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    mu = a.mean(axis=0) - b.mean(axis=0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ca, cb = np.atleast_2d(ca), np.atleast_2d(cb)
    root_a = _psd_sqrt(ca)
    middle = root_a @ cb @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)  # symmetric up to rounding
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    distance = mu @ mu + np.trace(ca) + np.trace(cb) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))  # >= 0 in exact arithmetic


def similarity(a: Features, b: Features) -> dict[str, Any]:
    """The four similarity numbers of A vs B in one feature space, and each A image's neighbour."""
    n_a, n_b, dim = len(a.names), len(b.names), a.values.shape[1]
    index, cosine = nearest_neighbours(a.values, b.values)
    frechet: float | None = None
    note = None
    if min(n_a, n_b) < 2:
        note = "needs at least 2 images per set"
    else:
        frechet = frechet_distance(a.values, b.values)
        if min(n_a, n_b) <= dim:
            note = (
                f"fewer images than dimensions ({n_a} and {n_b} vs {dim}): singular sample "
                "covariances, a high-variance estimate biased upwards; compare only between "
                "pairs of sets of the same sizes"
            )
    return {
        "mean_cosine": mean_cosine(a.values, b.values),
        "frechet": frechet,
        "nn_cosine_mean": float(cosine.mean()),
        "nn_cosine_max": float(cosine.max()),
        "n_a": n_a,
        "n_b": n_b,
        "dim": int(dim),
        "frechet_note": note,
        "nearest": [
            {"image": name, "neighbour": b.names[j], "cosine": float(c)}
            for name, j, c in zip(a.names, index, cosine, strict=True)
        ],
    }


# ------------------------------------------------------------------------------- features


def extract_features(
    root: str | os.PathLike[str],
    extractor: Any,
    *,
    batch_size: int = 32,
    device: str | None = None,
    image_size: int | None = None,
    strict: bool = False,
) -> Features:
    """``extractor``'s (a `LoadedModel`) features of every image below ``root``.

    The pass is `spurcli.evaluate.imagepass.score_items` with no classifiers, so an image is decoded
    and squared exactly as the classifiers see it. Sharded over the processes of a
    torchrun/accelerate group.
    """
    from spurcli.evaluate.config import ScoreConfig
    from spurcli.evaluate.imagepass import find_items, score_items

    size = image_size or ScoreConfig.image_size
    options = ScoreConfig(batch_size=batch_size, device=device, strict=strict, image_size=size)
    options.check()
    root = Path(root)
    items = find_items(root, 0, real=False)  # the target class is unused: no classifiers
    desc = f"features ({extractor.name}) of {root}"
    found = score_items(items, [], options, [extractor], desc=desc)
    if not len(found.index):
        raise SpurcliError(f"no readable images in {root}")
    return Features(found.per_image.images, found.features[extractor.name])


# ------------------------------------------------------------------------ pairing, differences


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


def excludes_zero(diff: dict[str, Any] | None) -> bool:
    """The difference's interval lies wholly above or below 0 (False without an interval)."""
    ci = (diff or {}).get("delta_ci")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


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
    a: Any, b: Any, pairing: Pairing, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """A minus B (two `ScoreResult`s of one pass) per classifier and for the consensus rates."""
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
    hits_a = metrics.consensus_hits(sa.top1 == k)
    hits_b = metrics.consensus_hits(sb.top1 == k)
    return {
        "pairing": pairing.to_json(),
        "classifiers": per_classifier,
        "consensus": {key: rate(hits_a[key], hits_b[key]) for key in ("all", "any")},
    }


# -------------------------------------------------------------------------------- compare


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
        )

    def tables(self) -> list[Any]:
        """Rich tables: the score metrics side by side, then the similarity numbers."""
        from rich.table import Table

        from spurcli.evaluate.score import METRICS, RANDOM_NOTE, fmt_metric, plain
        from spurcli.text import rich_text, terminal

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

        def agreement(c: dict[str, Any]) -> str:
            return (
                f"consensus all {fmt_metric(c['all'], c.get('all_ci'))} "
                f"any {fmt_metric(c['any'], c.get('any_ci'))}"
            )

        lines = [
            f"{la}: {self.a['n_images']} images ({self.dir_a}), {agreement(ca)}; "
            f"{lb}: {self.b['n_images']} images ({self.dir_b}), {agreement(cb)}"
        ]
        if self.differences:
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
        scores.caption = plain(terminal("\n".join(lines)))
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
    from spurcli import imagenet
    from spurcli.evaluate.imagepass import find_items
    from spurcli.evaluate.score import score_folders
    from spurcli.images import find_images
    from spurcli.plugins import load_classifiers, load_extractors, parse_weights

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
        scored[0], scored[1], pairing, resamples=config.bootstrap, seed=config.bootstrap_seed
    )
    sims = {
        e.name: similarity(*(Features(s.spurious.images, s.features[e.name]) for s in scored))
        for e in extractors
    }
    return CompareResult(
        a=scored[0].to_json(),
        b=scored[1].to_json(),
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
    )
