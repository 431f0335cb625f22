"""`spurcli run`: the whole experiment for one class from one config file, resumable by stage.

    from spurcli.experiment.run import run_experiment
    result = run_experiment("examples/quickstart.toml")
    # -> ExperimentResult(out, report, summary, stages, reasons)
    result.stages                                 # {"finetune": "ran", "sample:sfsl": ...}
    result.reasons                                # {"finetune": "settings changed: lr", ...}

    spurcli run examples/quickstart.toml          # the same from the shell (make demo)

The experiment's plan (arms, image sets, comparisons) comes from `spurcli.experiment.plan`; its
stages, each skipped when its outputs are up to date, from `spurcli.experiment.stages`; where
each output lives, from `spurcli.experiment.layout`. A stage is up to date when its outputs
exist, are newer than its inputs (make's rule) and were made with the settings the config asks
for now (`spurcli.experiment.freshness`). A stale sample set is made again; a finished
fine-tuning arm whose settings changed is refused unless ``--retrain`` (it may have cost GPU
hours). The summary (`spurcli.experiment.summary`) puts SFSL, DreamBooth-only and the untuned
baseline side by side per classifier, every rate with its Wilson interval and every difference
tested.

The config file: top-level keys shared by the stages (``out``, ``model``, ``target``,
``class_noun``, ``instance_dir``, ``identifier``, ``seed``, and the run's own ``title``,
``recontext``, ``baseline``, ``dreambooth_arm``, ``train_references``, ``exclude_circular``) and
the tables ``[finetune]`` (read by `spurcli finetune` too), ``[sample]``, ``[compare]`` and
``[curate]`` (the options of those commands). See examples/quickstart.toml.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spurcli import console, imagenet, plugins
from spurcli.console import is_main_process
from spurcli.errors import UsageError
from spurcli.experiment.config import ExperimentConfig
from spurcli.experiment.freshness import Stages
from spurcli.experiment.plan import Experiment, load_experiment
from spurcli.experiment.stages import (
    compare_stage,
    curate_stage,
    detect_stage,
    features_stage,
    finetune_stage,
    references_stage,
    report_stage,
    sample_stage,
    score_stage,
)
from spurcli.experiment.summary import tested_differences
from spurcli.fileio import is_inside, output_folder
from spurcli.generate.config import FinetuneConfig
from spurcli.generate.pipelines import resolve_model
from spurcli.generate.sample import check_sample_config
from spurcli.plugins import parse_weights
from spurcli.settings import load_config, to_dict
from spurcli.weights import is_random

log = logging.getLogger(__name__)


def finetune_config(
    path: str | os.PathLike[str], sets: Sequence[str] = (), options: dict[str, Any] | None = None
) -> FinetuneConfig:
    """`spurcli finetune RUN_CONFIG`: the SFSL arm exactly as `run` trains it (into
    ``<out>/finetune`` unless the table says otherwise, on the training share of the references,
    which this writes into ``<out>/references/``), with ``options`` (set ones) winning.

    ``sets`` are finetune keys (``lr=1e-5``) or, with a table, any of the run's
    (``sample.n=4``), so one file and one syntax serve both commands. A key the top level
    shares with the finetune table (``instance_dir``, ``seed``, ``model``, ...) is set at the
    top level too, so it wins everywhere the run uses it: ``--instance-dir DIR`` is the folder
    the references are split from (the run trains on its training share), ``--seed`` also
    draws the split.
    """

    top_level = {f.name for f in dataclasses.fields(ExperimentConfig)}
    shared = top_level & {f.name for f in dataclasses.fields(FinetuneConfig)}

    def routed(item: str) -> list[str]:
        key = item.partition("=")[0].strip().replace("-", "_")
        if "." in key:
            return [item]
        if key == "instance_dir":  # the finetune table's is the split's training share
            return [item]
        return [item, f"finetune.{item}"] if key in shared else [f"finetune.{item}"]

    given = {k: v for k, v in (options or {}).items() if v is not None}
    exp = load_experiment(
        path,
        [s for item in sets for s in routed(item)],
        overrides={k: v for k, v in given.items() if k in shared},
    )
    references_stage(exp, Stages(), is_main_process())
    given.pop("instance_dir", None)  # now the source of the split, not what is trained on
    return load_config(FinetuneConfig, None, overrides={**to_dict(exp.finetune), **given})


# ------------------------------------------------------------------------------------ stages


@dataclass
class ExperimentResult:
    out: Path
    report: Path
    summary: dict[str, Any]
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" or "skipped"
    reasons: dict[str, str] = field(default_factory=dict)  # stage -> why it ran or was skipped

    def to_json(self) -> dict[str, Any]:
        """What `spurcli run --json` prints: the report's path, each stage's state and why,
        and the headline summary."""
        return {
            "report": str(self.report),
            "stages": self.stages,
            "stage_reasons": self.reasons,
            **self.summary,
        }


def run_experiment(
    path: str | os.PathLike[str], *, sets: Sequence[str] = (), retrain: bool = False
) -> ExperimentResult:
    """Run (or continue) the experiment described by the config file at ``path``.

    ``retrain``: a finished fine-tuning arm whose recorded settings differ from the config is
    discarded and trained again (without it, that is an error: it may have cost GPU hours).
    """
    exp = load_experiment(path, sets)
    check_experiment(exp)
    stages = Stages()
    main = console.is_main_process()

    runs = exp.replicates()
    with output_folder(exp.out, "run", recognise=_is_experiment_folder, enabled=main):
        # Each training run in turn, to its comparisons, so an interrupted experiment keeps
        # whole replicates; the summary pools them.
        for run in runs:
            scoped = stages.scoped(f"replicate-{run.replicate}/" if run.replicate else "")
            references_stage(run, scoped, main)
            for arm in run.arms():
                finetune_stage(run, arm, scoped, retrain=retrain)
            sample_stage(run, scoped)
            score_stage(run, scoped, main)
            detect_stage(run, scoped, main)
            features_stage(run, scoped, main)
            compare_stage(run, scoped, main)
        # One curated set is enough to look at (curate selects, it does not measure).
        curate_stage(runs[0], stages, main)
        report, summary = report_stage(exp, stages, main)
    return ExperimentResult(
        out=exp.out, report=report, summary=summary, stages=stages.done, reasons=stages.reasons
    )


def check_experiment(exp: Experiment) -> None:
    """Everything that can be checked before the first stage: the class, every model name, every
    table's settings (a typo must fail in seconds, not after hours of fine-tuning)."""
    imagenet.resolve_class(exp.config.target)  # type: ignore[arg-type]
    for name in exp.compare.classifiers:
        plugins.classifiers().resolve(name)
    for name in exp.compare.extractors:
        plugins.extractors().resolve(name)
    if exp.config.detector is not None:
        plugins.detectors().resolve(exp.config.detector)
    for arm in exp.arms().values():
        arm.check()
        resolve_model(arm.model, revision=arm.revision)  # type: ignore[arg-type]
    check_tables(exp)
    check_weights_files(exp)


def check_weights_files(exp: Experiment) -> None:
    """Every weights file the run will read exists, before the first stage (not after hours of
    fine-tuning and sampling, when the score stage gets to it)."""
    given: list[tuple[str, str, str]] = []  # (table and key, model name, value)
    if exp.finetune.sfsl_weight != 0 and exp.finetune.extractor_weights is not None:
        given.append(
            ("[finetune] extractor_weights", exp.finetune.extractor, exp.finetune.extractor_weights)
        )
    tables = [("compare", exp.compare)] + ([("curate", exp.curate)] if exp.curate else [])
    for table, cfg in tables:
        for key in ("weights", "extractor_weights", "detector_weights"):
            value = getattr(cfg, key, None)
            if isinstance(value, list):
                pairs = parse_weights(value, f"[{table}] {key}")
                given += [(f"[{table}] {key}", n, v) for n, v in pairs.items()]
            elif value is not None:
                given.append((f"[{table}] {key}", getattr(cfg, "extractor", "?"), value))
    for where, name, value in given:
        if not is_random(value) and not os.path.exists(value):
            raise UsageError(
                f"{exp.path}: {where}: the weights of '{name}' are not there: {value} (a "
                "relative path is relative to the config file's folder)"
            )


def check_tables(exp: Experiment) -> None:
    """The [sample] and [compare] settings too, before the first stage starts (not hours later,
    at their turn); an experiment folder inside the references is refused."""

    check_sample_config(exp.sample)
    exp.compare.check()
    tested = [f"{a}-vs-{b}" for a, b, _ in tested_differences(exp)]
    if exp.primary() not in tested:
        raise UsageError(
            f"{exp.path}: primary = {exp.primary()!r} is not a comparison this run makes; "
            f"choose one of {', '.join(tested)}"
        )
    if is_inside(exp.out, exp.config.instance_dir):  # type: ignore[arg-type]
        raise UsageError(
            f"{exp.path}: out {exp.out} is inside instance_dir {exp.config.instance_dir}: the run "
            "would train on and score its own outputs; choose a folder outside it"
        )


def _is_experiment_folder(out: Path) -> bool:
    """``out`` holds an experiment's results (made before folders had a marker)."""
    names = ("references", "finetune", "samples", "scores", "summary.json", "report.html")
    names += ("replicate-1",)
    return any((out / name).exists() for name in names)
