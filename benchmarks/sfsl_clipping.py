"""What gradient clipping does to each arm: DreamBooth alone, SFSL clipped with it, SFSL clipped
on its own (--sfsl-grad-clip), each a short finetune of `mini` on the brick world's references.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/sfsl_clipping.py             # ~10 min
    HF_HUB_OFFLINE=1 python benchmarks/sfsl_clipping.py --steps 60 --out /tmp/clip

The brick world's settings (examples/brick_world/bricks.toml: 128 px, lr 5e-4, SFSL weight 0.5 on
effnet-lite0, --max-grad-norm 1, brick-wall-1..5 trained on), one seed, the same prior images
for every arm. From each run's log.jsonl it prints the scale clipping put on the update
(clip_scale = min(1, max / norm), its mean and minimum, the steps clipped), the norm before
clipping, SFSL's own clip scale where it is separate, and the seconds per step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from spurcli.generate.config import FinetuneConfig
from spurcli.generate.finetune import finetune

REFERENCES = Path(__file__).resolve().parents[1] / "examples" / "brick_world" / "references"


def summary(log: Path) -> dict[str, float]:
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    scales = [e["clip_scale"] for e in entries]
    row = {
        "mean clip_scale": statistics.fmean(scales),
        "min clip_scale": min(scales),
        "clipped steps": sum(1 for s in scales if s < 1) / len(scales),
        "mean norm before": statistics.fmean(e["clip_norm"] for e in entries),
    }
    if "sfsl_clip_scale" in entries[0]:
        row["mean sfsl_clip_scale"] = statistics.fmean(e["sfsl_clip_scale"] for e in entries)
        row["mean sfsl norm"] = statistics.fmean(e["sfsl_clip_norm"] for e in entries)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sfsl-clipping-"))
    refs = out / "references"
    refs.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        shutil.copy(REFERENCES / f"brick-wall-{i}.png", refs / f"brick-wall-{i}.png")
    base = FinetuneConfig(
        model="mini",
        instance_dir=refs,
        class_noun="wall",
        target=807,
        resolution=128,
        steps=args.steps,
        lr=5e-4,
        num_class_images=8,
        class_inference_steps=10,
        class_dir=out / "class-images",
        sfsl_weight=0.5,
        extractor="effnet-lite0",
        max_grad_norm=1.0,
        seed=args.seed,
        checkpoint_every=0,
        validate_every=0,
        log_grad_norms_every=0,
    )
    arms = {
        "DreamBooth only": replace(base, sfsl_weight=0.0),
        "SFSL, clipped with it": replace(base, sfsl_grad_clip=0.0),
        "SFSL, --sfsl-grad-clip 1": replace(base, sfsl_grad_clip=1.0),
    }
    rows = {}
    for i, (name, cfg) in enumerate(arms.items()):
        run = out / f"arm-{i}"
        shutil.rmtree(run, ignore_errors=True)
        started = time.perf_counter()
        finetune(replace(cfg, output_dir=run))
        seconds = time.perf_counter() - started
        rows[name] = {**summary(run / "log.jsonl"), "s/step (incl. start)": seconds / cfg.steps}
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    print(f"mini, {args.steps} steps, seed {args.seed}, --max-grad-norm 1; runs in {out}")
    print("| arm | " + " | ".join(keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for name, row in rows.items():
        cells = " | ".join(f"{row[k]:.3g}" if k in row else "" for k in keys)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
