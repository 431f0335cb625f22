"""Benchmark `spurcli score` against a straightforward baseline, and check memory is flat in N.

    HF_HUB_OFFLINE=1 python benchmarks/bench_score.py                  # defaults below
    HF_HUB_OFFLINE=1 python benchmarks/bench_score.py --n 150 --classifiers \
        timm:test_resnet,effnet-lite0,template-linear

Both sides use the same loaded models, the same images and the same pre-processing (central
square resized to --image-size), in the same run:

- baseline: for each classifier in turn, read and decode every image again (PIL, in the main
  process), stack a batch, run the model under torch.no_grad(). What one writes first (batched,
  so the speed-up measured is that of decoding once, not of batching).
- spurcli: `score_images`: each image decoded once, every classifier on the shared batch under
  torch.inference_mode(); with its default number of DataLoader workers and with --workers 1.

Speed: the machine may be shared with other jobs, so the sides take turns on chunks of
--chunk images (baseline, spurcli, spurcli --workers 1, next chunk, ...) --repeats times, in one
process with the models loaded once; each side's time is the sum over chunks of its fastest
repeat (the run least disturbed by others), and its CPU time (all threads, plus workers) the sum
of its smallest. The per-image target probabilities of the sides are compared, so the speed-up is
for the same numbers. Memory: each side scores the whole set in a fresh process, spurcli also
--memory-factor times as many images, and the peak RSS of that main process (where results
accumulate) is shown; forked DataLoader workers hold only the batches in flight.
Models are random (`timm:test_*`, the template plugin) or bundled (effnet-lite0): no download.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDES = ("baseline", "spurcli", "spurcli-workers1")
TITLES = {
    "baseline": "baseline (per classifier, re-decode)",
    "spurcli": "spurcli score (default workers)",
    "spurcli-workers1": "spurcli score --workers 1",
}
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


def _cpu_seconds() -> float:
    own, workers = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


class Sides:
    """The models, loaded once, and one function per side: folder -> (C, N) target probs."""

    def __init__(self, names: list[str], batch_size: int, image_size: int) -> None:
        import torch

        from spurcli.plugins import load_classifiers

        # Random init where a model has no offline weights; effnet-lite0 ships real ones.
        weights = {n: "random" for n in names if n != "effnet-lite0"}
        self.models = load_classifiers(names, weights)
        self.batch_size, self.image_size = batch_size, image_size
        with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
            for m in self.models:
                m.module(torch.rand(2, 3, image_size, image_size))

    def run(self, side: str, folder: Path) -> np.ndarray:
        return self.baseline(folder) if side == "baseline" else self.spurcli(side, folder)

    def spurcli(self, side: str, folder: Path) -> np.ndarray:
        from spurcli.evaluate.score import score_images

        result = score_images(
            folder,
            TARGET,
            self.models,
            device="cpu",
            batch_size=self.batch_size,
            image_size=self.image_size,
            num_workers=1 if side == "spurcli-workers1" else None,  # None: spurcli's default
        )
        return result.spurious.target_prob

    def baseline(self, folder: Path) -> np.ndarray:
        import torch
        from PIL import ImageOps

        from spurcli.evaluate import metrics
        from spurcli.images import find_images, read_image, to_tensor

        paths, size, step = find_images(folder), (self.image_size,) * 2, self.batch_size
        probs = np.zeros((len(self.models), len(paths)))
        for c, m in enumerate(self.models):
            for b in range(0, len(paths), step):
                images = [
                    to_tensor(ImageOps.fit(read_image(p), size, Image.Resampling.BICUBIC))
                    for p in paths[b : b + step]
                ]
                with torch.no_grad():
                    logits = m.module(torch.stack(images)).double().numpy()
                probs[c, b : b + len(images)] = metrics.target_prob(
                    logits, np.full(len(images), TARGET)
                )
        return probs


def speed(chunks: list[Path], args: argparse.Namespace) -> dict:
    """Sides taking turns chunk by chunk; per side the sums of per-chunk minima."""
    sides = Sides(args.names, args.batch_size, args.image_size)
    wall = {s: np.full((args.repeats, len(chunks)), np.inf) for s in SIDES}
    cpu = {s: np.full((args.repeats, len(chunks)), np.inf) for s in SIDES}
    probs: dict[str, list[np.ndarray]] = {s: [] for s in SIDES}
    for r in range(args.repeats):
        for j, chunk in enumerate(chunks):
            for side in SIDES:
                start, cpu_start = time.perf_counter(), _cpu_seconds()
                out = sides.run(side, chunk)
                wall[side][r, j] = time.perf_counter() - start
                cpu[side][r, j] = _cpu_seconds() - cpu_start
                if r == 0:
                    probs[side].append(out)
    same = all(
        np.allclose(np.hstack(probs["baseline"]), np.hstack(probs[s]), rtol=1e-5, atol=1e-9)
        for s in SIDES
    )
    return {
        "n": sum(p.shape[1] for p in probs["baseline"]),
        "seconds": {s: float(wall[s].min(axis=0).sum()) for s in SIDES},
        "cpu_seconds": {s: float(cpu[s].min(axis=0).sum()) for s in SIDES},
        "every_run_images_per_s": {
            s: [round(float(len(chunks) * args.chunk / row.sum()), 1) for row in wall[s]]
            for s in SIDES
        },
        "same_numbers": same,
    }


def peak_rss(side: str, folder: Path, args: argparse.Namespace) -> float:
    """Peak RSS (MB) of a fresh process that loads the models and scores ``folder``."""
    cmd = [sys.executable, __file__, "--memory-child", side, "--folder", str(folder)]
    cmd += ["--classifiers", args.classifiers, "--batch-size", str(args.batch_size)]
    cmd += ["--image-size", str(args.image_size)]
    out = subprocess.run(
        cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="images in the speed comparison")
    parser.add_argument("--chunk", type=int, default=50, help="images per turn of each side")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), help="min/max px")
    parser.add_argument("--classifiers", default=DEFAULT_CLASSIFIERS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3, help="turns of each side per chunk")
    parser.add_argument("--memory-factor", type=int, default=4, help="0: skip the N vs kN check")
    parser.add_argument("--memory-child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.names = [n.strip() for n in args.classifiers.split(",") if n.strip()]
    if args.memory_child:
        Sides(args.names, args.batch_size, args.image_size).run(args.memory_child, args.folder)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    import torch

    args.n -= args.n % args.chunk
    print(
        f"spurcli score benchmark: {len(args.names)} classifiers ({', '.join(args.names)}), "
        f"{args.n} PNGs of {args.size[0]}-{args.size[1]} px in turns of {args.chunk}, "
        f"{args.repeats} repeats, batch {args.batch_size}, image size {args.image_size}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        every = Path(tmp) / "all"
        make_images(every, args.n, *args.size)
        chunks = []
        for j in range(args.n // args.chunk):
            chunks.append(Path(tmp) / f"chunk{j}")
            chunks[-1].mkdir()
            for i in range(j * args.chunk, (j + 1) * args.chunk):
                shutil.copy(every / f"{i:06d}.png", chunks[-1])
        result = speed(chunks, args)
        rss = {s: peak_rss(s, every, args) for s in ("baseline", "spurcli")}
        if args.memory_factor > 1:
            big = Path(tmp) / "big"
            make_images(big, args.n * args.memory_factor, *args.size, seed=1)
            rss_big = peak_rss("spurcli", big, args)

    n, seconds, cpu = result["n"], result["seconds"], result["cpu_seconds"]
    print("| run | images | images/s | vs baseline | CPU ms/image | vs baseline | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for side in SIDES:
        memory = f"{rss[side]:.0f} MB" if side in rss else "-"
        print(
            f"| {TITLES[side]} | {n} | {n / seconds[side]:.1f} | "
            f"{seconds['baseline'] / seconds[side]:.2f}x | {cpu[side] / n * 1e3:.1f} | "
            f"{cpu['baseline'] / cpu[side]:.2f}x | {memory} |"
        )
    if args.memory_factor > 1:
        print(
            f"peak RSS of spurcli score: {rss['spurcli']:.0f} MB at N = {args.n}, "
            f"{rss_big:.0f} MB at N = {args.n * args.memory_factor}"
        )
    print(f"images/s of each repeat (whole set): {result['every_run_images_per_s']}")
    print(f"per-image target probabilities identical across the sides: {result['same_numbers']}")


if __name__ == "__main__":
    main()
