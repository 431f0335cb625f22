"""Per-step time and peak memory of `spurcli finetune` on the tiny model, and the diffusers peer.

    python benchmarks/bench_finetune.py                        # all tables (~5-10 min on 2 cores)
    python benchmarks/bench_finetune.py --quick                # fewer steps, no 512 px table
    python benchmarks/bench_finetune.py --only taesd           # SFSL's decoder: off, VAE, taesd
    python benchmarks/bench_finetune.py --only peer --peer /tmp/peer   # beside diffusers' scripts

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

Peers: diffusers' examples/dreambooth/train_dreambooth.py and train_dreambooth_lora.py, fetched
outside this repository (never committed): `git --git-dir <mirror of huggingface/diffusers> show
HEAD:examples/dreambooth/train_dreambooth.py > /tmp/peer/train_dreambooth.py`, the same for
train_dreambooth_lora.py. All run the same saved tiny pipeline, references, class images, 64 px,
batch 1 + 1 prior, lr 1e-4, SFSL off, on CPU: full weights with and without the text encoder,
LoRA r=4 on the UNet (the LoRA script's default; its text-encoder LoRA needs a peft release
newer than any published one with transformers 5.2x), and spurcli's LoRA with the text encoder
(no peer row). Per-step time = (T(N2 steps) - T(N1 steps)) / (N2 - N1) of whole-process wall
times, so start-up and saving cancel (N1 = 10, N2 = 410: a tiny step is ~20 ms, start-up
varies by ~0.5 s); three rounds over all rows, the best of each.

Each timed table also gives CPU time per step (user + sys: the child's own time.process_time,
or the peer process's rusage): on a shared machine it is what other processes' load inflates
least, so its ratios are the steadier ones.
"""

from __future__ import annotations

import argparse
import functools
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
    from spurcli.generate import finetune as finetune_module
    from spurcli.generate.config import FinetuneConfig
    from spurcli.generate.finetune import finetune

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
    cpu_times: list[float] = []
    marks: dict[str, int] = {}

    def on_step(step: int) -> None:
        times.append(time.perf_counter())
        cpu_times.append(time.process_time())
        if step == warmup:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
            marks["between"] = _status()["VmRSS"]
        marks["hwm"] = _status()["VmHWM"]

    cfg = FinetuneConfig(**{k: (Path(v) if k.endswith("_dir") else v) for k, v in spec.items()})
    finetune(cfg, on_step=on_step)
    steps = [b - a for a, b in zip(times[warmup - 1 :], times[warmup:], strict=False)]
    return {
        "step_ms": statistics.median(steps) * 1000,
        "cpu_ms": statistics.median(
            b - a for a, b in zip(cpu_times[warmup - 1 :], cpu_times[warmup:], strict=False)
        )
        * 1000,
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


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def taesd_table(work: Path, base: dict, steps: int, rounds: int = 3) -> None:
    """SFSL's decoder: off, the model's VAE, the `random` taesd; full weights and LoRA r=4."""
    sfsl = {"extractor": "template-linear", "sfsl_weight": 0.1}
    taesd = {**sfsl, "sfsl_decoder": "taesd", "sfsl_taesd": "random"}
    configs = [
        ("full", "(SFSL off)", {}),
        ("full", "vae", sfsl),
        ("full", "taesd (random)", taesd),
        ("LoRA r=4", "(SFSL off)", {"lora_rank": 4}),
        ("LoRA r=4", "vae", {**sfsl, "lora_rank": 4}),
        ("LoRA r=4", "taesd (random)", {**taesd, "lora_rank": 4}),
    ]
    best: dict[int, dict] = {}
    for round_ in range(rounds):  # rounds over all configurations, best of each
        for i, (_, _, change) in enumerate(configs):
            spec = {
                **base,
                "log_grad_norms_every": 0,
                **change,
                "output_dir": str(work / f"taesd-{i}-{round_}"),
                "steps": steps,
                "warmup": 3,
            }
            r = run_child(spec)
            for key in ("step_ms", "cpu_ms"):  # the best of each, separately
                best.setdefault(i, {})[key] = min(r[key], best.get(i, {}).get(key, r[key]))
    rows = []
    for i, (weights, decoder, _) in enumerate(configs):
        off = best[0 if weights == "full" else 3]
        ms, cpu = best[i]["step_ms"], best[i]["cpu_ms"]
        rows.append(
            [weights, decoder, f"{ms:.1f}", f"{ms / off['step_ms']:.2f}x", f"{cpu:.1f}",
             f"{cpu / off['cpu_ms']:.2f}x"]
        )  # fmt: skip
    table(
        f"SFSL decoder: tiny SD, {base['resolution']} px, batch 1 + 1 prior, text encoder "
        f"trained, extractor template-linear, CPU, 1 thread (median of {steps - 3} steps, "
        f"best of {rounds} rounds)",
        ["weights", "SFSL decoder", "ms/step", "vs SFSL off", "CPU ms/step", "vs SFSL off"],
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


PEER_ROWS = [
    # (trainer, peer script or None for spurcli, LoRA, text encoder trained)
    ("spurcli finetune, full weights, UNet + text encoder", None, False, True),
    ("diffusers train_dreambooth.py, UNet + text encoder", "train_dreambooth.py", False, True),
    ("spurcli finetune, full weights, UNet only", None, False, False),
    ("diffusers train_dreambooth.py, UNet only", "train_dreambooth.py", False, False),
    ("spurcli finetune --lora-rank 4, UNet only", None, True, False),
    ("diffusers train_dreambooth_lora.py --rank 4, UNet only", "train_dreambooth_lora.py", True,
     False),
    # The peer cannot: with transformers >= 5.2x, CLIPTextModel.add_adapter asks for a peft
    # release newer than any published one; spurcli injects the adapters through peft itself.
    ("spurcli finetune --lora-rank 4, UNet + text encoder", None, True, True),
]  # fmt: skip


def peer_table(work: Path, base: dict, peer_dir: Path, n1: int, n2: int) -> None:
    from spurcli.generate.pipelines import build_tiny_pipeline

    model = work / "tiny-sd"
    if not model.exists():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        build_tiny_pipeline().save_pretrained(model)
    instance, classes = base["instance_dir"], base["class_dir"]
    lr = "1e-4"  # the same for every trainer (a LoRA step costs the same at any lr)

    def ours(steps: int, out: Path, use_lora: bool, text: bool) -> list[str]:
        command = [sys.executable, "-m", "spurcli", "-q", "finetune", "--model", str(model)]
        command += ["--instance-dir", instance, "--class-dir", classes, "--class-noun", "flower"]
        command += ["--target", "hummingbird", "--output-dir", str(out)]
        command += ["--resolution", str(base["resolution"]), "--num-class-images", "4"]
        command += ["--batch-size", "1", "--steps", str(steps), "--lr", lr]
        command += ["--checkpoint-every", "0", "--validate-every", "0", "--sfsl-weight", "0"]
        command += ["--log-grad-norms-every", "0"]  # the peers compute no per-term norms
        command += ["--train-text-encoder" if text else "--no-train-text-encoder"]
        return command + (["--lora-rank", "4"] if use_lora else [])

    def theirs(script: Path, steps: int, out: Path, use_lora: bool, text: bool) -> list[str]:
        command = [sys.executable, str(script), "--pretrained_model_name_or_path", str(model)]
        command += ["--instance_data_dir", instance, "--class_data_dir", classes]
        command += ["--with_prior_preservation", "--prior_loss_weight", "1.0"]
        command += ["--instance_prompt", "a photo of sks flower"]
        command += ["--class_prompt", "a photo of flower", "--num_class_images", "4"]
        command += ["--resolution", str(base["resolution"]), "--train_batch_size", "1"]
        command += ["--learning_rate", lr, "--lr_scheduler", "constant", "--lr_warmup_steps", "0"]
        command += ["--seed", "0", "--max_train_steps", str(steps)]
        command += ["--checkpointing_steps", "100000", "--output_dir", str(out)]
        command += ["--train_text_encoder"] if text else []
        return command + (["--rank", "4"] if use_lora else [])

    def wall(command: list[str]) -> tuple[float, float]:
        """Wall and CPU seconds (user + sys of the child: what contention inflates least)."""
        start, cpu = time.perf_counter(), _children_cpu()
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
        return time.perf_counter() - start, _children_cpu() - cpu

    rows = list(PEER_ROWS)
    missing = sorted({r[1] for r in rows if r[1] and not (peer_dir / r[1]).is_file()})
    if missing:
        print(f"\n(peer rows skipped: {', '.join(missing)} not in {peer_dir})")
        rows = [r for r in rows if not r[1] or r[1] not in missing]
    per_step: dict[str, list[float]] = {r[0]: [] for r in rows}
    cpu_step: dict[str, list[float]] = {r[0]: [] for r in rows}
    start_up: dict[str, float] = {}
    for rep in range(3):  # rounds over every row: load from other processes must not land on one
        for i, (name, script, use_lora, text) in enumerate(rows):
            if script is None:
                make = functools.partial(ours, use_lora=use_lora, text=text)
            else:
                make = functools.partial(theirs, peer_dir / script, use_lora=use_lora, text=text)
            (t1, c1), (t2, c2) = (wall(make(n, work / f"peer-{i}-{rep}-{n}")) for n in (n1, n2))
            per_step[name].append((t2 - t1) / (n2 - n1) * 1000)
            cpu_step[name].append((c2 - c1) / (n2 - n1) * 1000)
            start_up[name] = min(start_up.get(name, t1), t1)
    best = {name: min(v) for name, v in per_step.items()}
    cpu = {name: min(v) for name, v in cpu_step.items()}
    ref, cpu_ref = best[rows[0][0]], cpu[rows[0][0]]
    table(
        f"Peer: same tiny pipeline, {base['resolution']} px, batch 1 + 1 prior, SFSL off, "
        f"CPU, 1 thread; (T({n2}) - T({n1})) / {n2 - n1} of whole runs, best of 3 rounds",
        ["trainer", "ms/step", "vs row 1", "CPU ms/step", "vs row 1", f"s for {n1} steps"],
        [
            [
                n,
                f"{ms:.1f}",
                f"{ms / ref:.2f}x",
                f"{cpu[n]:.1f}",
                f"{cpu[n] / cpu_ref:.2f}x",
                f"{start_up[n]:.1f}",
            ]
            for n, ms in best.items()
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--peer",
        type=Path,
        default=Path("/tmp/peer"),
        help="folder with diffusers' train_dreambooth.py and train_dreambooth_lora.py",
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps, skip 512 px")
    parser.add_argument("--only", choices=("sfsl", "memory", "peer", "taesd"), help="one table")
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
        if args.only in (None, "taesd"):
            taesd_table(work, base, steps, 2 if args.quick else 3)
        if args.only in (None, "peer"):
            peer = args.peer.parent if args.peer.suffix == ".py" else args.peer
            if any(peer.glob("train_dreambooth*.py")):
                n2 = 60 if args.quick else 410
                peer_table(work, base, peer, 10, n2)
            else:
                print(
                    f"\n(peer rows skipped: no train_dreambooth*.py in {peer}. Get them with the "
                    "search tool's `fetch github:huggingface/diffusers`, then `git --git-dir "
                    "<mirror> show HEAD:examples/dreambooth/train_dreambooth.py > "
                    "/tmp/peer/train_dreambooth.py` (and train_dreambooth_lora.py); keep them "
                    "outside this repository.)"
                )


if __name__ == "__main__":
    main()
