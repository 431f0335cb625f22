"""The plan of an experiment: its arms, image sets and comparisons, resolved from a run config.

    from spurcli.experiment.plan import load_experiment
    exp = load_experiment("examples/quickstart.toml", ["sample.n=4"])
    exp.arms()            # {"sfsl": FinetuneConfig, "dreambooth": FinetuneConfig (sfsl_weight 0)}
    exp.sample_sets()     # {"sfsl": ("sfsl", prompts), ..., "baseline": (None, no [V])}
    exp.comparisons()     # [("sfsl", "references"), ("sfsl", "dreambooth"), ...]

The arms are fine-tuning runs: ``sfsl`` (the method) and ``dreambooth`` (the same settings and
seeds with ``sfsl_weight = 0``, so SFSL's own effect can be measured); ``baseline`` is the
untuned model sampled with the prompts without [V]. Every set is sampled with the same seeds, so
image i of each starts from the same noise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from spurcli import plugins
from spurcli.errors import UsageError
from spurcli.evaluate.config import CompareConfig, CurateConfig
from spurcli.experiment.config import TABLES, ExperimentConfig
from spurcli.experiment.layout import REFERENCES, TRAIN_REFERENCES, Layout
from spurcli.experiment.references import ReferenceSplit, split_references
from spurcli.generate.config import FinetuneConfig, SampleConfig
from spurcli.generate.prompts import fill_prompt, with_recontext, without_identifier
from spurcli.plugins import parse_weights
from spurcli.seeds import derive_seed
from spurcli.settings import load_config, read_toml
from spurcli.weights import content_key, identity_key

# The image sets of an experiment, named after what made them. Each arm is a fine-tuning run.
SFSL, DREAMBOOTH, BASELINE = "sfsl", "dreambooth", "baseline"
LABELS = {
    SFSL: "SFSL",
    f"{SFSL}-recontext": "SFSL (recontext)",
    DREAMBOOTH: "DreamBooth only",
    f"{DREAMBOOTH}-recontext": "DreamBooth only (recontext)",
    BASELINE: "baseline",
    f"{BASELINE}-recontext": "baseline (recontext)",
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
    replicate: int = 0  # 1..replicates for a replicate of a replicated experiment; 0: the whole
    split_seed: int | None = None  # the reference split's seed (None: the config's seed)
    copies: list[Experiment] = field(default_factory=list, repr=False)  # the replicates

    @cached_property
    def split(self) -> ReferenceSplit:
        """The references trained on and held out (reads the reference folder once)."""
        source = Path(self.config.instance_dir)  # type: ignore[arg-type]
        seed = self.config.seed if self.split_seed is None else self.split_seed
        return split_references(
            source, self.config.train_references, seed, self.config.near_duplicate_references
        )

    def replicates(self) -> list[Experiment]:
        """The independent training runs whose results are pooled: the experiment itself when
        it is unreplicated, else one per replicate, each in ``out/replicate-<k>/`` with its own
        training seed and reference split (shared by its arms and prior images)."""
        return self.copies or [self]

    @property
    def out(self) -> Path:
        return Path(self.config.out)  # type: ignore[arg-type]

    @property
    def layout(self) -> Layout:
        """Every path of the experiment folder."""
        return Layout(self.out)

    @property
    def finetune_dir(self) -> Path:
        return Path(self.finetune.output_dir)  # type: ignore[arg-type]

    def arms(self) -> dict[str, FinetuneConfig]:
        """Sample-set name -> the fine-tuning run behind it (SFSL, and DreamBooth alone)."""
        arms = {SFSL: self.finetune}
        if self.config.dreambooth_arm and self.finetune.sfsl_weight != 0:
            folder = self.finetune_dir.with_name(self.finetune_dir.name + "-dreambooth")
            arms[DREAMBOOTH] = replace(self.finetune, sfsl_weight=0.0, output_dir=folder)
        return arms

    def sample_sets(self) -> dict[str, tuple[str | None, list[str]]]:
        """set name -> (the arm whose model samples it, None: the base model; prompts)."""
        prompts = list(self.sample.prompts)
        places = with_recontext(prompts)[len(prompts) :]
        sets: dict[str, tuple[str | None, list[str]]] = {}
        for arm in self.arms():
            sets[arm] = (arm, prompts)
            if self.config.recontext:
                sets[f"{arm}-recontext"] = (arm, places)
        if self.config.baseline:
            sets[BASELINE] = (None, [without_identifier(p) for p in prompts])
            if self.config.recontext:
                sets[f"{BASELINE}-recontext"] = (None, [without_identifier(p) for p in places])
        return sets

    def reference_sets(self) -> list[str]:
        return [REFERENCES, TRAIN_REFERENCES] if self.split.held_out else [REFERENCES]

    def set_dir(self, name: str) -> Path:
        if name == REFERENCES:  # which references judge depends on the split
            return self.layout.set_dir(name, held_out=bool(self.split.held_out))
        if self.replicate and name.startswith(BASELINE):
            # The untuned model's sets are the same images in every replicate (same model, same
            # sampling seeds), so they are made once, in the experiment folder above.
            return Layout(self.out.parent).set_dir(name)
        return self.layout.set_dir(name)

    def all_sets(self) -> list[str]:
        """Every image set: the sampled ones, then the references."""
        return [*self.sample_sets(), *self.reference_sets()]

    def comparisons(self) -> list[tuple[str, str]]:
        arms = list(self.arms())
        pairs = [(arm, REFERENCES) for arm in arms]
        if DREAMBOOTH in arms:
            pairs.append((SFSL, DREAMBOOTH))  # SFSL's own contribution
        if self.split.held_out:
            # the memorisation check of every arm, and its yardstick: how near a fresh,
            # independent image of the feature (a held-out reference) comes to the training ones
            pairs += [(arm, TRAIN_REFERENCES) for arm in arms] + [(REFERENCES, TRAIN_REFERENCES)]
        if self.config.baseline:
            pairs += [(arm, BASELINE) for arm in arms]
            if self.config.recontext:
                pairs += [(f"{arm}-recontext", f"{BASELINE}-recontext") for arm in arms]
        return pairs

    def primary(self) -> str:
        """The pre-declared comparison: the config's, or by default SFSL vs DreamBooth-only, and
        SFSL vs the baseline in a run without a DreamBooth-only arm."""
        default = ExperimentConfig.__dataclass_fields__["primary"].default
        # decided from the arms alone: reading the reference folder waits for the first stage
        if self.config.primary == default and DREAMBOOTH not in self.arms():
            return f"{SFSL}-vs-{BASELINE}"
        return self.config.primary

    def circular(self, recorded: dict[str, Any] | None = None) -> list[str]:
        """Victim classifiers that are the SFSL extractor itself: the same model, and the same
        weights by content (one file by two paths, or by path and as the plugin's default).

        ``recorded``: the weights identities a run recorded, ``{"extractor": weights_id,
        "classifiers": {name: weights_id}}``; they stand for weights left to the plugin's
        default, whose file is known only once loaded."""
        if self.finetune.sfsl_weight == 0:
            return []
        recorded = recorded or {}

        def key(value: str | None, weights_id: Any) -> str | None:
            return identity_key(weights_id) if value is None and weights_id else content_key(value)

        extractor = _identity(plugins.extractors(), self.finetune.extractor)
        extractor_key = key(self.finetune.extractor_weights, recorded.get("extractor"))
        weights = parse_weights(self.compare.weights)
        ids = recorded.get("classifiers") or {}
        return [
            name
            for name in self.compare.classifiers
            if _identity(plugins.classifiers(), name) == extractor
            and key(weights.get(name), ids.get(name)) == extractor_key
        ]

    def circular_spaces(self) -> list[str]:
        """Feature spaces of the similarity figures that are the SFSL extractor itself (same
        model, same weights): SFSL optimised the images towards the references there."""
        if self.finetune.sfsl_weight == 0:
            return []
        extractor = _identity(plugins.extractors(), self.finetune.extractor)
        return [
            name
            for name, weights in self.feature_spaces(independent=False).items()
            if _identity(plugins.extractors(), name) == extractor
            and content_key(weights) == content_key(self.finetune.extractor_weights)
        ]

    def feature_spaces(self, independent: bool = True) -> dict[str, str | None]:
        """Extractor name -> weights of the similarity figures: ``[compare] extractors`` and, if
        each of those is circular (``independent``), also a space SFSL did not optimise: the
        first victim classifier that is not circular and is a registered extractor too, with the
        victim's weights."""
        weights = parse_weights(self.compare.extractor_weights, "--extractor-weights")
        spaces = {name: weights.get(name) for name in self.compare.extractors}
        if not independent or (spaces and set(self.circular_spaces()) != set(spaces)):
            return spaces
        victims, circular = parse_weights(self.compare.weights), set(self.circular())
        for name in self.compare.classifiers:
            if name in circular or name in spaces:
                continue
            try:
                plugins.extractors().resolve(name)
            except UsageError:
                continue  # a classifier without a feature-extractor entry
            spaces[name] = victims.get(name)
            break
        return spaces

    def left_out_of_consensus(self, recorded: dict[str, Any] | None = None) -> dict[str, str]:
        """Classifiers the consensus leaves out, everywhere (summary, compare JSON, report), and
        why: the circular victims (unless ``exclude_circular = false``; ``recorded`` as for
        `circular`) and the ``[compare]`` table's ``exclude_from_consensus``."""
        left_out = {
            name: "circular (also the SFSL extractor, same model and weights)"
            for name in (self.circular(recorded) if self.config.exclude_circular else [])
        }
        for name in self.compare.exclude_from_consensus:
            left_out.setdefault(name, "[compare] exclude_from_consensus")
        return left_out


def _identity(registry: Any, name: str) -> tuple[str, str | None]:
    entry, variant = registry.resolve(name)
    return entry.name, variant


def load_experiment(
    path: str | os.PathLike[str],
    sets: Sequence[str] = (),
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Experiment:
    """Read and check a run config.

    ``sets``: ``--set key=value`` for a top-level key, ``--set table.key=value`` for a table's
    (``--set finetune.steps=10``, ``--set sample.n=4``). ``overrides``: typed top-level values
    that win over the file and ``sets`` (command-line options).
    """
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
    top = load_config(ExperimentConfig, path, sets=by_table.get(None, ()), overrides=overrides)
    # "examples/../runs/x" -> "runs/x": the folders appear in logs and in the report.
    top = replace(top, **{k: _norm(getattr(top, k)) for k in ("out", "instance_dir")})
    top.check(path)
    exp = _resolve_tables(data, path, by_table, top)
    if top.replicates > 1:
        exp.copies = [
            _replicate(data, path, by_table, exp, k) for k in range(1, top.replicates + 1)
        ]
    return exp


def _replicate(
    data: dict[str, Any], path: Path, by_table: dict[str | None, list[str]], exp: Experiment, k: int
) -> Experiment:
    """Replicate ``k``: the experiment in ``out/replicate-<k>/``, trained from a seed and on a
    reference split drawn for it alone (both derived from the config's seeds and k, so a rerun
    is the same replicate); sampled with the config's sample seed, so its sets stay paired.
    The replicates share what the frozen base model makes: the prior images and the baseline
    sets."""
    top = exp.config
    out = top.out / f"replicate-{k}"  # type: ignore[operator]
    copy = _resolve_tables(data, path, by_table, replace(top, out=out), where=f"replicate-{k}")
    # 31 bits: a training seed is offset per image and per process (prior images, ranks).
    train_seed = derive_seed(exp.finetune.seed, f"replicate-{k}:train") & 0x7FFFFFFF
    # The prior images are the frozen model's: one set serves every run (and both arms).
    copy.finetune = replace(copy.finetune, seed=train_seed, class_dir=exp.finetune.class_dir)
    copy.sample = exp.sample
    copy.replicate = k
    copy.split_seed = derive_seed(top.seed, f"replicate-{k}:split") & 0x7FFFFFFF
    return copy


def _resolve_tables(
    data: dict[str, Any],
    path: Path,
    by_table: dict[str | None, list[str]],
    top: ExperimentConfig,
    where: str = "",
) -> Experiment:
    """The tables of a run config, resolved against its top level ``top`` (``where``: a
    sub-folder of explicitly given arm and prior-image folders, for a replicate)."""
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
    output_dir = _norm(finetune.output_dir)
    if output_dir is None:
        output_dir = top.out / "finetune"  # type: ignore[operator]
    elif where:
        # A replicate's arm: where the table names it inside the experiment folder, at the same
        # place inside the replicate's folder (out/finetune -> out/replicate-k/finetune); a
        # folder elsewhere gets a sub-folder per replicate.
        experiment = Path(os.path.abspath(top.out.parent))  # type: ignore[union-attr]
        named = Path(os.path.abspath(output_dir))
        if named.is_relative_to(experiment):
            output_dir = top.out / named.relative_to(experiment)  # type: ignore[operator]
        else:
            output_dir = output_dir / where
    finetune = replace(
        finetune,
        output_dir=output_dir,
        # Both arms share the prior images (the frozen model's, the same for both).
        class_dir=_norm(finetune.class_dir) or top.out / "class-images",  # type: ignore[operator]
    )
    sample = section(SampleConfig, "sample")
    if not sample.prompts:
        sample = replace(
            sample, prompts=[fill_prompt(finetune.instance_prompt, "[V]", top.class_noun)]
        )
    compare = section(CompareConfig, "compare")
    compare = replace(compare, real=_norm(compare.real))
    if not compare.classifiers:
        raise UsageError(f'{path}: [compare] classifiers is required, e.g. ["resnet", "clip"]')
    curate = None
    if "curate" in by_table and "curate" not in data:
        raise UsageError(
            f"--set {by_table['curate'][0]!r} for curate: {path} has no [curate] table, so "
            "the run curates nothing; add the table to curate"
        )
    if "curate" in data:
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


def _norm(path: Path | None) -> Path | None:
    """``path`` tidied by the operating system's rule, the one `finetune` and every file access
    follow: ``a/link/../x`` is ``x`` beside the link's *target*, not ``a/x`` (a lexical
    normpath would write somewhere else than `finetune` on the same config)."""
    if path is None:
        return None
    parts = Path(path).parts
    if ".." not in parts:
        return Path(os.path.normpath(path))
    last = len(parts) - parts[::-1].index("..")  # up to and including the last ".."
    return Path(os.path.realpath(Path(*parts[:last]))).joinpath(*parts[last:])
