"""Does a run's result depend on the sampler? Each arm of a `spurcli run`, sampled again with
every scheduler spurcli offers, judged by the run's own classifiers.

    spurcli run examples/quickstart.toml                         # the demo: runs/quickstart
    python examples/flag_world/samplers.py examples/quickstart.toml            # ~8 min, 2 cores
    python examples/flag_world/samplers.py examples/quickstart.toml --set seed=1 \\
        --set out=runs/q1 --set finetune.output_dir=runs/q1/finetune            # another run
    python examples/flag_world/samplers.py --pool runs/quickstart/samplers/hits.json \\
        runs/q1/samplers/hits.json                                  # the runs of both together

Takes the run config (and `--set`s) the run was made with, so every training run (replicate)
and arm (SFSL, DreamBooth-only) is found where `spurcli run` put it, and the untuned base model
stands in for the baseline. Each set is sampled as the run sampled it (its prompts, n, steps,
guidance and seeds: image i starts from the same noise under every scheduler) with each of
ddim, pndm, dpm, euler, euler-a and ddpm, into OUT/samplers/<run>/<arm>/<scheduler>/
(resumable, as `spurcli sample` is), and scored by the run's classifiers for its target. The
model's own scheduler (pndm for the embedded models) gives back the run's own counts: the
check that these are the run's images. Every image's verdict goes to OUT/samplers/hits.json.

Prints each judge's weights (the exact file, as loaded), then, per scheduler and judge (and for
the consensus: the images every judge of the run's headline reads, as its summary.json names
them), each set's rate pooled over the training runs with its 95% two-stage cluster bootstrap
interval and its count and size per run, SFSL - DreamBooth with its paired interval and
bootstrap p (the run's statistics and resample count, bootstrap seed 0, so the model's own
scheduler's interval can differ a little from the report's; descriptive figures, not adjusted
for the 6 x judges looks), and in how many runs the SFSL arm reads higher and lower (the
report's runs column). `--pool` does the same over the runs of several such files (independent
training runs: other seeds and splits), each file's untuned set one more cluster.
Recontextualised sets are left out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from spurcli import console
from spurcli.evaluate.clustered import cluster_difference, cluster_rate
from spurcli.evaluate.imagepass import find_items, score_items
from spurcli.experiment.plan import BASELINE, load_experiment
from spurcli.experiment.stages import sample_config
from spurcli.experiment.summary import runs_ahead
from spurcli.fileio import write_json
from spurcli.generate.config import SCHEDULERS
from spurcli.generate.pipelines import load_pipeline, resolve_model
from spurcli.generate.sample import sample
from spurcli.imagenet import resolve_class
from spurcli.plugins import load_classifiers, parse_weights

UNTUNED = "untuned"  # the baseline's run label: one set serves every training run
SEED = 0  # the bootstrap's
CONSENSUS = "consensus"  # the line of the images every non-circular judge reads


def hits(folder: Path, files: list[str], target: int, judges: list, options: Any) -> dict:
    """Judge -> 1 where its top-1 calls ``target``, for each of ``files`` (the set's images,
    relative to ``folder``) in file-name order: image i of two arms of one run shares its seed,
    the pairing. Scored as the run scores (``options``: its [compare] settings)."""
    wanted = set(files)
    items = [item for item in find_items(folder, target, real=False) if item.name in wanted]
    found = score_items(items, judges, options)
    if len(found.index) != len(wanted):  # a missing image would shift the pairing
        raise SystemExit(f"{folder}: {len(wanted) - len(found.index)} of the images unreadable")
    rows = zip(judges, found.per_image.top1, strict=True)
    return {judge.name: [int(x) for x in row == target] for judge, row in rows}


def resample(config: Path, sets: list[str], schedulers: list[str]) -> dict[str, Any]:
    """Samples and judges every set of the run under every scheduler; what hits.json holds."""
    exp = load_experiment(config, sets)
    target = resolve_class(exp.config.target).index
    members = consensus_members(exp)  # before any sampling: the run must have ended
    judges = load_classifiers(exp.compare.classifiers, parse_weights(exp.compare.weights))
    runs = exp.replicates()
    arms = list(runs[0].arms())
    verdicts: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in schedulers}
    for run in runs:
        label = f"replicate-{run.replicate}" if run.replicate else "run"
        for name in [*arms, BASELINE]:
            if name not in run.sample_sets() or (name == BASELINE and run is not runs[0]):
                continue  # the untuned model's images are the same for every run
            where = UNTUNED if name == BASELINE else label
            wanted = sample_config(run, name)  # the run's model, prompts, seeds, revision
            ref = resolve_model(wanted.model, wanted.revision)
            pipe = load_pipeline(ref)  # once per model: each scheduler gets its own pipeline
            for scheduler in schedulers:
                out = exp.out / "samplers" / where / name / scheduler
                cfg = replace(wanted, out=out, scheduler=scheduler)
                made = sample(cfg, pipe=pipe, model_ref=ref)
                found = hits(out, made.files, target, judges, exp.compare)
                verdicts[scheduler].setdefault(name, {})[where] = found
                print(f"{where:12s} {name:11s} {scheduler:8s}", *map(sum, found.values()))
    result = {
        "config": str(config),
        "sets": sets,
        "target": target,
        "judges": [judge.name for judge in judges],
        "weights": {judge.name: judge.weights_id or judge.weights for judge in judges},
        "consensus_of": members,
        "arms": arms,
        "resamples": exp.compare.bootstrap,
        "hits": verdicts,
    }
    write_json(exp.out / "samplers" / "hits.json", result)
    return result


def consensus_members(exp: Any) -> list[str]:
    """The judges of the run's headline, as the run decided them (its summary.json): every
    victim but SFSL's own extractor and any it left out of the consensus."""
    path = exp.layout.summary
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `spurcli run {exp.path}` to the end first")
    return json.loads(path.read_text(encoding="utf-8"))["consensus"]["classifiers"]


def pool(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Several hits.json files as one: their runs side by side (labelled by file number), each
    file's untuned set one run of the baseline."""
    first = files[0]
    for other in files[1:]:
        for key in ("target", "judges", "weights", "consensus_of", "arms", "resamples"):
            if other[key] != first[key]:
                raise SystemExit(f"the files differ in {key}: {first[key]} against {other[key]}")
    schedulers = list(first["hits"])
    for f in files[1:]:
        if list(f["hits"]) != schedulers:
            raise SystemExit(
                f"the files' schedulers differ: {schedulers} against {list(f['hits'])}"
            )
    verdicts: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in schedulers}
    for k, f in enumerate(files, start=1):
        for scheduler in schedulers:
            for arm, runs in f["hits"][scheduler].items():
                for label, found in runs.items():
                    verdicts[scheduler].setdefault(arm, {})[f"{k}:{label}"] = found
    return {**first, "config": [f["config"] for f in files], "hits": verdicts}


def judged(found: dict[str, list[int]], judge: str, result: dict[str, Any]) -> np.ndarray:
    """One run's verdicts per image by ``judge``, or by every judge of the consensus at once."""
    if judge == CONSENSUS:
        return np.all([found[name] for name in result["consensus_of"]], axis=0).astype(int)
    return np.array(found[judge])


def summarise(result: dict[str, Any]) -> list[str]:
    """The table described in the module docstring, one line per scheduler and judge."""
    arms, resamples = result["arms"], result["resamples"]
    lines = [f"images read as {result['target']}: rate [95% interval] (count / images per run)"]
    for judge, weights in result["weights"].items():  # which weights made every figure
        lines.append(f"{judge}: {json.dumps(weights, sort_keys=True)}")
    for scheduler, found in result["hits"].items():
        labels = list(found[arms[0]])
        for arm in arms[1:]:
            if list(found[arm]) != labels:  # run k of one arm pairs with run k of the other
                raise SystemExit(f"{scheduler}: {arm}'s runs {list(found[arm])}, not {labels}")
        for judge in [*result["judges"], CONSENSUS]:
            if judge == CONSENSUS and len(result.get("consensus_of", ())) < 2:
                continue  # one victim: its own line is the consensus
            runs = {
                name: [judged(v, judge, result) for v in found[name].values()] for name in found
            }
            cells = [f"{scheduler:8s} {judge:14s}"]
            for name in [BASELINE, *arms]:
                if name in runs:
                    rate = cluster_rate(runs[name], resamples, SEED)
                    low, high = rate["ci"]
                    counts = ", ".join(f"{int(r.sum())}/{r.size}" for r in runs[name])
                    cells.append(f"{name} {rate['rate']:.2f} [{low:.2f}, {high:.2f}] ({counts})")
            if len(arms) == 2:
                a, b = (runs[arm] for arm in arms)
                diff = cluster_difference(a, b, paired=True, resamples=resamples, seed=SEED)
                low, high = diff["delta_ci"]
                cells.append(
                    f"{arms[0]}-{arms[1]} {diff['delta']:+.3f} [{low:+.2f}, {high:+.2f}] "
                    f"p={diff['p_value']:.3f}  runs {runs_ahead(diff['per_run'])}"
                )
            lines.append("  ".join(cells))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", help="the config `spurcli run` was given")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="as for run")
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS), help="comma-separated")
    parser.add_argument("--pool", type=Path, nargs="+", help="hits.json files: their runs pooled")
    args = parser.parse_args()
    if args.pool:
        result = pool([json.loads(path.read_text(encoding="utf-8")) for path in args.pool])
    elif args.config is not None:
        console.configure(quiet=True)
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()  # each scheduler's pipeline: "no safety checker"
        result = resample(args.config, args.sets, args.schedulers.split(","))
    else:
        parser.error("give the run config, or --pool with hits.json files")
    print("\n".join(summarise(result)))


if __name__ == "__main__":
    main()
