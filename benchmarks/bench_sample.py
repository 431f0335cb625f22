"""Images/s of `spurcli sample` against calling the diffusers pipeline directly, in one run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_sample.py                  # tiny model, CPU
    python benchmarks/bench_sample.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --size 512 --steps 30 --n 64 --batch-size 8 --device cuda       # the real thing on a GPU

Both sides use the same loaded pipeline, prompts, seeds (one CPU generator per image), steps,
guidance, size and batch size. The baseline is the plain loop a diffusers user writes:
``pipe(prompt=[...], generator=[...], ...)`` per batch, images kept in memory ("direct"), and the
same loop saving each image with ``PIL.Image.save`` ("direct+save"). spurcli's number includes
everything `sample` does: PNG with metadata written atomically, the manifest, resume bookkeeping.
Runs alternate (direct, spurcli, direct+save, ...) and the median of the repeats is reported, so
a noisy neighbour on the machine hits all three alike; one torch thread by default on CPU,
because two threads on two shared cores swing by 10x whenever another process wakes up. Peak
memory: the highest resident set size seen during each run (a 5 ms sampling thread) on CPU,
torch's peak allocation on CUDA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from spurcli.generate.pipelines import load_pipeline
from spurcli.generate.sample import SampleConfig, image_seed, sample

PROMPTS = ["a photo of a red flower", "a photo of a hummingbird feeder"]


class PeakMemory:
    """Peak resident memory (CPU) or peak CUDA allocation during a `with` block, in MiB."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak = 0.0

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def direct(pipe, args, out: Path | None) -> None:
    """The loop a diffusers user writes."""
    jobs = [(p, i) for p in PROMPTS for i in range(args.n)]
    for start in range(0, len(jobs), args.batch_size):
        batch = jobs[start : start + args.batch_size]
        images = pipe(
            prompt=[p for p, _ in batch],
            generator=[torch.Generator("cpu").manual_seed(image_seed(0, p, i)) for p, i in batch],
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            height=args.size,
            width=args.size,
        ).images
        if out is not None:
            for (p, i), image in zip(batch, images, strict=True):
                folder = out / p.replace(" ", "-")
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{i:06d}.png")


def spurcli_sample(pipe, args, out: Path) -> None:
    config = SampleConfig(
        model=args.model,
        prompts=PROMPTS,
        n=args.n,
        out=out,
        steps=args.steps,
        guidance=7.5,
        batch_size=args.batch_size,
        height=args.size,
        width=args.size,
        device=args.device,
        dtype="float32" if args.device == "cpu" else "auto",
    )
    sample(config, pipe=pipe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=16, help="images per prompt (2 prompts)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: steadiest on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe = load_pipeline(args.model, dtype=dtype).to(args.device)
    images = len(PROMPTS) * args.n
    with tempfile.TemporaryDirectory() as tmp:
        direct(pipe, argparse.Namespace(**{**vars(args), "n": 1}), None)  # warm-up
        times: dict[str, list[float]] = {"direct": [], "spurcli sample": [], "direct+save": []}
        peaks: dict[str, float] = dict.fromkeys(times, 0.0)
        for r in range(args.repeats):
            for name in times:
                out = Path(tmp, f"{name.replace(' ', '_')}-{r}")
                with PeakMemory(args.device) as mem:
                    start = time.perf_counter()
                    if name == "spurcli sample":
                        spurcli_sample(pipe, args, out)
                    else:
                        direct(pipe, args, out if name == "direct+save" else None)
                    times[name].append(time.perf_counter() - start)
                peaks[name] = max(peaks[name], mem.peak)
    base = images / statistics.median(times["direct"])
    print(
        f"\nsample benchmark: model {args.model}, {args.size}x{args.size} px, {args.steps} steps, "
        f"{images} images, batch {args.batch_size}, {args.device}, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}\n"
    )
    print(f"| {'method':<15} | images/s | ratio to direct | peak memory (MiB) |")
    print(f"| {'-' * 15} | -------- | --------------- | ----------------- |")
    for name, runs in times.items():
        rate = images / statistics.median(runs)
        print(f"| {name:<15} | {rate:8.2f} | {rate / base:15.3f} | {peaks[name]:17.0f} |")


if __name__ == "__main__":
    main()
