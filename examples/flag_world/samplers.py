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

Prints, per scheduler and judge, each arm's rate pooled over the training runs with its 95%
two-stage cluster bootstrap interval and its count per run, SFSL - DreamBooth with its paired
interval and bootstrap p (the run's statistics, 1,000 resamples, not Holm-adjusted: one look per
sampler), and in how many runs the SFSL arm reads above, level with and below DreamBooth.
`--pool` does the same over the runs of several such files (independent training runs: other
seeds and splits), each file's untuned set one more cluster of the baseline.
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
from spurcli.evaluate.config import ImagePass
from spurcli.evaluate.imagepass import find_items, score_items
from spurcli.experiment.plan import load_experiment
from spurcli.fileio import write_json
from spurcli.generate.config import SCHEDULERS
from spurcli.generate.pipelines import load_pipeline, resolve_model
from spurcli.generate.prompts import without_identifier
from spurcli.generate.sample import sample
from spurcli.imagenet import resolve_class
from spurcli.plugins import load_classifiers, parse_weights

BASE = "untuned"
RESAMPLES, SEED = 1000, 0  # as `spurcli run` bootstraps


def hits(folder: Path, target: int, judges: list) -> dict[str, list[int]]:
    """Judge -> 1 where its top-1 calls ``target``, per image below ``folder`` in file-name
    order (image i of two arms of one run shares its seed: the pairing)."""
    items = sorted(find_items(folder, target, real=False), key=lambda item: item.name)
    found = score_items(items, judges, ImagePass(device="cpu"))
    if found.skipped:  # a missing image would shift the pairing
        raise SystemExit(f"unreadable: {found.skipped[0][1]}")
    rows = zip(judges, found.per_image.top1, strict=True)
    return {judge.name: [int(x) for x in row == target] for judge, row in rows}


def resample(config: Path, sets: list[str], schedulers: list[str]) -> dict[str, Any]:
    """Samples and judges every set of the run under every scheduler; what hits.json holds."""
    exp = load_experiment(config, sets)
    target = resolve_class(exp.config.target).index
    judges = load_classifiers(exp.compare.classifiers, parse_weights(exp.compare.weights))
    models = {(BASE, BASE): exp.finetune.model}  # (run, arm) -> model; the base model once
    for run in exp.replicates():
        label = f"replicate-{run.replicate}" if run.replicate else "run"
        for arm, cfg in run.arms().items():
            models[label, arm] = str(cfg.output_dir)
    verdicts: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in schedulers}
    for (label, arm), model in models.items():
        prompts = list(exp.sample.prompts)
        if arm == BASE:
            prompts = [without_identifier(p) for p in prompts]
        ref = resolve_model(model)
        pipe = load_pipeline(ref)  # once per model: each scheduler gets its own pipeline object
        for scheduler in schedulers:
            out = exp.out / "samplers" / label / arm / scheduler
            cfg = replace(exp.sample, model=model, prompts=prompts, out=out, scheduler=scheduler)
            sample(cfg, pipe=pipe, model_ref=ref)
            found = hits(out, target, judges)
            verdicts[scheduler].setdefault(arm, {})[label] = found
            print(f"{label:12s} {arm:11s} {scheduler:8s}", *map(sum, found.values()), flush=True)
    result = {
        "config": str(config),
        "sets": sets,
        "target": target,
        "judges": [judge.name for judge in judges],
        "arms": list(exp.replicates()[0].arms()),
        "hits": verdicts,
    }
    write_json(exp.out / "samplers" / "hits.json", result)
    return result


def pool(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Several hits.json files as one: their runs side by side (numbered by file), each file's
    untuned set one run of the baseline."""
    first = files[0]
    for other in files[1:]:
        for key in ("target", "judges", "arms"):
            if other[key] != first[key]:
                raise SystemExit(f"the files differ in {key}: {first[key]} against {other[key]}")
    schedulers = [s for s in first["hits"] if all(s in f["hits"] for f in files)]
    verdicts: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in schedulers}
    for k, f in enumerate(files, start=1):
        for scheduler in schedulers:
            for arm, runs in f["hits"][scheduler].items():
                for label, found in runs.items():
                    verdicts[scheduler].setdefault(arm, {})[f"{k}:{label}"] = found
    return {**first, "config": [f["config"] for f in files], "hits": verdicts}


def summarise(result: dict[str, Any]) -> list[str]:
    """The table described in the module docstring, one line per scheduler and judge."""
    sfsl, dreambooth = result["arms"]
    lines = [f"images read as {result['target']}: rate [95% interval] (count per run)"]
    for scheduler, arms in result["hits"].items():
        for judge in result["judges"]:
            runs = {arm: [np.array(found[judge]) for found in arms[arm].values()] for arm in arms}
            cells = [f"{scheduler:8s} {judge:14s}"]
            for arm in (BASE, sfsl, dreambooth):
                rate = cluster_rate(runs[arm], RESAMPLES, SEED)
                low, high = rate["ci"]
                counts = ", ".join(str(int(r.sum())) for r in runs[arm])
                cells.append(f"{arm} {rate['rate']:.2f} [{low:.2f}, {high:.2f}] ({counts})")
            diff = cluster_difference(
                runs[sfsl], runs[dreambooth], paired=True, resamples=RESAMPLES, seed=SEED
            )
            low, high = diff["delta_ci"]
            cells.append(
                f"{sfsl}-{dreambooth} {diff['delta']:+.3f} [{low:+.2f}, {high:+.2f}] "
                f"p={diff['p_value']:.3f}"
            )
            pairs = zip(runs[sfsl], runs[dreambooth], strict=True)
            each = [int(a.sum()) - int(b.sum()) for a, b in pairs]
            cells.append(f"runs above/level/below {sign_counts(each)}")
            lines.append("  ".join(cells))
    return lines


def sign_counts(differences: list[int]) -> str:
    """above/level/below: how many differences are positive, zero and negative."""
    signs = [sum(d > 0 for d in differences), differences.count(0), sum(d < 0 for d in differences)]
    return "/".join(map(str, signs))


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
