"""Does a run's result depend on the sampler? Each arm of a `spurcli run`, sampled again with
every scheduler spurcli offers, counted by the run's own judges.

    spurcli run examples/quickstart.toml                         # the demo: runs/quickstart
    python examples/flag_world/samplers.py examples/quickstart.toml            # ~4 min, 2 cores
    python examples/flag_world/samplers.py examples/quickstart.toml --set seed=1 \\
        --set out=runs/q1 --set finetune.output_dir=runs/q1/finetune            # another run

Takes the run config (and `--set`s) the run was made with, so every training run (replicate)
and arm (SFSL, DreamBooth-only) is found where `spurcli run` put it, and the untuned base model
stands in for the baseline. Each set is sampled as the run sampled it (its prompts, n, steps,
guidance and seeds: image i starts from the same noise under every scheduler) with each of
ddim, pndm, dpm, euler, euler-a and ddpm, into OUT/samplers/<replicate>/<arm>/<scheduler>/
(resumable, as `spurcli sample` is), and scored by the run's classifiers for its target. The
model's own scheduler (pndm for the embedded models) gives back the run's own counts: the
check that these are the run's images. Prints, per scheduler, each run's count per judge and,
per judge, in how many runs the SFSL arm's count is above, level with and below DreamBooth's.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from spurcli import console
from spurcli.evaluate.config import ImagePass
from spurcli.evaluate.imagepass import find_items, score_items
from spurcli.experiment.plan import load_experiment
from spurcli.generate.config import SCHEDULERS
from spurcli.generate.pipelines import load_pipeline, resolve_model
from spurcli.generate.prompts import without_identifier
from spurcli.generate.sample import sample
from spurcli.imagenet import resolve_class
from spurcli.plugins import load_classifiers, parse_weights

BASE = "untuned"


def counts(folder: Path, target: int, judges: list) -> list[int]:
    """How many images below ``folder`` each judge's top-1 calls ``target``."""
    items = find_items(folder, target, real=False)
    found = score_items(items, judges, ImagePass(device="cpu"))
    return [int((row == target).sum()) for row in found.per_image.top1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the run config `spurcli run` was given")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="as for run")
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS), help="comma-separated")
    args = parser.parse_args()
    console.configure(quiet=True)
    exp = load_experiment(args.config, args.sets)
    target = resolve_class(exp.config.target).index
    judges = load_classifiers(exp.compare.classifiers, parse_weights(exp.compare.weights))
    names = [j.name for j in judges]
    schedulers = args.schedulers.split(",")
    runs = exp.replicates()
    # (run label, arm) -> the model folder or name; the base model once, for every run
    models = {(BASE, BASE): exp.finetune.model}
    for run in runs:
        label = f"replicate-{run.replicate}" if run.replicate else "run"
        for arm, cfg in run.arms().items():
            models[label, arm] = str(cfg.output_dir)
    found: dict[tuple[str, str, str], list[int]] = {}
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
            found[label, arm, scheduler] = counts(out, target, judges)
            print(f"{label:12s} {arm:11s} {scheduler:8s}", *found[label, arm, scheduler])
    arms = list(runs[0].arms())
    labels = list(dict.fromkeys(label for label, _ in models if label != BASE))
    n = exp.sample.n * len(exp.sample.prompts)
    print(f"\nimages read as {target} of {n} per set, judges {' / '.join(names)}")
    for scheduler in schedulers:
        row = [f"{scheduler:8s} {BASE} " + "/".join(map(str, found[BASE, BASE, scheduler]))]
        for arm in arms:
            each = ", ".join("/".join(map(str, found[lb, arm, scheduler])) for lb in labels)
            row.append(f"{arm} {each}")
        print("  ".join(row))
    if len(arms) == 2:
        print(f"\nruns with {arms[0]} above / level with / below {arms[1]}, per judge")
        for scheduler in schedulers:
            cells = []
            for j, name in enumerate(names):
                d = [
                    found[lb, arms[0], scheduler][j] - found[lb, arms[1], scheduler][j]
                    for lb in labels
                ]
                cells.append(f"{name} {sign_counts(d)}")
            print(f"{scheduler:8s}", "  ".join(cells))


def sign_counts(differences: list[int]) -> str:
    """above/level/below: how many differences are positive, zero and negative."""
    signs = [sum(d > 0 for d in differences), differences.count(0), sum(d < 0 for d in differences)]
    return "/".join(map(str, signs))


if __name__ == "__main__":
    main()
