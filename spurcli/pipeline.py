"""`spurcli run`: the whole experiment for one class from one config file, resumable by stage.

    from spurcli.pipeline import run
    result = run("examples/quickstart.toml")      # -> RunResult(out, report, summary, stages)
    result.stages                                 # {"finetune": "ran", "sample:generated": ...}

    spurcli run examples/quickstart.toml          # the same from the shell (make demo)

Stages, each writing into the experiment folder ``out`` (top-level key of the config):

    finetune   out/finetune/ (or [finetune] output_dir)    `spurcli.train.finetune`, resumed
    sample     out/samples/<set>/                          `spurcli.sample.sample`, per image
               sets: generated (the prompts with [V] on the tuned model), generated-recontext
               (the same "on the beach", ...), baseline and baseline-recontext (the untuned
               model, the same prompts without [V], the same seeds: image i of a baseline
               starts from the same noise as image i of the tuned model)
    score      out/scores/<set>.json + .csv                `spurcli.score.score_folders`
    features   out/features/<set>/<extractor>.npz          `spurcli.compare.extract_features`
    compare    out/compare/<a>-vs-<b>.json                 `spurcli.compare.similarity`
    report     out/report.html, out/summary.json           `spurcli.report.write_report`

A stage is skipped when its outputs exist and are newer than its inputs (make's rule), so a
crashed or interrupted run continues where it stopped, and removing an output redoes exactly that
stage and the ones after it. Finetune and sample keep their own finer-grained resume (checkpoints,
finished images). The summary says, per classifier, how much more often the generated images
are put in the target class than the baseline's and the references.

The config file: top-level keys shared by the stages (``out``, ``model``, ``target``,
``class_noun``, ``instance_dir``, ``identifier``, ``seed``, and the run's own ``title``,
``recontext``, ``baseline``) and the tables ``[finetune]`` (read by `spurcli finetune` too),
``[sample]`` and ``[compare]`` (the options of those commands). See examples/quickstart.toml.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spurcli.config import MAYBE_PATH, FinetuneConfig, load_config, read_toml
from spurcli.diffusion import DEFAULT_MODEL
from spurcli.errors import UsageError

log = logging.getLogger(__name__)

TABLES = ("finetune", "sample", "compare")
REFERENCES = "references"
LABELS = {
    "generated": "generated",
    "generated-recontext": "generated (recontext)",
    "baseline": "baseline",
    "baseline-recontext": "baseline (recontext)",
    REFERENCES: "references",
}


@dataclass
class RunConfig:
    """The top level of a run config (keys shared with the tables where the names match)."""

    out: Path | None = None  # the experiment folder (required)
    model: str = field(default=DEFAULT_MODEL, metadata=MAYBE_PATH)  # the base model
    target: int | str | None = None  # the ImageNet class the feature fools classifiers into
    class_noun: str | None = None  # what the references show ("flower")
    instance_dir: Path | None = None  # the reference images (the spurious feature)
    identifier: str = "sks"  # the token [V] stands for
    seed: int = 0  # shared by finetune and sample unless their tables say otherwise
    title: str | None = None  # report title; default "<target>: <class_noun>"
    recontext: bool = True  # also sample every prompt in the recontextualisation settings
    baseline: bool = True  # also sample the untuned model (prompts without [V])


@dataclass
class Experiment:
    """Everything a run needs, resolved from the config file."""

    run: RunConfig
    finetune: FinetuneConfig
    sample: Any  # SampleConfig (prompts, n, steps, ... ; model and out are set per set)
    compare: Any  # CompareConfig
    path: Path

    @property
    def out(self) -> Path:
        return Path(self.run.out)  # type: ignore[arg-type]

    @property
    def finetune_dir(self) -> Path:
        return Path(self.finetune.output_dir)  # type: ignore[arg-type]

    def sample_sets(self) -> dict[str, tuple[bool, list[str]]]:
        """set name -> (tuned model?, prompt templates)."""
        from spurcli.sample import with_recontext, without_identifier

        prompts = list(self.sample.prompts)
        places = with_recontext(prompts)[len(prompts) :]
        sets = {"generated": (True, prompts)}
        if self.run.recontext:
            sets["generated-recontext"] = (True, places)
        if self.run.baseline:
            sets["baseline"] = (False, [without_identifier(p) for p in prompts])
            if self.run.recontext:
                sets["baseline-recontext"] = (False, [without_identifier(p) for p in places])
        return sets

    def set_dir(self, name: str) -> Path:
        if name == REFERENCES:
            return Path(self.run.instance_dir)  # type: ignore[arg-type]
        return self.out / "samples" / name

    def comparisons(self) -> list[tuple[str, str]]:
        pairs = [("generated", REFERENCES)]
        if self.run.baseline:
            pairs.append(("generated", "baseline"))
            if self.run.recontext:
                pairs.append(("generated-recontext", "baseline-recontext"))
        return pairs


def load_experiment(path: str | os.PathLike[str], sets: Sequence[str] = ()) -> Experiment:
    """Read and check a run config.

    ``sets``: ``--set key=value`` for a top-level key, ``--set table.key=value`` for a table's
    (``--set finetune.steps=10``, ``--set sample.n=4``).
    """
    from spurcli.compare import CompareConfig
    from spurcli.sample import SampleConfig

    path = Path(path)
    data = read_toml(path)
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in TABLES]
    if unknown:
        raise UsageError(
            f"{path}: unknown table [{unknown[0]}]; a run config has the tables "
            + ", ".join(f"[{t}]" for t in TABLES)
        )
    by_table: dict[str | None, list[str]] = {}
    for item in sets:
        key = item.partition("=")[0]
        table, dot, _ = key.partition(".")
        if dot and table not in TABLES:
            raise UsageError(f"--set {item}: no table [{table}]; use one of {', '.join(TABLES)}")
        by_table.setdefault(table if dot else None, []).append(
            item.split(".", 1)[1] if dot else item
        )
    run = load_config(RunConfig, path, sets=by_table.get(None, ()))
    # "examples/../runs/x" -> "runs/x": the folders appear in logs and in the report.
    run = replace(run, **{k: _norm(getattr(run, k)) for k in ("out", "instance_dir")})
    for name in ("out", "target", "class_noun", "instance_dir"):
        if getattr(run, name) in (None, ""):
            raise UsageError(f"{path}: `{name}` is required at the top of a run config")
    shared = {
        "model": run.model,
        "target": run.target,
        "class_noun": run.class_noun,
        "instance_dir": run.instance_dir,
        "identifier": run.identifier,
        "seed": run.seed,
    }

    def section(cls: type, name: str) -> Any:
        fields = cls.__dataclass_fields__
        table_sets = by_table.get(name, ())
        # Shared keys not set in the table (or by --set) follow the run's resolved values.
        given = {k.replace("-", "_") for k in data.get(name, {})}
        given |= {item.partition("=")[0].strip().replace("-", "_") for item in table_sets}
        if name in data:
            cfg = load_config(cls, path, section=name, sets=table_sets)
        else:  # no table: only the shared values (the file's other keys belong to the run)
            own = {k: v for k, v in shared.items() if k in fields and k not in given}
            cfg = load_config(cls, None, sets=table_sets, overrides=own)
        return replace(cfg, **{k: v for k, v in shared.items() if k in fields and k not in given})

    finetune = section(FinetuneConfig, "finetune")
    finetune = replace(finetune, output_dir=_norm(finetune.output_dir) or run.out / "finetune")  # type: ignore[operator]
    sample = section(SampleConfig, "sample")
    if not sample.prompts:
        from spurcli.train import fill_prompt

        sample = replace(
            sample, prompts=[fill_prompt(finetune.instance_prompt, "[V]", run.class_noun)]
        )
    compare = section(CompareConfig, "compare")
    compare = replace(compare, real=_norm(compare.real))
    if not compare.classifiers:
        raise UsageError(f'{path}: [compare] classifiers is required, e.g. ["resnet", "clip"]')
    return Experiment(run=run, finetune=finetune, sample=sample, compare=compare, path=path)


def _norm(path: Path | None) -> Path | None:
    return None if path is None else Path(os.path.normpath(path))


# ------------------------------------------------------------------------------------ stages


@dataclass
class RunResult:
    out: Path
    report: Path
    summary: dict[str, Any]
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" or "skipped"


def _mtime(paths: Iterable[Path]) -> float:
    """The newest modification time among ``paths`` (folders: their image files, recursively)."""
    newest = 0.0
    for path in paths:
        if path.is_dir():
            from spurcli.images import find_images

            files = [p for p in path.rglob("*") if p.name == "manifest.jsonl"] or find_images(path)
            newest = max([newest, *(p.stat().st_mtime for p in files)])
        elif path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


def fresh(
    outputs: Sequence[Path], inputs: Sequence[Path], stamp: dict[str, Any] | None = None
) -> bool:
    """All outputs exist, none is older than any input (make's rule), and they were made with
    the settings in ``stamp`` (kept in a ``<first output>.stamp.json`` next to them)."""
    if not all(p.exists() for p in outputs):
        return False
    if stamp is not None:
        path = _stamp_path(outputs[0])
        try:
            if json.loads(path.read_text(encoding="utf-8")) != json.loads(
                json.dumps(stamp, default=str)
            ):
                return False
        except (OSError, ValueError):
            return False
    return min(p.stat().st_mtime for p in outputs) >= _mtime(inputs)


def _stamp_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.stamp.json")


def write_stamp(output: Path, stamp: dict[str, Any]) -> None:
    from spurcli.fileio import write_json

    write_json(_stamp_path(output), stamp)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class Stages:
    """Runs or skips each stage, and records which."""

    def __init__(self) -> None:
        self.done: dict[str, str] = {}

    def skip(self, name: str) -> None:
        log.info("%s: up to date, skipped", name)
        self.done[name] = "skipped"

    def ran(self, name: str) -> None:
        self.done[name] = "ran"


def run(path: str | os.PathLike[str], *, sets: Sequence[str] = ()) -> RunResult:
    """Run (or continue) the experiment described by the config file at ``path``."""
    from spurcli import console

    exp = load_experiment(path, sets)
    from spurcli import imagenet, plugins

    imagenet.resolve_class(exp.run.target)  # type: ignore[arg-type]
    for name in exp.compare.classifiers:  # unknown names: fail before hours of fine-tuning
        plugins.classifiers().resolve(name)
    for name in exp.compare.extractors:
        plugins.extractors().resolve(name)
    from spurcli.images import find_images

    find_images(exp.run.instance_dir)  # type: ignore[arg-type]
    exp.out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    main = console.is_main_process()

    run_finetune(exp, stages)
    run_sampling(exp, stages)
    run_scoring(exp, stages, main)
    run_features(exp, stages, main)
    run_comparisons(exp, stages, main)
    report, summary = run_report(exp, stages, main)
    return RunResult(out=exp.out, report=report, summary=summary, stages=stages.done)


def run_finetune(exp: Experiment, stages: Stages) -> None:
    from spurcli.diffusion import RUN_FILE
    from spurcli.train import finetune

    info_path = exp.finetune_dir / RUN_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    if info.get("status") == "finished" and info.get("steps_done", 0) >= exp.finetune.steps:
        stages.skip("finetune")
        return
    log.info("finetune: %s", exp.finetune_dir)
    finetune(replace(exp.finetune, resume="latest"))  # continues from the last checkpoint
    stages.ran("finetune")


def run_sampling(exp: Experiment, stages: Stages) -> None:
    from spurcli.diffusion import load_pipeline, resolve_model
    from spurcli.sample import count_missing, sample

    tuned_ref = resolve_model(exp.finetune_dir)
    base_ref = resolve_model(exp.run.model)
    pipes: dict[bool, Any] = {}
    for name, (tuned, prompts) in exp.sample_sets().items():
        ref = tuned_ref if tuned else base_ref
        config = replace(exp.sample, model=str(exp.finetune_dir if tuned else exp.run.model))
        config = replace(config, prompts=prompts, out=exp.set_dir(name), recontext=False)
        identifier = ref.identifier if tuned else None
        if not count_missing(config, identifier):
            stages.skip(f"sample:{name}")
            continue
        if tuned not in pipes:
            pipes.clear()  # one pipeline in memory at a time
            pipes[tuned] = load_pipeline(ref)
        log.info("sample:%s: %d prompts x %d images", name, len(prompts), config.n)
        sample(config, pipe=pipes[tuned], model_ref=ref)
        stages.ran(f"sample:{name}")


def _all_sets(exp: Experiment) -> list[str]:
    return [*exp.sample_sets(), REFERENCES]


def _score_paths(exp: Experiment, name: str) -> tuple[Path, Path]:
    return exp.out / "scores" / f"{name}.json", exp.out / "scores" / f"{name}.csv"


def run_scoring(exp: Experiment, stages: Stages, main: bool) -> None:
    from spurcli.score import ScoreOptions, parse_weights, score_folders

    cfg = exp.compare
    stamp = {
        "target": exp.run.target,
        "classifiers": cfg.classifiers,
        "weights": cfg.weights,
        "real": cfg.real,
    }
    names = _all_sets(exp)
    real = [cfg.real] if cfg.real else []
    stale = [n for n in names if not fresh(_score_paths(exp, n), [exp.set_dir(n), *real], stamp)]
    if stale:
        # One pass over every set to score: the real images are decoded and scored once for all.
        results = score_folders(
            [exp.set_dir(name) for name in stale],
            exp.run.target,  # type: ignore[arg-type]
            cfg.classifiers,
            ScoreOptions(batch_size=cfg.batch_size, device=cfg.device, strict=cfg.strict),
            real_dir=cfg.real,
            weights=parse_weights(cfg.weights),
        )
        if main:
            from spurcli.fileio import write_json

            for name, result in zip(stale, results, strict=True):
                json_path, csv_path = _score_paths(exp, name)
                result.write_csv(csv_path)
                write_json(json_path, result.to_json())
                write_stamp(json_path, stamp)
    for name in names:
        if name in stale:
            stages.ran(f"score:{name}")
        else:
            stages.skip(f"score:{name}")
    _barrier(cfg.device)


def _feature_path(exp: Experiment, name: str, extractor: str) -> Path:
    return exp.out / "features" / name / f"{_slug(extractor)}.npz"


def run_features(exp: Experiment, stages: Stages, main: bool) -> None:
    from spurcli.compare import extract_features, load_extractors
    from spurcli.score import parse_weights

    cfg = exp.compare
    needed = sorted({s for pair in exp.comparisons() for s in pair})
    weights = parse_weights(cfg.extractor_weights, "--extractor-weights")

    def stamp(extractor: str) -> dict[str, Any]:
        return {"extractor": extractor, "weights": weights.get(extractor)}

    todo = [
        (name, extractor)
        for extractor in cfg.extractors
        for name in needed
        if not fresh([_feature_path(exp, name, extractor)], [exp.set_dir(name)], stamp(extractor))
    ]
    for extractor in cfg.extractors:
        for name in needed:
            if (name, extractor) not in todo:
                stages.skip(f"features:{name}:{extractor}")
    if not todo:
        return
    wanted = sorted({e for _, e in todo}, key=cfg.extractors.index)
    loaded = dict(
        zip(
            wanted,
            load_extractors(wanted, {k: v for k, v in weights.items() if k in wanted}),
            strict=True,
        )
    )
    for name, extractor in todo:
        features = extract_features(
            exp.set_dir(name),
            loaded[extractor],
            batch_size=cfg.batch_size,
            device=cfg.device,
            strict=cfg.strict,
        )
        if main:
            _feature_path(exp, name, extractor).parent.mkdir(parents=True, exist_ok=True)
            features.save(_feature_path(exp, name, extractor))
            write_stamp(_feature_path(exp, name, extractor), stamp(extractor))
        stages.ran(f"features:{name}:{extractor}")
    _barrier(cfg.device)


def _compare_path(exp: Experiment, a: str, b: str) -> Path:
    return exp.out / "compare" / f"{a}-vs-{b}.json"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The per-image rows of a score CSV, typed as `ScoreResult.rows` are."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["top1_index"] = int(row["top1_index"])
        row["target_prob"] = float(row["target_prob"])
        row["target_rank"] = int(row["target_rank"])
    return rows


def run_comparisons(exp: Experiment, stages: Stages, main: bool) -> None:
    from spurcli.compare import CompareResult, Features, similarity
    from spurcli.fileio import write_json

    for a, b in exp.comparisons():
        out = _compare_path(exp, a, b)
        inputs = [*_score_paths(exp, a), *_score_paths(exp, b)]
        inputs += [_feature_path(exp, s, e) for s in (a, b) for e in exp.compare.extractors]
        if fresh([out], inputs, {"extractors": exp.compare.extractors}):
            stages.skip(f"compare:{a}-vs-{b}")
            continue
        sims = {
            e: similarity(
                Features.load(_feature_path(exp, a, e)), Features.load(_feature_path(exp, b, e))
            )
            for e in exp.compare.extractors
        }
        result = CompareResult(
            a=json.loads(_score_paths(exp, a)[0].read_text(encoding="utf-8")),
            b=json.loads(_score_paths(exp, b)[0].read_text(encoding="utf-8")),
            rows_a=read_rows(_score_paths(exp, a)[1]),
            rows_b=read_rows(_score_paths(exp, b)[1]),
            similarity=sims,
            dir_a=str(exp.set_dir(a).resolve()),  # absolute: the report may be redrawn later
            dir_b=str(exp.set_dir(b).resolve()),  # from another working directory
            label_a=LABELS[a],
            label_b=LABELS[b],
        )
        if main:
            write_json(out, result.report_data())
            write_stamp(out, {"extractors": exp.compare.extractors})
        stages.ran(f"compare:{a}-vs-{b}")


def summarize(exp: Experiment) -> dict[str, Any]:
    """Per classifier: each set's spurious rate and mean p_target, and the generated set's
    difference to the baseline and to the references (the run's answer)."""
    scores = {
        name: json.loads(_score_paths(exp, name)[0].read_text(encoding="utf-8"))
        for name in _all_sets(exp)
    }
    sets = list(scores)
    target = scores["generated"]["target"]
    per_classifier: dict[str, Any] = {}
    for clf in exp.compare.classifiers:
        entry: dict[str, Any] = {"weights": scores["generated"]["classifiers"][clf]["weights"]}
        for key in ("spurious_rate", "mean_target_prob"):
            entry[key] = {s: scores[s]["classifiers"][clf][key] for s in sets}
        rate = entry["spurious_rate"]
        entry["more_spurious_than_references"] = rate["generated"] - rate[REFERENCES]
        if "baseline" in rate:
            entry["more_spurious_than_baseline"] = rate["generated"] - rate["baseline"]
        if "baseline-recontext" in rate:
            entry["recontext_more_spurious_than_baseline"] = (
                rate["generated-recontext"] - rate["baseline-recontext"]
            )
        per_classifier[clf] = entry
    consensus = {s: scores[s]["consensus"]["all"] for s in sets}
    return {
        "target": target,
        "n_images": {s: scores[s]["n_images"] for s in sets},
        "classifiers": per_classifier,
        "consensus_all": consensus,
    }


def summary_table(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as columns/rows for the report and the terminal."""
    sets = list(summary["n_images"])
    deltas = [
        ("Δ vs baseline", "more_spurious_than_baseline"),
        ("Δ vs references", "more_spurious_than_references"),
        ("Δ recontext vs baseline", "recontext_more_spurious_than_baseline"),
    ]
    first = next(iter(summary["classifiers"].values()))
    deltas = [(title, key) for title, key in deltas if key in first]
    columns = ["classifier", *(f"{LABELS[s]} ({summary['n_images'][s]})" for s in sets)]
    columns += [title for title, _ in deltas]
    rows = []
    for clf, entry in summary["classifiers"].items():
        name = f"{clf} (random weights)" if entry["weights"] == "random" else clf
        rows.append(
            [name, *(entry["spurious_rate"][s] for s in sets), *(entry[k] for _, k in deltas)]
        )
    consensus = summary["consensus_all"]
    deltas_all = {
        "more_spurious_than_baseline": ("generated", "baseline"),
        "more_spurious_than_references": ("generated", REFERENCES),
        "recontext_more_spurious_than_baseline": ("generated-recontext", "baseline-recontext"),
    }
    rows.append(
        [
            "all classifiers (consensus)",
            *(consensus[s] for s in sets),
            *(consensus[deltas_all[k][0]] - consensus[deltas_all[k][1]] for _, k in deltas),
        ]
    )
    target = summary["target"]
    caption = (
        f"spurious rate: the fraction of each set's images whose top-1 class is {target['index']} "
        f"{target['name']} (number of images in brackets). Δ: generated minus the other set; "
        "positive means the fine-tuned model's images fool the classifier more often."
    )
    return {"columns": columns, "rows": rows, "caption": caption}


def run_report(exp: Experiment, stages: Stages, main: bool) -> tuple[Path, dict[str, Any]]:
    from spurcli.fileio import write_json
    from spurcli.report import write_report

    report, summary_path = exp.out / "report.html", exp.out / "summary.json"
    comparisons = [_compare_path(exp, a, b) for a, b in exp.comparisons()]
    inputs = comparisons + [_score_paths(exp, s)[0] for s in _all_sets(exp)]
    summary = summarize(exp)
    stamp = {"title": exp.run.title, "report_images": exp.compare.report_images}
    if fresh([report, summary_path], inputs, stamp):
        stages.skip("report")
        return report, summary
    if main:
        title = exp.run.title or (
            f"spurcli run: {summary['target']['name']} ← {exp.run.class_noun} ({exp.path.name})"
        )
        notes = [
            f"model {exp.run.model}, fine-tuned in {exp.finetune_dir}; "
            f"references: {exp.run.instance_dir}; config: {exp.path}"
        ]
        if exp.run.model == "tiny":
            notes.append(
                "`tiny` is a random miniature Stable Diffusion for smoke runs: its images are "
                "noise-like by design, so these numbers test the pipeline, not the method."
            )
        datas = [json.loads(p.read_text(encoding="utf-8")) for p in comparisons]
        write_json(summary_path, summary)
        write_report(
            report,
            datas,
            title=title,
            summary=summary_table(summary),
            notes=notes,
            max_images=exp.compare.report_images,
        )
        write_stamp(report, stamp)
    stages.ran("report")
    return report, summary


def _barrier(device: str | None) -> None:
    from spurcli.parallel import launched_distributed

    if launched_distributed():
        from spurcli.parallel import Processes

        Processes(device).barrier()
