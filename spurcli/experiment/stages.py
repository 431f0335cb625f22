"""The stages of `spurcli run`, each skipped when its outputs are up to date.

    references  the reference folder split by the seed (`spurcli.experiment.references`)
    finetune    each arm, resumed from its last checkpoint (`spurcli.generate.finetune`)
    sample      every image set, image by image (`spurcli.generate.sample`)
    score       every set in one pass (`spurcli.evaluate.score.score_folders`)
    detect      with a ``detector``: object presence in every image of every set
    features    every set in every extractor's space (`spurcli.evaluate.compare`)
    compare     each pair of sets: differences tested, feature-space similarity
    curate      the SFSL set into a dataset, with a ``[curate]`` table (`spurcli.evaluate.curate`)
    report      summary.json and report.html (`spurcli.experiment.summary`, `.report`)

Each takes the `Experiment`, the `Stages` record and whether this is the main process (which
alone writes; the others wait at a barrier). Where each output lives: `spurcli.experiment.layout`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from spurcli import imagenet
from spurcli.console import is_main_process
from spurcli.errors import SpurcliError
from spurcli.evaluate.compare import (
    CompareResult,
    Features,
    consensus_of,
    differences,
    find_pairs,
    similarity,
)
from spurcli.evaluate.curate import curate
from spurcli.evaluate.detect import object_query
from spurcli.evaluate.differences import consensus_members
from spurcli.evaluate.imagepass import find_items, score_items
from spurcli.evaluate.score import score_folders
from spurcli.evaluate.similarity import extract_features
from spurcli.evaluate.verdicts import default_feature
from spurcli.experiment.freshness import Stages, staleness, write_stamp
from spurcli.experiment.plan import LABELS, SFSL, Experiment
from spurcli.experiment.report import write_report
from spurcli.experiment.results import read_json, read_rows, saved_scores, weights_entry
from spurcli.experiment.summary import summarize, summary_tables
from spurcli.fileio import atomic_dir, write_json
from spurcli.generate.checkpoints import STEP_FREE_SCHEDULES, changed_options, list_checkpoints
from spurcli.generate.config import FinetuneConfig, SampleConfig
from spurcli.generate.finetune import finetune
from spurcli.generate.pipelines import load_pipeline, resolve_model
from spurcli.generate.sample import SEED_SCHEME, count_missing, sample
from spurcli.images import sha256_file
from spurcli.parallel import Processes, launched_distributed
from spurcli.plugins import load_detectors, load_extractors, parse_weights
from spurcli.records import FINETUNE_CARD, MANIFEST
from spurcli.weights import content_key, identity_key

log = logging.getLogger(__name__)


def references_stage(exp: Experiment, stages: Stages, main: bool) -> None:
    """Copy the split into out/references/{train,held-out} (what finetune and score read)."""

    record = exp.layout.split_record
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
            target = exp.layout.references(name)
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


def weights_content(pairs: list[str], option: str = "--weights") -> dict[str, str | None]:
    """``NAME=PATH`` values by content (`spurcli.weights.content_key`), for the stamps."""
    return {name: content_key(value) for name, value in parse_weights(pairs, option).items()}


def _changed_settings(recorded: dict[str, Any], cfg: FinetuneConfig) -> list[str]:
    """Options of ``cfg`` that differ from a run's recorded config (those that change weights)."""

    if recorded and "sfsl_grad_clip" not in recorded and recorded.get("sfsl_weight"):
        # Recorded before the option existed: SFSL's gradient was clipped with the rest (0).
        recorded = {**recorded, "sfsl_grad_clip": 0.0}
    # Paths inside the experiment folder: a copied or moved folder is the same run (the
    # references themselves are compared by content, below).
    return changed_options(recorded, cfg, frozenset({"class_dir", "instance_dir"}))


def finetune_stage(exp: Experiment, arm: str, stages: Stages, *, retrain: bool = False) -> None:

    cfg = exp.arms()[arm]
    folder = Path(cfg.output_dir)  # type: ignore[arg-type]
    name = "finetune" if arm == SFSL else f"finetune:{arm}"
    info_path = folder / FINETUNE_CARD
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    why = None
    if info:
        changed = _changed_settings(info.get("config", {}), cfg)
        refs = sorted(sha256_file(p) for p in exp.split.train)
        if sorted(r["sha256"] for r in info.get("references", [])) != refs:
            changed.append("reference images")
        if cfg.sfsl_weight != 0 and cfg.extractor_weights is not None:
            recorded = identity_key((info.get("extractor") or {}).get("weights_id"))
            if recorded is not None and recorded != content_key(cfg.extractor_weights):
                changed.append("extractor weights (the file's content)")
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
        elif info.get("status") != "finished":
            # A running card's steps_done is 0 until the run finishes: where the run continues
            # from is its newest checkpoint.
            found = list_checkpoints(folder)
            why = f"resumed at step {found[-1][0]}" if found else "restarted: no checkpoint"
        else:
            why = "more steps"
    log.info("%s: %s", name, folder)
    finetune(replace(cfg, resume="latest"))  # continues from the last checkpoint
    stages.ran(name, why or "not made yet")


def sample_config(exp: Experiment, name: str) -> Any:
    """How set ``name`` is sampled: its model (an arm's run, or the base model at the run's
    revision), prompts, seeds and folder (examples/flag_world/samplers.py samples it again)."""
    arm, prompts = exp.sample_sets()[name]
    model = exp.arms()[arm].output_dir if arm else exp.config.model
    revision = None if arm else base_revision(exp)  # an arm's run is identified by its hashes
    config: SampleConfig = replace(exp.sample, model=str(model), prompts=prompts)
    return replace(config, out=exp.set_dir(name), recontext=False, revision=revision)


def base_revision(exp: Experiment) -> str | None:
    """The base model's revision for the baseline: as pinned, else the commit the SFSL arm was
    fine-tuned from (its run card), so that the baseline and the arms share one base model even
    if the hub's main moved since."""

    if exp.config.revision:
        return exp.config.revision
    card = read_json(Path(exp.finetune_dir) / FINETUNE_CARD) or {}
    started = card.get("model_id") or {}
    if card.get("model") == exp.config.model and started.get("source") == "hub":
        return started.get("revision")
    return None


def _model_stamp(exp: Experiment, arm: str | None) -> Any:
    """What identifies the model a set is sampled from: the base model's name, or the arm's run
    (its config, steps and finishing time: a retrained arm is another model)."""

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


def sample_stage(exp: Experiment, stages: Stages) -> None:

    pipes: dict[str | None, Any] = {}
    for name, (arm, prompts) in exp.sample_sets().items():
        config = sample_config(exp, name)
        ref = resolve_model(config.model, config.revision)
        manifest = Path(config.out) / MANIFEST
        stamp = {
            "model": _model_stamp(exp, arm),
            **{k: getattr(config, k) for k in SAMPLE_STAMP_KEYS},
            "seed_scheme": SEED_SCHEME,  # a set seeded by an older scheme is sampled again
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


def score_stamp(exp: Experiment) -> dict[str, Any]:
    """What the score files were made with; weights files by content (`content_key`)."""
    cfg = exp.compare
    return {
        "target": exp.config.target,
        "classifiers": cfg.classifiers,
        "weights": cfg.weights,
        "weights_content": weights_content(cfg.weights),  # new bytes under an old name: stale
        "real": cfg.real,
        "bootstrap": [cfg.bootstrap, cfg.bootstrap_seed],  # the intervals in the score JSON
        "preprocess": cfg.preprocess,  # another protocol gives the classifiers other pixels
    }


def score_stage(exp: Experiment, stages: Stages, main: bool) -> None:

    cfg = exp.compare
    stamp = score_stamp(exp)
    names = exp.all_sets()
    real = [cfg.real] if cfg.real else []
    why = {
        n: staleness(
            [exp.layout.scores(n), exp.layout.score_rows(n)], [exp.set_dir(n), *real], stamp
        )
        for n in names
    }
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
            for name, result in zip(stale, results, strict=True):
                json_path, csv_path = exp.layout.scores(name), exp.layout.score_rows(name)
                result.write_csv(csv_path)
                write_json(json_path, result.to_json())
                write_stamp(json_path, stamp)
            if results[0].real is not None:  # the positives of every ROC-AUC/AP difference
                results[0].real.write_csv(exp.layout.real_rows)
    for name in names:
        if name in stale:
            stages.ran(f"score:{name}", why[name])  # type: ignore[arg-type]
        else:
            stages.skip(f"score:{name}")
    _barrier(cfg.device)


def detect_stage(exp: Experiment, stages: Stages, main: bool) -> None:
    """With a ``detector``: its presence score of the class object in every image of every set
    (arms, baseline, references), into out/presence/<set>.json. The summary's headline is then
    the rate among the images where it finds no object (`spurcli.experiment.summary`)."""
    if exp.config.detector is None:
        return

    cfg = exp.compare
    k = imagenet.resolve_class(exp.config.target)  # type: ignore[arg-type]
    stamp = {
        "detector": exp.config.detector,
        "weights": exp.config.detector_weights,
        "target": k.index,
        "image_size": cfg.image_size,
    }
    names = exp.all_sets()
    why = {n: staleness([exp.layout.presence(n)], [exp.set_dir(n)], stamp) for n in names}
    stale = [n for n in names if why[n] is not None]
    for name in names:
        if name not in stale:
            stages.skip(f"detect:{name}")
    if not stale:
        return
    weights = {exp.config.detector: exp.config.detector_weights}
    [detector] = load_detectors(
        [exp.config.detector], {k: v for k, v in weights.items() if v is not None}
    )
    query = object_query(k, (), default_feature(k.index))
    for name in stale:
        items = find_items(exp.set_dir(name), k.index, real=False)
        found = score_items(
            items,
            [],
            cfg,
            desc=f"detect:{name} ({detector.name})",
            detectors=[detector],
            queries={k.index: query},
        )
        if main:
            scores = found.presence[detector.name]
            write_json(
                exp.layout.presence(name),
                {
                    "detector": detector.name,
                    **weights_entry(detector),
                    "query": list(query.names),
                    "presence": {
                        image: float(v)
                        for image, v in zip(found.per_image.images, scores, strict=True)
                    },
                },
            )
            write_stamp(exp.layout.presence(name), stamp)
        stages.ran(f"detect:{name}", why[name])  # type: ignore[arg-type]
    _barrier(cfg.device)


def features_stage(exp: Experiment, stages: Stages, main: bool) -> None:

    cfg = exp.compare
    needed = sorted({s for pair in exp.comparisons() for s in pair})
    weights = exp.feature_spaces()  # [compare] extractors, and a space SFSL did not optimise
    extractors = list(weights)

    def stamp(extractor: str) -> dict[str, Any]:
        value = weights.get(extractor)
        return {"extractor": extractor, "weights": value, "content": content_key(value)}

    why = {
        (name, extractor): staleness(
            [exp.layout.features(name, extractor)], [exp.set_dir(name)], stamp(extractor)
        )
        for extractor in extractors
        for name in needed
    }
    todo = [key for key, reason in why.items() if reason is not None]
    for (name, extractor), reason in why.items():
        if reason is None:
            stages.skip(f"features:{name}:{extractor}")
    if not todo:
        return
    wanted = sorted({e for _, e in todo}, key=extractors.index)
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
            exp.layout.features(name, extractor).parent.mkdir(parents=True, exist_ok=True)
            features.save(exp.layout.features(name, extractor))
            write_json(
                exp.layout.feature_weights(name, extractor), weights_entry(loaded[extractor])
            )
            write_stamp(exp.layout.features(name, extractor), stamp(extractor))
        stages.ran(f"features:{name}:{extractor}", why[(name, extractor)])  # type: ignore[arg-type]
    _barrier(cfg.device)


def compare_stage(exp: Experiment, stages: Stages, main: bool) -> None:

    left_out = exp.left_out_of_consensus()
    members = consensus_members(exp.compare.classifiers, left_out)
    spaces, circular = list(exp.feature_spaces()), exp.circular_spaces()
    for a, b in exp.comparisons():
        out = exp.layout.comparison(a, b)
        inputs = [exp.layout.scores(s) for s in (a, b)] + [exp.layout.score_rows(s) for s in (a, b)]
        inputs += [exp.layout.features(s, e) for s in (a, b) for e in spaces]
        inputs += [exp.layout.real_rows] if exp.compare.real else []
        stamp = {
            "extractors": spaces,
            "circular_spaces": circular,
            "bootstrap": [exp.compare.bootstrap, exp.compare.bootstrap_seed],
            "consensus_of": members,
        }
        why = staleness([out], inputs, stamp)
        if not stages.check(f"compare:{a}-vs-{b}", why):
            continue
        sims = {
            e: similarity(
                Features.load(exp.layout.features(a, e)),
                Features.load(exp.layout.features(b, e)),
                resamples=exp.compare.bootstrap,
                seed=exp.compare.bootstrap_seed,
            )
            for e in spaces
        }
        scored = [saved_scores(exp, name) for name in (a, b)]
        pairing = find_pairs(
            exp.set_dir(a), scored[0].spurious.images, exp.set_dir(b), scored[1].spurious.images
        )
        cfg = exp.compare
        diffs = differences(
            *scored,
            pairing,
            resamples=cfg.bootstrap,
            seed=cfg.bootstrap_seed,
            consensus_of=members,
        )
        k = scored[0].target.index
        result = CompareResult(
            a=consensus_of(
                json.loads(exp.layout.scores(a).read_text(encoding="utf-8")),
                scored[0].spurious,
                k,
                members,
            ),
            b=consensus_of(
                json.loads(exp.layout.scores(b).read_text(encoding="utf-8")),
                scored[1].spurious,
                k,
                members,
            ),
            rows_a=read_rows(exp.layout.score_rows(a)),
            rows_b=read_rows(exp.layout.score_rows(b)),
            similarity=sims,
            dir_a=str(exp.set_dir(a).resolve()),  # absolute: the report may be redrawn later
            dir_b=str(exp.set_dir(b).resolve()),  # from another working directory
            label_a=LABELS[a],
            label_b=LABELS[b],
            differences=diffs,
            extractors={
                e: {
                    **(read_json(exp.layout.feature_weights(a, e)) or {}),
                    "circular": e in circular,
                }
                for e in spaces
            },
            consensus_of={"classifiers": members, "left_out": left_out},
        )
        if main:
            write_json(out, result.report_data())
            write_stamp(out, stamp)
        stages.ran(f"compare:{a}-vs-{b}", why)  # type: ignore[arg-type]


def curate_stage(exp: Experiment, stages: Stages, main: bool) -> None:
    """`spurcli curate` of the SFSL arm's images into out/curated/ (with a [curate] table)."""
    if exp.curate is None:
        return

    folder, data = exp.layout.curated, exp.layout.curated_record
    stamp = asdict(exp.curate)
    stamp["weights_content"] = {
        "weights": weights_content(exp.curate.weights),
        "detector_weights": weights_content(exp.curate.detector_weights, "--detector-weights"),
        "extractor_weights": content_key(exp.curate.extractor_weights),
    }
    inputs = [exp.set_dir(SFSL), Path(exp.curate.references)]
    if not stages.check("curate", staleness([data, folder], inputs, stamp)):
        return
    result = curate(exp.set_dir(SFSL), folder, exp.curate)
    if main:
        write_json(data, result.report_data(exp.curate.report_images))
        write_stamp(data, stamp)
    stages.ran("curate", stages.reason("curate", "not made yet"))
    _barrier(exp.curate.device)


def report_stage(exp: Experiment, stages: Stages, main: bool) -> tuple[Path, dict[str, Any]]:

    report, summary_path = exp.layout.report, exp.layout.summary
    runs = exp.replicates()
    # The report shows the first training run's images; the summary pools every run's scores.
    comparisons = [runs[0].layout.comparison(a, b) for a, b in exp.comparisons()]
    inputs = comparisons + [run.layout.scores(s) for run in runs for s in exp.all_sets()]
    # curate_stage curates the first training run's images
    curated = [runs[0].layout.curated_record] if exp.curate is not None else []
    inputs += curated
    if exp.config.detector is not None:
        inputs += [run.layout.presence(s) for run in runs for s in exp.all_sets()]
    summary = summarize(exp)
    stamp = {
        "primary": exp.primary(),
        "replicates": exp.config.replicates,
        "title": exp.config.title,
        "notes": exp.config.notes,
        "report_images": exp.compare.report_images,
        "exclude_circular": exp.config.exclude_circular,
        "object_check": [exp.config.detector, exp.config.max_presence],
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
            + ", ".join(f"{LABELS[a]} in {c.output_dir}" for a, c in runs[0].arms().items())
            + (f" (and so on in each of {len(runs)} replicates)" if len(runs) > 1 else "")
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
                "(examples/brick_world/README.md)."
            )
        elif exp.config.model in ("flag-mini", "flag-mini-128"):
            size = "64" if exp.config.model == "flag-mini" else "128"
            notes.append(
                f"`{exp.config.model}` is spurcli's embedded miniature Stable Diffusion of the "
                f"flag world ({size} px; autoencoder trained on scikit-image's CC0 photos and "
                "drawn images, flags among them, base UNet on images without a flag): a "
                "demonstration at toy scale, not a measurement of Stable Diffusion "
                "(examples/flag_world/README.md)."
            )
        datas = [json.loads(p.read_text(encoding="utf-8")) for p in comparisons]
        write_json(summary_path, summary)
        write_report(
            report,
            datas,
            title=title,
            summary=summary_tables(summary),
            notes=notes,
            max_images=exp.compare.report_images,
            curations=[json.loads(p.read_text(encoding="utf-8")) for p in curated],
        )
        write_stamp(report, stamp)
    stages.ran("report", stages.reason("report", "not made yet"))
    return report, summary


def _barrier(device: str | None) -> None:

    if launched_distributed():
        Processes(device).barrier()
