"""`spurcli run`: the whole experiment for one class from one config file, resumable by stage.

    from spurcli.experiment import run_experiment
    result = run_experiment("examples/quickstart.toml")
    # -> ExperimentResult(out, report, summary, stages, reasons)
    result.stages                                 # {"finetune": "ran", "sample:generated": ...}
    result.reasons                                # {"finetune": "settings changed: lr", ...}

    spurcli run examples/quickstart.toml          # the same from the shell (make demo)

Stages, each writing into the experiment folder ``out`` (top-level key of the config):

    references out/references/{train,held-out}/     the reference folder split by the seed:
               `train_references` images are trained on, the rest held out for judging
    finetune   out/finetune/ (or [finetune] output_dir)    `spurcli.generate.finetune.finetune`, resumed
               out/finetune-dreambooth/: the DreamBooth-only arm, the same settings and seeds
               with sfsl_weight = 0 (`dreambooth_arm`), so SFSL's own effect can be measured
    sample     out/samples/<set>/                          `spurcli.generate.sample.sample`, per image
               sets: generated (the prompts with [V] on the SFSL arm), dreambooth (the same on
               the DreamBooth-only arm), their -recontext variants ("on the beach", ...), and
               baseline(-recontext) (the untuned model, the prompts without [V]). Every set uses
               the same seeds: image i of each starts from the same noise, so sets are paired.
    score      out/scores/<set>.json + .csv                `spurcli.evaluate.score.score_folders`
    features   out/features/<set>/<extractor>.npz          `spurcli.evaluate.compare.extract_features`
    compare    out/compare/<a>-vs-<b>.json                 `spurcli.evaluate.compare.similarity`
    curate     out/curated/ + out/curated.json             `spurcli.evaluate.curate.curate` of the SFSL
               set, only with a ``[curate]`` table (near-copies judged against the training
               references unless the table names ``references``)
    report     out/report.html, out/summary.json           `spurcli.experiment.report.write_report`

A stage is up to date when its outputs exist, are newer than its inputs (make's rule) and were
made with the settings the config asks for now (a settings stamp beside them, and for finetune
the run card's recorded config and reference hashes). A stale sample set is made again; a
finished fine-tuning run whose settings changed is refused unless ``--retrain`` (it may have cost
GPU hours). ``ExperimentResult.reasons`` (and ``--json``) say per stage why it ran or was skipped.
The summary (`spurcli.experiment.summary`) puts SFSL, DreamBooth-only and the untuned baseline side by side
per classifier, every rate with its Wilson interval and every difference tested.

The config file: top-level keys shared by the stages (``out``, ``model``, ``target``,
``class_noun``, ``instance_dir``, ``identifier``, ``seed``, and the run's own ``title``,
``recontext``, ``baseline``, ``dreambooth_arm``, ``train_references``, ``exclude_circular``) and
the tables ``[finetune]`` (read by `spurcli finetune` too), ``[sample]`` and ``[compare]`` (the
options of those commands). See examples/quickstart.toml.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError, UsageError
from spurcli.experiment.config import TABLES, ExperimentConfig
from spurcli.fileio import output_folder
from spurcli.generate.config import FinetuneConfig
from spurcli.settings import load_config, read_toml, to_dict

log = logging.getLogger(__name__)

REFERENCES = "references"  # the held-out references (all of them when none could be held out)
TRAIN_REFERENCES = "references-train"  # the references the arms were trained on
SFSL_ARM, DREAMBOOTH_ARM = "generated", "dreambooth"
LABELS = {
    "generated": "SFSL",
    "generated-recontext": "SFSL (recontext)",
    "dreambooth": "DreamBooth only",
    "dreambooth-recontext": "DreamBooth only (recontext)",
    "baseline": "baseline",
    "baseline-recontext": "baseline (recontext)",
    REFERENCES: "held-out references",
    TRAIN_REFERENCES: "training references",
}


@dataclass
class Experiment:
    """Everything an experiment needs, resolved from the config file."""

    config: ExperimentConfig  # the file's top level; the tables are the fields below
    finetune: FinetuneConfig
    sample: Any  # SampleConfig (prompts, n, steps, ... ; model and out are set per set)
    compare: Any  # CompareConfig
    path: Path
    curate: Any = None  # CurateConfig from the [curate] table; None: no curate stage

    @cached_property
    def split(self) -> ReferenceSplit:
        """The references trained on and held out (reads the reference folder once)."""
        source = Path(self.config.instance_dir)  # type: ignore[arg-type]
        return split_references(source, self.config.train_references, self.config.seed)

    @property
    def out(self) -> Path:
        return Path(self.config.out)  # type: ignore[arg-type]

    @property
    def finetune_dir(self) -> Path:
        return Path(self.finetune.output_dir)  # type: ignore[arg-type]

    def arms(self) -> dict[str, FinetuneConfig]:
        """Sample-set name -> the fine-tuning run behind it (SFSL, and DreamBooth alone)."""
        arms = {SFSL_ARM: self.finetune}
        if self.config.dreambooth_arm and self.finetune.sfsl_weight != 0:
            folder = self.finetune_dir.with_name(self.finetune_dir.name + "-dreambooth")
            arms[DREAMBOOTH_ARM] = replace(self.finetune, sfsl_weight=0.0, output_dir=folder)
        return arms

    def sample_sets(self) -> dict[str, tuple[str | None, list[str]]]:
        """set name -> (the arm whose model samples it, None: the base model; prompts)."""
        from spurcli.generate.sample import with_recontext, without_identifier

        prompts = list(self.sample.prompts)
        places = with_recontext(prompts)[len(prompts) :]
        sets: dict[str, tuple[str | None, list[str]]] = {}
        for arm in self.arms():
            sets[arm] = (arm, prompts)
            if self.config.recontext:
                sets[f"{arm}-recontext"] = (arm, places)
        if self.config.baseline:
            sets["baseline"] = (None, [without_identifier(p) for p in prompts])
            if self.config.recontext:
                sets["baseline-recontext"] = (None, [without_identifier(p) for p in places])
        return sets

    def reference_sets(self) -> list[str]:
        return [REFERENCES, TRAIN_REFERENCES] if self.split.held_out else [REFERENCES]

    def set_dir(self, name: str) -> Path:
        if name == REFERENCES:
            return self.out / "references" / ("held-out" if self.split.held_out else "train")
        if name == TRAIN_REFERENCES:
            return self.out / "references" / "train"
        return self.out / "samples" / name

    def comparisons(self) -> list[tuple[str, str]]:
        arms = list(self.arms())
        pairs = [(arm, REFERENCES) for arm in arms]
        if DREAMBOOTH_ARM in arms:
            pairs.append((SFSL_ARM, DREAMBOOTH_ARM))  # SFSL's own contribution
        if self.split.held_out:
            pairs.append((SFSL_ARM, TRAIN_REFERENCES))  # the memorisation check
        if self.config.baseline:
            pairs += [(arm, "baseline") for arm in arms]
            if self.config.recontext:
                pairs += [(f"{arm}-recontext", "baseline-recontext") for arm in arms]
        return pairs

    def circular(self) -> list[str]:
        """Victim classifiers that are the SFSL extractor itself (same model, same weights)."""
        if self.finetune.sfsl_weight == 0:
            return []
        from spurcli import plugins
        from spurcli.plugins import parse_weights

        def identity(registry: Any, name: str) -> tuple[str, str | None]:
            entry, variant = registry.resolve(name)
            return entry.name, variant

        extractor = identity(plugins.extractors(), self.finetune.extractor)
        weights = parse_weights(self.compare.weights)
        return [
            name
            for name in self.compare.classifiers
            if identity(plugins.classifiers(), name) == extractor
            and weights.get(name) == self.finetune.extractor_weights
        ]


@dataclass(frozen=True)
class ReferenceSplit:
    """The reference images, split by the seed into those trained on and those held out."""

    source: Path
    train: list[Path]
    held_out: list[Path]

    def to_json(self) -> dict[str, Any]:
        from spurcli.images import sha256_file

        def files(paths: list[Path]) -> list[dict[str, str]]:
            return [
                {"file": p.relative_to(self.source).as_posix(), "sha256": sha256_file(p)}
                for p in paths
            ]

        return {
            "source": str(self.source),
            "train": files(self.train),
            "held_out": files(self.held_out),
        }


def split_references(source: Path, n_train: int, seed: int) -> ReferenceSplit:
    """``n_train`` images of ``source`` (drawn by ``seed``) to train on, the rest held out.

    ``n_train`` 0, or not fewer than the images there are, trains on all and holds none out.
    """
    from spurcli.images import find_images

    files = find_images(source)
    if n_train <= 0 or n_train >= len(files):
        if n_train > 0:
            log.warning(
                "%s holds %d reference images and train_references is %d: none is held out, "
                "so the generated images are judged against the images they were trained on",
                source,
                len(files),
                n_train,
            )
        return ReferenceSplit(source, files, [])
    chosen = set(random.Random(seed).sample(range(len(files)), n_train))
    train = [f for i, f in enumerate(files) if i in chosen]
    return ReferenceSplit(source, train, [f for i, f in enumerate(files) if i not in chosen])


def load_experiment(path: str | os.PathLike[str], sets: Sequence[str] = ()) -> Experiment:
    """Read and check a run config.

    ``sets``: ``--set key=value`` for a top-level key, ``--set table.key=value`` for a table's
    (``--set finetune.steps=10``, ``--set sample.n=4``).
    """
    from spurcli.evaluate.compare import CompareConfig
    from spurcli.generate.sample import SampleConfig

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
    top = load_config(ExperimentConfig, path, sets=by_table.get(None, ()))
    # "examples/../runs/x" -> "runs/x": the folders appear in logs and in the report.
    top = replace(top, **{k: _norm(getattr(top, k)) for k in ("out", "instance_dir")})
    top.check(path)
    shared = {
        "model": top.model,
        "revision": top.revision,
        "target": top.target,
        "class_noun": top.class_noun,
        "instance_dir": top.out / "references" / "train",  # type: ignore[operator]
        "identifier": top.identifier,
        "seed": top.seed,
    }

    def section(cls: type, name: str) -> Any:
        fields = cls.__dataclass_fields__
        table_sets = by_table.get(name, ())
        # Shared keys not set in the table (or by --set) follow the top level's resolved values.
        given = {k.replace("-", "_") for k in data.get(name, {})}
        given |= {item.partition("=")[0].strip().replace("-", "_") for item in table_sets}
        if name in data:
            cfg = load_config(cls, path, section=name, sets=table_sets)
        else:  # no table: only the shared values (the file's other keys are the top level's)
            own = {k: v for k, v in shared.items() if k in fields and k not in given}
            cfg = load_config(cls, None, sets=table_sets, overrides=own)
        return replace(cfg, **{k: v for k, v in shared.items() if k in fields and k not in given})

    finetune = section(FinetuneConfig, "finetune")
    if "instance_dir" in {k.replace("-", "_") for k in data.get("finetune", {})}:
        raise UsageError(
            f"{path}: [finetune] instance_dir is set by the run (the training share of the "
            "top-level instance_dir); remove it from the table"
        )
    finetune = replace(
        finetune,
        output_dir=_norm(finetune.output_dir) or top.out / "finetune",  # type: ignore[operator]
        # Both arms share the prior images (the frozen model's, the same for both).
        class_dir=_norm(finetune.class_dir) or top.out / "class-images",  # type: ignore[operator]
    )
    sample = section(SampleConfig, "sample")
    if not sample.prompts:
        from spurcli.generate.finetune import fill_prompt

        sample = replace(
            sample, prompts=[fill_prompt(finetune.instance_prompt, "[V]", top.class_noun)]
        )
    compare = section(CompareConfig, "compare")
    compare = replace(compare, real=_norm(compare.real))
    if not compare.classifiers:
        raise UsageError(f'{path}: [compare] classifiers is required, e.g. ["resnet", "clip"]')
    curate = None
    if "curate" in data:
        from spurcli.evaluate.curate import CurateConfig

        curate = section(CurateConfig, "curate")
        # The stage owns out/curated/; the references default to those trained on.
        refs = _norm(curate.references) or top.out / "references" / "train"  # type: ignore[operator]
        curate = replace(curate, references=refs, overwrite=True)
    return Experiment(
        config=top, finetune=finetune, sample=sample, compare=compare, path=path, curate=curate
    )


def is_experiment_config(path: str | os.PathLike[str]) -> bool:
    """A `spurcli run` config: an experiment folder ``out`` at its top level."""
    return isinstance(read_toml(Path(path)).get("out"), str)


def finetune_config(
    path: str | os.PathLike[str], sets: Sequence[str] = (), options: dict[str, Any] | None = None
) -> FinetuneConfig:
    """`spurcli finetune RUN_CONFIG`: the SFSL arm exactly as `run` trains it (into
    ``<out>/finetune`` unless the table says otherwise, on the training share of the references,
    which this writes into ``<out>/references/``), with ``options`` (set ones) winning.

    ``sets`` are finetune keys (``lr=1e-5``) or, with a table, any of the run's
    (``sample.n=4``), so one file and one syntax serve both commands.
    """
    from spurcli.console import is_main_process

    exp = load_experiment(
        path, [s if "." in s.partition("=")[0] else f"finetune.{s}" for s in sets]
    )
    run_references(exp, Stages(), is_main_process())
    given = {k: v for k, v in (options or {}).items() if v is not None}
    return load_config(FinetuneConfig, None, overrides={**to_dict(exp.finetune), **given})


def _norm(path: Path | None) -> Path | None:
    return None if path is None else Path(os.path.normpath(path))


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


def staleness(
    outputs: Sequence[Path], inputs: Sequence[Path], stamp: dict[str, Any] | None = None
) -> str | None:
    """Why the outputs are stale, or None when they are up to date: all exist, none is older
    than any input (make's rule), and they were made with the settings in ``stamp`` (kept in a
    ``<first output>.stamp.json`` next to them)."""
    missing = [p for p in outputs if not p.exists()]
    if missing:
        return f"no {missing[0].name} yet"
    if stamp is not None:
        try:
            made = json.loads(_stamp_path(outputs[0]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "no record of the settings it was made with"
        now = json.loads(json.dumps(stamp, default=str))
        changed = sorted(k for k in {*made, *now} if made.get(k) != now.get(k))
        if changed:
            return "settings changed: " + ", ".join(changed)
    if min(p.stat().st_mtime for p in outputs) < _mtime(inputs):
        return "inputs changed"
    return None


def fresh(
    outputs: Sequence[Path], inputs: Sequence[Path], stamp: dict[str, Any] | None = None
) -> bool:
    """`staleness` is None: the outputs are up to date."""
    return staleness(outputs, inputs, stamp) is None


def _stamp_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.stamp.json")


def write_stamp(output: Path, stamp: dict[str, Any]) -> None:
    from spurcli.fileio import write_json

    write_json(_stamp_path(output), stamp)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class Stages:
    """Runs or skips each stage, and records which and why."""

    def __init__(self) -> None:
        self.done: dict[str, str] = {}
        self.reasons: dict[str, str] = {}

    def skip(self, name: str, why: str = "up to date") -> None:
        log.info("%s: %s, skipped", name, why)
        self.done[name], self.reasons[name] = "skipped", why

    def ran(self, name: str, why: str = "not made yet") -> None:
        self.done[name], self.reasons[name] = "ran", why

    def check(self, name: str, why: str | None) -> bool:
        """Skip the stage when ``why`` (its staleness) is None; True when it must run."""
        if why is None:
            self.skip(name)
            return False
        log.info("%s: %s", name, why)
        self.reasons[name] = why
        return True


def run_experiment(
    path: str | os.PathLike[str], *, sets: Sequence[str] = (), retrain: bool = False
) -> ExperimentResult:
    """Run (or continue) the experiment described by the config file at ``path``.

    ``retrain``: a finished fine-tuning arm whose recorded settings differ from the config is
    discarded and trained again (without it, that is an error: it may have cost GPU hours).
    """
    from spurcli import console

    exp = load_experiment(path, sets)
    from spurcli import imagenet, plugins

    imagenet.resolve_class(exp.config.target)  # type: ignore[arg-type]
    for name in exp.compare.classifiers:  # unknown names: fail before hours of fine-tuning
        plugins.classifiers().resolve(name)
    for name in exp.compare.extractors:
        plugins.extractors().resolve(name)
    for arm in exp.arms().values():
        arm.check()
    check_tables(exp)
    stages = Stages()
    main = console.is_main_process()

    with output_folder(exp.out, "run", recognise=_is_experiment_folder, enabled=main):
        run_references(exp, stages, main)
        for arm in exp.arms():
            run_finetune(exp, arm, stages, retrain=retrain)
        run_sampling(exp, stages)
        run_scoring(exp, stages, main)
        run_features(exp, stages, main)
        run_comparisons(exp, stages, main)
        run_curate(exp, stages, main)
        report, summary = run_report(exp, stages, main)
    return ExperimentResult(
        out=exp.out, report=report, summary=summary, stages=stages.done, reasons=stages.reasons
    )


def check_tables(exp: Experiment) -> None:
    """The [sample] and [compare] settings too, before the first stage starts (not hours later,
    at their turn); an experiment folder inside the references is refused."""
    from spurcli.fileio import is_inside
    from spurcli.generate.sample import check_sample_config

    check_sample_config(exp.sample)
    exp.compare.check()
    if is_inside(exp.out, exp.config.instance_dir):  # type: ignore[arg-type]
        raise UsageError(
            f"{exp.path}: out {exp.out} is inside instance_dir {exp.config.instance_dir}: the run "
            "would train on and score its own outputs; choose a folder outside it"
        )


def _is_experiment_folder(out: Path) -> bool:
    """``out`` holds an experiment's results (made before folders had a marker)."""
    names = ("references", "finetune", "samples", "scores", "summary.json", "report.html")
    return any((out / name).exists() for name in names)


def run_references(exp: Experiment, stages: Stages, main: bool) -> None:
    """Copy the split into out/references/{train,held-out} (what finetune and score read)."""
    from spurcli.fileio import atomic_dir, write_json

    record = exp.out / "references" / "split.json"
    split = exp.split.to_json()
    try:
        same = json.loads(record.read_text(encoding="utf-8")) == split
    except (OSError, ValueError):
        same = False
    if same:
        stages.skip("references")
        return
    if main:
        for name, files in (("train", exp.split.train), ("held-out", exp.split.held_out)):
            target = exp.out / "references" / name
            if not files:
                shutil.rmtree(target, ignore_errors=True)
                continue
            with atomic_dir(target) as tmp:
                for file in files:
                    copy = tmp / file.relative_to(exp.split.source)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, copy)
        write_json(record, split)
    _barrier(exp.compare.device)
    n_train, n_held = len(exp.split.train), len(exp.split.held_out)
    stages.ran("references", f"{n_train} to train on, {n_held} held out")


def _changed_settings(recorded: dict[str, Any], cfg: FinetuneConfig) -> list[str]:
    """Options of ``cfg`` that differ from a run's recorded config (those that change weights)."""
    from spurcli.generate.checkpoints import RESUME_FREE

    now = to_dict(cfg)
    free = RESUME_FREE | {"class_dir"}
    return sorted(k for k in now if k not in free and recorded.get(k, now[k]) != now[k])


def run_finetune(exp: Experiment, arm: str, stages: Stages, *, retrain: bool = False) -> None:
    from spurcli.generate.checkpoints import STEP_FREE_SCHEDULES
    from spurcli.generate.finetune import finetune
    from spurcli.images import sha256_file
    from spurcli.records import FINETUNE_CARD

    cfg = exp.arms()[arm]
    folder = Path(cfg.output_dir)  # type: ignore[arg-type]
    name = "finetune" if arm == SFSL_ARM else f"finetune:{arm}"
    info_path = folder / FINETUNE_CARD
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    why = None
    if info:
        changed = _changed_settings(info.get("config", {}), cfg)
        refs = sorted(sha256_file(p) for p in exp.split.train)
        if sorted(r["sha256"] for r in info.get("references", [])) != refs:
            changed.append("reference images")
        done = info.get("steps_done", 0)
        if not changed and done > cfg.steps:
            changed.append(f"steps (trained {done}, asked {cfg.steps})")
        elif (
            not changed
            and done < cfg.steps
            and cfg.lr_scheduler not in STEP_FREE_SCHEDULES
            and info.get("status") == "finished"
        ):
            changed.append(f"steps (trained {done} with a {cfg.lr_scheduler} schedule)")
        if changed:
            if not retrain:
                raise SpurcliError(
                    f"{folder} was trained with other settings ({', '.join(changed)}) than "
                    f"{exp.path} asks for now; run again with --retrain to discard it and train "
                    "anew, or restore the settings"
                )
            log.warning("%s: discarding %s (%s)", name, folder, ", ".join(changed))
            shutil.rmtree(folder)
            why = "retrained: " + ", ".join(changed)
        elif info.get("status") == "finished" and done >= cfg.steps:
            stages.skip(name)
            return
        else:
            why = f"resumed at step {done}" if info.get("status") != "finished" else "more steps"
    log.info("%s: %s", name, folder)
    finetune(replace(cfg, resume="latest"))  # continues from the last checkpoint
    stages.ran(name, why or "not made yet")


def _sample_config(exp: Experiment, name: str) -> Any:
    from spurcli.generate.sample import SampleConfig

    arm, prompts = exp.sample_sets()[name]
    model = exp.arms()[arm].output_dir if arm else exp.config.model
    revision = None if arm else base_revision(exp)  # an arm's run is identified by its hashes
    config: SampleConfig = replace(exp.sample, model=str(model), prompts=prompts)
    return replace(config, out=exp.set_dir(name), recontext=False, revision=revision)


def base_revision(exp: Experiment) -> str | None:
    """The base model's revision for the baseline: as pinned, else the commit the SFSL arm was
    fine-tuned from (its run card), so that the baseline and the arms share one base model even
    if the hub's main moved since."""
    from spurcli.records import FINETUNE_CARD

    if exp.config.revision:
        return exp.config.revision
    card = _read_json(Path(exp.finetune_dir) / FINETUNE_CARD) or {}
    started = card.get("model_id") or {}
    if card.get("model") == exp.config.model and started.get("source") == "hub":
        return started.get("revision")
    return None


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None if it is missing or unreadable (or from an older spurcli)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_stamp(exp: Experiment, arm: str | None) -> Any:
    """What identifies the model a set is sampled from: the base model's name, or the arm's run
    (its config, steps and finishing time: a retrained arm is another model)."""
    from spurcli.records import FINETUNE_CARD

    if arm is None:  # a pinned revision is part of the model: another commit, other images
        revision = base_revision(exp)
        return (
            exp.config.model
            if revision is None
            else {"model": exp.config.model, "revision": revision}
        )
    info_path = Path(exp.arms()[arm].output_dir) / FINETUNE_CARD  # type: ignore[arg-type]
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    return {k: info.get(k) for k in ("config", "steps_done", "seconds", "references")}


SAMPLE_STAMP_KEYS = (
    "prompts", "n", "seed", "steps", "guidance", "negative_prompt", "scheduler", "height",
    "width", "batch_size", "dtype",
)  # fmt: skip


def run_sampling(exp: Experiment, stages: Stages) -> None:
    from spurcli.console import is_main_process
    from spurcli.generate.pipelines import load_pipeline, resolve_model
    from spurcli.generate.sample import count_missing, sample
    from spurcli.records import MANIFEST

    pipes: dict[str | None, Any] = {}
    for name, (arm, prompts) in exp.sample_sets().items():
        config = _sample_config(exp, name)
        ref = resolve_model(config.model, config.revision)
        manifest = Path(config.out) / MANIFEST
        stamp = {
            "model": _model_stamp(exp, arm),
            **{k: getattr(config, k) for k in SAMPLE_STAMP_KEYS},
        }
        # The stamp is written before the first image, so an interrupted set resumes image by
        # image; images made by another model or with other settings are made again.
        why = staleness([manifest], [], stamp) if manifest.is_file() else None
        if why is not None:
            log.info("sample:%s: %s; sampling the set again", name, why)
            if is_main_process():
                shutil.rmtree(config.out)
            _barrier(exp.compare.device)
        missing = count_missing(config, ref.identifier)
        if not missing:
            stages.skip(f"sample:{name}")
            continue
        if is_main_process():
            write_stamp(manifest, stamp)
        if arm not in pipes:
            pipes.clear()  # one pipeline in memory at a time
            pipes[arm] = load_pipeline(ref)
        log.info("sample:%s: %d prompts x %d images", name, len(prompts), config.n)
        sample(config, pipe=pipes[arm], model_ref=ref)
        stages.ran(f"sample:{name}", why or f"{missing} images to make")


def _all_sets(exp: Experiment) -> list[str]:
    return [*exp.sample_sets(), *exp.reference_sets()]


def _score_paths(exp: Experiment, name: str) -> tuple[Path, Path]:
    return exp.out / "scores" / f"{name}.json", exp.out / "scores" / f"{name}.csv"


def _real_rows_path(exp: Experiment) -> Path:
    return exp.out / "scores" / "real-images.csv"


def run_scoring(exp: Experiment, stages: Stages, main: bool) -> None:
    from spurcli.evaluate.score import score_folders
    from spurcli.plugins import parse_weights

    cfg = exp.compare
    stamp = {
        "target": exp.config.target,
        "classifiers": cfg.classifiers,
        "weights": cfg.weights,
        "real": cfg.real,
        "bootstrap": [cfg.bootstrap, cfg.bootstrap_seed],  # the intervals in the score JSON
        "preprocess": cfg.preprocess,  # another protocol gives the classifiers other pixels
    }
    names = _all_sets(exp)
    real = [cfg.real] if cfg.real else []
    why = {n: staleness(_score_paths(exp, n), [exp.set_dir(n), *real], stamp) for n in names}
    stale = [n for n in names if why[n] is not None]
    if stale:
        # One pass over every set to score: the real images are decoded and scored once for all.
        results = score_folders(
            [exp.set_dir(name) for name in stale],
            exp.config.target,  # type: ignore[arg-type]
            cfg.classifiers,
            cfg,
            real_dir=cfg.real,
            weights=parse_weights(cfg.weights),
            bootstrap=cfg.bootstrap,
            bootstrap_seed=cfg.bootstrap_seed,
        )
        if main:
            from spurcli.fileio import write_json

            for name, result in zip(stale, results, strict=True):
                json_path, csv_path = _score_paths(exp, name)
                result.write_csv(csv_path)
                write_json(json_path, result.to_json())
                write_stamp(json_path, stamp)
            if results[0].real is not None:  # the positives of every ROC-AUC/AP difference
                results[0].real.write_csv(_real_rows_path(exp))
    for name in names:
        if name in stale:
            stages.ran(f"score:{name}", why[name])  # type: ignore[arg-type]
        else:
            stages.skip(f"score:{name}")
    _barrier(cfg.device)


def _feature_path(exp: Experiment, name: str, extractor: str) -> Path:
    return exp.out / "features" / name / f"{_slug(extractor)}.npz"


def _weights_path(exp: Experiment, name: str, extractor: str) -> Path:
    """Next to the features: which weights made them (compare JSON and the summary show it)."""
    return _feature_path(exp, name, extractor).with_suffix(".weights.json")


def _weights_entry(model: Any) -> dict[str, Any]:
    return {"weights": model.weights, "weights_id": model.weights_id}


def model_identities(exp: Experiment) -> dict[str, Any]:
    """The exact weights behind a run's numbers (for the summary): the base model the arms were
    fine-tuned from, each arm's pipeline (content hashes) and SFSL extractor, the extractors."""
    from spurcli.generate.pipelines import model_identity, resolve_model
    from spurcli.records import FINETUNE_CARD

    arms = {}
    base = None
    for arm, cfg in exp.arms().items():
        card = _read_json(Path(cfg.output_dir) / FINETUNE_CARD) or {}  # type: ignore[arg-type]
        base = base or card.get("model_id")
        arms[arm] = {
            "model_id": model_identity(resolve_model(cfg.output_dir)),  # type: ignore[arg-type]
            "sfsl_extractor": (card.get("extractor") or {}).get("weights_id"),
        }
    first = exp.comparisons()[0][0]  # a set every extractor saw
    extractors = {e: _read_json(_weights_path(exp, first, e)) for e in exp.compare.extractors}
    return {"base": base, "arms": arms, "extractors": extractors}


def run_features(exp: Experiment, stages: Stages, main: bool) -> None:
    from spurcli.evaluate.compare import extract_features
    from spurcli.fileio import write_json
    from spurcli.plugins import load_extractors, parse_weights

    cfg = exp.compare
    needed = sorted({s for pair in exp.comparisons() for s in pair})
    weights = parse_weights(cfg.extractor_weights, "--extractor-weights")

    def stamp(extractor: str) -> dict[str, Any]:
        return {"extractor": extractor, "weights": weights.get(extractor)}

    why = {
        (name, extractor): staleness(
            [_feature_path(exp, name, extractor)], [exp.set_dir(name)], stamp(extractor)
        )
        for extractor in cfg.extractors
        for name in needed
    }
    todo = [key for key, reason in why.items() if reason is not None]
    for (name, extractor), reason in why.items():
        if reason is None:
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
            write_json(_weights_path(exp, name, extractor), _weights_entry(loaded[extractor]))
            write_stamp(_feature_path(exp, name, extractor), stamp(extractor))
        stages.ran(f"features:{name}:{extractor}", why[(name, extractor)])  # type: ignore[arg-type]
    _barrier(cfg.device)


def _compare_path(exp: Experiment, a: str, b: str) -> Path:
    return exp.out / "compare" / f"{a}-vs-{b}.json"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The per-image rows of a score CSV, typed as `ScoreResult.rows` are."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    from spurcli.text import csv_value

    for row in rows:
        for key in ("image", "classifier", "top1_name"):
            row[key] = csv_value(row[key])
        row["top1_index"] = int(row["top1_index"])
        row["target_prob"] = float(row["target_prob"])
        row["target_rank"] = int(row["target_rank"])
    return rows


@dataclass
class SavedScores:
    """A set's per-image numbers read back from its score CSV, shaped as `compare.differences`
    takes a `ScoreResult` (the real images' from ``scores/real-images.csv``, when scored)."""

    target: Any  # ImageNetClass
    spurious: Any  # spurcli.evaluate.imagepass.PerImage
    real: Any  # spurcli.evaluate.imagepass.PerImage or None


def saved_scores(exp: Experiment, name: str) -> SavedScores:
    from spurcli import imagenet
    from spurcli.evaluate.imagepass import PerImage

    target = imagenet.resolve_class(exp.config.target)  # type: ignore[arg-type]
    rows = read_rows(_score_paths(exp, name)[1])
    real_path = _real_rows_path(exp)
    real = read_rows(real_path) if exp.compare.real and real_path.is_file() else None
    return SavedScores(
        target,
        PerImage.from_rows(rows, target.index),
        None if real is None else PerImage.from_rows(real, target.index),
    )


def run_comparisons(exp: Experiment, stages: Stages, main: bool) -> None:
    from spurcli.evaluate.compare import (
        CompareResult,
        Features,
        differences,
        find_pairs,
        similarity,
    )
    from spurcli.fileio import write_json

    for a, b in exp.comparisons():
        out = _compare_path(exp, a, b)
        inputs = [*_score_paths(exp, a), *_score_paths(exp, b)]
        inputs += [_feature_path(exp, s, e) for s in (a, b) for e in exp.compare.extractors]
        inputs += [_real_rows_path(exp)] if exp.compare.real else []
        stamp = {
            "extractors": exp.compare.extractors,
            "bootstrap": [exp.compare.bootstrap, exp.compare.bootstrap_seed],
        }
        why = staleness([out], inputs, stamp)
        if not stages.check(f"compare:{a}-vs-{b}", why):
            continue
        sims = {
            e: similarity(
                Features.load(_feature_path(exp, a, e)), Features.load(_feature_path(exp, b, e))
            )
            for e in exp.compare.extractors
        }
        scored = [saved_scores(exp, name) for name in (a, b)]
        pairing = find_pairs(
            exp.set_dir(a), scored[0].spurious.images, exp.set_dir(b), scored[1].spurious.images
        )
        cfg = exp.compare
        diffs = differences(*scored, pairing, resamples=cfg.bootstrap, seed=cfg.bootstrap_seed)
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
            differences=diffs,
            extractors={e: _read_json(_weights_path(exp, a, e)) for e in exp.compare.extractors},
        )
        if main:
            write_json(out, result.report_data())
            write_stamp(out, stamp)
        stages.ran(f"compare:{a}-vs-{b}", why)  # type: ignore[arg-type]


def _curate_paths(exp: Experiment) -> tuple[Path, Path]:
    return exp.out / "curated", exp.out / "curated.json"


def run_curate(exp: Experiment, stages: Stages, main: bool) -> None:
    """`spurcli curate` of the SFSL arm's images into out/curated/ (with a [curate] table)."""
    if exp.curate is None:
        return
    from dataclasses import asdict

    from spurcli.evaluate.curate import curate
    from spurcli.fileio import write_json

    folder, data = _curate_paths(exp)
    stamp = asdict(exp.curate)
    inputs = [exp.set_dir(SFSL_ARM), Path(exp.curate.references)]
    if not stages.check("curate", staleness([data, folder], inputs, stamp)):
        return
    result = curate(exp.set_dir(SFSL_ARM), folder, exp.curate)
    if main:
        write_json(data, result.report_data(exp.curate.report_images))
        write_stamp(data, stamp)
    stages.ran("curate", stages.reasons.get("curate", "not made yet"))
    _barrier(exp.curate.device)


def run_report(exp: Experiment, stages: Stages, main: bool) -> tuple[Path, dict[str, Any]]:
    from spurcli.experiment.report import write_report
    from spurcli.experiment.summary import summarize, summary_table
    from spurcli.fileio import write_json

    report, summary_path = exp.out / "report.html", exp.out / "summary.json"
    comparisons = [_compare_path(exp, a, b) for a, b in exp.comparisons()]
    inputs = comparisons + [_score_paths(exp, s)[0] for s in _all_sets(exp)]
    curated = [_curate_paths(exp)[1]] if exp.curate is not None else []
    inputs += curated
    summary = summarize(exp)
    stamp = {
        "title": exp.config.title,
        "notes": exp.config.notes,
        "report_images": exp.compare.report_images,
        "exclude_circular": exp.config.exclude_circular,
    }
    if not stages.check("report", staleness([report, summary_path], inputs, stamp)):
        return report, summary
    if main:
        title = exp.config.title or (
            f"spurcli run: {summary['target']['name']} ← {exp.config.class_noun} ({exp.path.name})"
        )
        notes = [
            *exp.config.notes,
            f"model {exp.config.model}; arms: "
            + ", ".join(f"{LABELS[a]} in {c.output_dir}" for a, c in exp.arms().items())
            + f"; references: {exp.config.instance_dir}; config: {exp.path}",
            *summary["notes"],
        ]
        if exp.config.model == "tiny":
            notes.append(
                "`tiny` is a random miniature Stable Diffusion for smoke runs: its images are "
                "noise-like by design, so these numbers test the pipeline, not the method."
            )
        elif exp.config.model == "mini":
            notes.append(
                "`mini` is spurcli's embedded miniature Stable Diffusion (128 px; VAE and base "
                "UNet trained on scikit-image's CC0 photos, the UNet without the brick photo): "
                "a demonstration at toy scale, not a measurement of Stable Diffusion "
                "(docs/quickstart.md)."
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
            curations=[json.loads(p.read_text(encoding="utf-8")) for p in curated],
        )
        write_stamp(report, stamp)
    stages.ran("report", stages.reasons.get("report", "not made yet"))
    return report, summary


def _barrier(device: str | None) -> None:
    from spurcli.parallel import launched_distributed

    if launched_distributed():
        from spurcli.parallel import Processes

        Processes(device).barrier()
