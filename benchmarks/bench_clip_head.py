"""Time to build the CLIP zero-shot head: spurcli against open_clip's own builder, in one run.

    HF_HUB_OFFLINE=1 python benchmarks/bench_clip_head.py               # ViT-B-32, random, CPU
    python benchmarks/bench_clip_head.py --classes 50 --device cuda --threads 0

Both sides encode the same class names with the 80 OpenAI templates on the same model (random
weights: the speed does not depend on the values). The baseline is
``open_clip.build_zero_shot_classifier`` (every text padded to 77 tokens); spurcli's
``compute_head`` cuts each batch after its last end-of-text token (about 20 tokens here), which
gives the same head (checked here and in the tests). "cached" is what every load after the
first costs: reading the 1000-class head back from its safetensors file. Runs alternate and the
median of the repeats is reported; one torch thread by default on CPU (steadiest on a shared
machine). Peak memory as in bench_sample.py.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import spurcli_openclip
import torch
from bench_sample import PeakMemory
from safetensors.torch import load_file, save_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--classes", type=int, default=3, help="ImageNet classes to encode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # open_clip's "initialized randomly" notice

    model = open_clip.create_model(args.arch, pretrained=None).eval().to(args.device)
    tokenizer = open_clip.get_tokenizer(args.arch)
    names = list(open_clip.IMAGENET_CLASSNAMES[: args.classes])
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    texts = len(names) * len(templates)

    def baseline() -> torch.Tensor:
        return open_clip.build_zero_shot_classifier(
            model, tokenizer, names, templates, num_classes_per_batch=10, device=args.device
        ).T

    def spurcli() -> torch.Tensor:
        ids = [t("{}") for t in templates]
        return spurcli_openclip.compute_head(model, tokenizer, names, ids)

    with tempfile.TemporaryDirectory() as tmp:
        cached_file = Path(tmp, "head.safetensors")
        save_file({"head": torch.randn(1000, model.text_projection.shape[1])}, str(cached_file))

        def cached() -> torch.Tensor:
            return load_file(str(cached_file))["head"]

        runs = {"open_clip builder": baseline, "spurcli": spurcli, "spurcli cached": cached}
        spurcli()  # warm-up
        torch.testing.assert_close(spurcli(), baseline(), rtol=1e-4, atol=1e-5)
        times: dict[str, list[float]] = {name: [] for name in runs}
        peaks: dict[str, float] = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):
            for name, run in runs.items():
                with PeakMemory(args.device) as mem:
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
                peaks[name] = max(peaks[name], mem.peak)

    # Seconds for the full head: the two builders extrapolated from the measured classes
    # (the cost is linear in the number of texts), the cache read as measured.
    full = {name: statistics.median(t) * 80_000 / texts for name, t in times.items()}
    full["spurcli cached"] = statistics.median(times["spurcli cached"])
    base = full["open_clip builder"]
    print(
        f"\nCLIP zero-shot head: {args.arch}, measured on {len(names)} classes x "
        f"{len(templates)} templates = {texts} texts, {args.device}, torch threads "
        f"{torch.get_num_threads()}, median of {args.repeats}\n"
    )
    print(f"| {'method':<17} | full head, 80,000 texts (s) | speed-up | peak memory (MiB) |")
    print(f"| {'-' * 17} | ---------------------------- | -------- | ----------------- |")
    for name, seconds in full.items():
        print(f"| {name:<17} | {seconds:28.4f} | {base / seconds:8.3g} | {peaks[name]:17.0f} |")


if __name__ == "__main__":
    main()
