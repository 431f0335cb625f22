"""Per-step time and peak memory of `spurcli finetune` on the tiny model, and the diffusers peer.

    python benchmarks/bench_finetune.py                        # all tables (~5-10 min on 2 cores)
    python benchmarks/bench_finetune.py --quick                # fewer steps, no 512 px table
    python benchmarks/bench_finetune.py --peer /tmp/peer/train_dreambooth.py

Every configuration runs in a fresh subprocess with OMP_NUM_THREADS=1 (tiny models on a shared
machine: a second thread only adds contention, and the peer gets the same setting).

Time: median wall time of the steps after a warm-up, from timestamps taken in `finetune`'s
``on_step`` hook. Memory: the RSS high-water mark (Linux VmHWM, reset through
/proc/self/clear_refs after the warm-up) minus the RSS between steps: what a training step adds
on top of weights and optimizer state (activations, gradients, temporaries). With glibc's mmap
threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), every tensor-sized block goes back to the OS
when freed, so RSS follows what tensors really hold. That setting makes allocation slower (an
mmap and page faults per tensor), so only the memory tables use it; the SFSL and peer tables are
timed with the normal allocator.

Peer: diffusers' examples/dreambooth/train_dreambooth.py, fetched outside this repository (never
committed): `git --git-dir <mirror of huggingface/diffusers> show
HEAD:examples/dreambooth/train_dreambooth.py > /tmp/peer/train_dreambooth.py`. Both run the same
saved tiny pipeline, references, class images, 64 px, batch 1 + 1 prior, text encoder trained, on
CPU; per-step time = (T(N2 steps) - T(N1 steps)) / (N2 - N1) of whole-process wall times, so
start-up and saving cancel; the best of two repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# glibc keeps freed heap memory and raises its mmap threshold as the program runs, so RSS would
# keep the high-water mark of earlier steps. A fixed 64 KiB threshold mmaps every tensor-sized
# block and returns it on free: RSS then follows the bytes tensors really hold.
MEMORY_ENV = {**ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# the child: one configuration in a fresh process


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) // 1024 for k in ("VmRSS", "VmHWM")}


def child(spec: dict) -> dict:
    import torch

    from spurcli import console
    from spurcli import finetune as finetune_module
    from spurcli.config import FinetuneConfig
    from spurcli.finetune import finetune

    torch.set_num_threads(1)
    console.configure(quiet=True)
    if spec.pop("classic_attention", False):
        # diffusers' pre-torch-2 processor: full attention matrices, what slicing was made for
        from diffusers.models.attention_processor import AttnProcessor

        load = finetune_module.load_pipeline

        def classic(*args, **kwargs):
            pipe = load(*args, **kwargs)
            pipe.unet.set_attn_processor(AttnProcessor())
            return pipe

        finetune_module.load_pipeline = classic
    warmup = spec.pop("warmup")
    times: list[float] = []
    marks: dict[str, int] = {}

    def on_step(step: int) -> None:
        times.append(time.perf_counter())
        if step == warmup:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
            marks["between"] = _status()["VmRSS"]
        marks["hwm"] = _status()["VmHWM"]

    cfg = FinetuneConfig(**{k: (Path(v) if k.endswith("_dir") else v) for k, v in spec.items()})
    finetune(cfg, on_step=on_step)
    steps = [b - a for a, b in zip(times[warmup - 1 :], times[warmup:], strict=False)]
    return {
        "step_ms": statistics.median(steps) * 1000,
        "step_peak_mb": marks["hwm"] - marks["between"],
        "process_peak_mb": _status()["VmHWM"],
    }


def run_child(spec: dict, memory: bool = False) -> dict:
    """One configuration in a fresh process; ``memory``: with the malloc setting that makes RSS
    exact (it costs time: every tensor-sized allocation becomes an mmap and page faults)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=MEMORY_ENV if memory else ENV,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"configuration failed: {spec}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# the tables


def prepare(work: Path, resolution: int) -> dict:
    """Square references (one crop each) and class images, shared by every configuration."""
    import skimage.data
    from PIL import Image

    refs = work / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea"):
        img = Image.fromarray(getattr(skimage.data, name)())
        side = min(img.size)
        img.crop((0, 0, side, side)).resize((128, 128)).save(refs / f"{name}.png")
    base = {
        "model": "tiny",
        "instance_dir": str(refs),
        "class_noun": "flower",
        "target": "hummingbird",
        "class_dir": str(work / f"class-{resolution}"),
        "resolution": resolution,
        "num_class_images": 4,
        "class_inference_steps": 2,
        "batch_size": 1,
        "checkpoint_every": 0,
        "validate_every": 0,
        "extractor_weights": "random",
        "sfsl_weight": 0.0,
    }
    # Generate the class images once (a 1-step run); every configuration reuses them.
    run_child({**base, "output_dir": str(work / f"prep-{resolution}"), "steps": 2, "warmup": 1})
    return base


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def sfsl_table(work: Path, base: dict, steps: int, rounds: int = 3) -> None:
    configs = [
        ("SFSL off (DreamBooth + prior)", {}),
        (
            "SFSL on, template-linear (~free: VAE decode + its backward)",
            {"extractor": "template-linear"},
        ),
        (
            "SFSL on, template-linear, --sfsl-decode-size 32",
            {"extractor": "template-linear", "sfsl_decode_size": 32},
        ),
        ("SFSL on, timm:test_resnet (random)", {"extractor": "timm:test_resnet"}),
        (
            "SFSL on, effnet-lite0 (real weights)",
            {"extractor": "effnet-lite0", "extractor_weights": None},
        ),
        (
            "SFSL on, robust-resnet50 architecture (random weights)",
            {"extractor": "robust-resnet50"},
        ),
    ]
    # Rounds over all configurations, best of each: load from other processes on a shared
    # machine comes and goes, and must not land on one configuration only.
    best: dict[int, dict] = {}
    for round_ in range(rounds):
        for i, (_, change) in enumerate(configs):
            spec = {
                **base,
                **change,
                "output_dir": str(work / f"sfsl-{i}-{round_}"),
                "steps": steps,
                "warmup": 3,
                "sfsl_weight": 0.1 if change else 0.0,
            }
            r = run_child(spec)
            if i not in best or r["step_ms"] < best[i]["step_ms"]:
                best[i] = r
    off = best[0]["step_ms"]
    rows = [
        [name, f"{r['step_ms']:.1f}", f"{r['step_ms'] / off:.2f}x", f"{r['process_peak_mb']}"]
        for (name, _), r in zip(configs, (best[i] for i in range(len(configs))), strict=True)
    ]  # fmt: skip
    table(
        f"SFSL cost: tiny SD, {base['resolution']} px, batch 1 + 1 prior, CPU, 1 thread "
        f"(median of {steps - 3} steps, best of {rounds} rounds)",
        ["configuration", "ms/step", "vs off", "process peak RSS MB"],
        rows,
    )


def memory_table(work: Path, base: dict, steps: int) -> None:
    configs = [
        ("default (SDPA attention)", {}),
        ("gradient checkpointing", {"gradient_checkpointing": True}),
        ("attention slicing auto", {"attention_slicing": "auto"}),
        ("attention slicing max", {"attention_slicing": "max"}),
        (
            "checkpointing + slicing max",
            {"gradient_checkpointing": True, "attention_slicing": "max"},
        ),
        ("classic attention (no SDPA)", {"classic_attention": True}),
        (
            "classic attention + slicing auto",
            {"classic_attention": True, "attention_slicing": "auto"},
        ),
        (
            "classic attention + slicing max",
            {"classic_attention": True, "attention_slicing": "max"},
        ),
    ]
    rows, ref = [], None
    for i, (name, change) in enumerate(configs):
        spec = {
            **base,
            **change,
            "output_dir": str(work / f"mem-{base['resolution']}-{i}"),
            "steps": steps,
            "warmup": 2,
            "sfsl_weight": 0.1,
            "extractor": "template-linear",
        }
        r = run_child(spec, memory=True)
        ref = ref or r
        rows.append(
            [
                name,
                f"{r['step_ms']:.0f}",
                f"{r['step_peak_mb']}",
                f"{r['step_peak_mb'] / max(ref['step_peak_mb'], 1):.2f}x",
            ]
        )
    table(
        f"Memory savers: tiny SD, {base['resolution']} px, batch 1 + 1 prior, SFSL on "
        "(template-linear, so the VAE decoder is in the graph), CPU, 1 thread",
        ["configuration", "ms/step (mmap'd malloc)", "step peak MB", "vs default"],
        rows,
    )


def peer_table(work: Path, base: dict, peer: Path, n1: int, n2: int) -> None:
    from spurcli.diffusion import build_tiny_pipeline

    model = work / "tiny-sd"
    if not model.exists():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        build_tiny_pipeline().save_pretrained(model)
    common = {
        "class_noun": "flower",
        "instance": base["instance_dir"],
        "classes": base["class_dir"],
    }

    def ours(steps: int, out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "spurcli",
            "-q",
            "finetune",
            "--model",
            str(model),
            "--instance-dir",
            common["instance"],
            "--class-dir",
            common["classes"],
            "--class-noun",
            "flower",
            "--target",
            "hummingbird",
            "--output-dir",
            str(out),
            "--resolution",
            str(base["resolution"]),
            "--num-class-images",
            "4",
            "--batch-size",
            "1",
            "--steps",
            str(steps),
            "--lr",
            "2e-6",
            "--checkpoint-every",
            "0",
            "--validate-every",
            "0",
            "--sfsl-weight",
            "0",
        ]

    def theirs(steps: int, out: Path) -> list[str]:
        return [
            sys.executable,
            str(peer),
            "--pretrained_model_name_or_path",
            str(model),
            "--instance_data_dir",
            common["instance"],
            "--class_data_dir",
            common["classes"],
            "--with_prior_preservation",
            "--prior_loss_weight",
            "1.0",
            "--instance_prompt",
            "a photo of sks flower",
            "--class_prompt",
            "a photo of flower",
            "--num_class_images",
            "4",
            "--resolution",
            str(base["resolution"]),
            "--train_batch_size",
            "1",
            "--train_text_encoder",
            "--learning_rate",
            "2e-6",
            "--lr_scheduler",
            "constant",
            "--lr_warmup_steps",
            "0",
            "--seed",
            "0",
            "--max_train_steps",
            str(steps),
            "--checkpointing_steps",
            "100000",
            "--output_dir",
            str(out),
        ]

    def wall(command: list[str]) -> float:
        start = time.perf_counter()
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
        return time.perf_counter() - start

    results = {}
    for name, make in (
        ("spurcli finetune (SFSL off)", ours),
        ("diffusers train_dreambooth.py", theirs),
    ):
        per_step = []
        for rep in range(2):
            t1 = wall(make(n1, work / f"peer-{name[:4]}-{rep}-a"))
            t2 = wall(make(n2, work / f"peer-{name[:4]}-{rep}-b"))
            per_step.append((t2 - t1) / (n2 - n1) * 1000)
        results[name] = (min(per_step), t1)
    ours_ms = results["spurcli finetune (SFSL off)"][0]
    rows = [
        [name, f"{ms:.1f}", f"{ms / ours_ms:.2f}x", f"{start:.1f}"]
        for name, (ms, start) in results.items()
    ]
    table(
        f"Peer: same tiny pipeline, {base['resolution']} px, batch 1 + 1 prior, text encoder "
        f"trained, CPU, 1 thread; (T({n2}) - T({n1})) / {n2 - n1}, best of 2",
        ["trainer", "ms/step", "vs spurcli", f"s for {n1} steps incl. start-up"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--peer", type=Path, default=Path("/tmp/peer/train_dreambooth.py"))
    parser.add_argument("--quick", action="store_true", help="fewer steps, skip 512 px")
    parser.add_argument("--only", choices=("sfsl", "memory", "peer"), help="one table")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    steps = 15 if args.quick else 40
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        base = prepare(work, 64)
        if args.only in (None, "sfsl"):
            sfsl_table(work, base, steps, 2 if args.quick else 3)
        if args.only in (None, "memory"):
            memory_table(work, base, steps // 2)
            if not args.quick:  # where attention matrices are big enough to matter
                memory_table(work, prepare(work, 512), 6)
        if args.only in (None, "peer"):
            if args.peer.is_file():
                peer_table(work, base, args.peer, 10, 60 if args.quick else 110)
            else:
                print(
                    f"\n(peer row skipped: {args.peer} not found. Get it with the search tool's "
                    "`fetch github:huggingface/diffusers`, then `git --git-dir <mirror> show "
                    "HEAD:examples/dreambooth/train_dreambooth.py > /tmp/peer/train_dreambooth.py`;"
                    " keep it outside this repository.)"
                )


if __name__ == "__main__":
    main()
