"""One command to measure spurcli on a GPU: finetune, sample and score, Stable Diffusion 1.5 sized.

    python benchmarks/gpu_check.py                      # one CUDA GPU, no network, < 8 min
    python benchmarks/gpu_check.py --json out.json      # the table also as JSON (default
                                                        # gpu_check.json in the current folder)
    python benchmarks/gpu_check.py --tiny               # the same code on CPU in seconds (a test)

What it builds (random weights, nothing downloaded): Stable Diffusion 1.5's architecture (its
UNet, VAE and CLIP ViT-L/14 text encoder configurations, written below; spurcli's byte-level
tokenizer stands in for CLIP's BPE, which changes no shape), saved as a diffusers folder; the
robust ResNet-50 extractor and the resnet / vit / clip victims come from spurcli's plugins with
``random`` weights, taesd (`--sfsl-decoder taesd`) is ``random`` too.

What it measures, through spurcli's own functions (`spurcli.generate.finetune.finetune`,
`spurcli.generate.sample.
sample`, `spurcli.evaluate.score.score_images`), not a re-implementation:

- finetune at 512 px, fp16 autocast, batch 1 + 1 prior image, text encoder trained: ms/step
  (median after warm-up steps) and peak CUDA memory (torch.cuda.max_memory_allocated, reset after
  the warm-up; weights and optimizer state included) for full + SFSL, full without SFSL, LoRA r=8
  + SFSL (+ checkpointing), 8-bit Adam, gradient checkpointing, --sfsl-decode-size 256 and
  --sfsl-decoder taesd;
- sampling images/s (25 steps, 512 px, fp16, batches of 4);
- scoring images/s per victim (resnet, vit, clip) over 512 px PNGs, decoding included.

A configuration that fails (out of memory, bitsandbytes missing, ...) becomes a row saying why;
the others still run. docs/finetune-scale.md sets these figures beside benchmarks/gpu_estimate.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Stable Diffusion 1.5's configurations (stable-diffusion-v1-5/stable-diffusion-v1-5's
# unet/config.json, vae/config.json, text_encoder/config.json: the keys that set the shapes).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {  # CLIP ViT-L/14's text tower
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


@dataclass
class Setup:
    """What differs between a GPU check and its --tiny rehearsal on CPU."""

    model: str  # "sd15" (built here) or "tiny"
    resolution: int
    mixed_precision: str
    warmup: int  # finetune steps before timing
    timed: int  # finetune steps timed
    extractor: str
    decode_size: int  # --sfsl-decode-size row
    victims: list[str]
    sample_steps: int
    sample_images: int
    score_images: int
    sample_batch: int = 4


GPU = Setup("sd15", 512, "fp16", 3, 5, "robust-resnet50", 256, ["resnet", "vit", "clip"], 25, 8, 64)
TINY = Setup("tiny", 64, "no", 1, 2, "template-linear", 32,
             ["timm:test_resnet", "timm:test_vit", "template-linear"], 2, 2, 4, 2)  # fmt: skip

# name -> FinetuneConfig changes, on top of "full + SFSL" (the paper's method, the VAE decoder)
CONFIGS: dict[str, dict[str, Any]] = {
    "full + SFSL": {},
    "full, SFSL off": {"sfsl_weight": 0.0},
    "LoRA r=8 + SFSL + checkpointing": {"lora_rank": 8, "gradient_checkpointing": True},
    "LoRA r=8 + SFSL": {"lora_rank": 8},
    "full + SFSL + 8-bit Adam": {"use_8bit_adam": True},
    "full + SFSL + gradient checkpointing": {"gradient_checkpointing": True},
    "full + SFSL + --sfsl-decode-size": {"sfsl_decode_size": "DECODE"},
    "full + SFSL + --sfsl-decoder taesd": {"sfsl_decoder": "taesd"},
}


def build_sd15(folder: Path, device: str) -> Path:
    """SD 1.5's architecture with random weights (seeded), saved as a diffusers folder (fp16)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from spurcli.generate.pipelines import build_tiny_pipeline
    from spurcli.generate.tiny import assemble_pipeline

    tiny = build_tiny_pipeline()  # its tokenizer and SD 1.x's scheduler
    vocab = tiny.tokenizer.get_vocab()
    ids = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]}
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, **ids, pad_token_id=ids["eos_token_id"]))
    pipe = assemble_pipeline(vae, text, tiny.tokenizer, unet, tiny.scheduler)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    del pipe, unet, vae, text
    return folder


def write_images(folder: Path, n: int, size: int, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img-{i:03d}.png")
    return folder


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _row(kind: str, name: str, fn: Any) -> dict[str, Any]:
    """Run one measurement; a failure is a row with its error, not a crash."""
    row: dict[str, Any] = {"kind": kind, "configuration": name}
    try:
        row.update(fn())
        row["status"] = "ok"
    except Exception as exc:  # every failure is reported, then the next row runs
        import torch

        from spurcli.errors import SpurcliError

        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        row["status"] = "out of memory" if oom else f"error: {type(exc).__name__}: {exc}"
        row["status"] = row["status"].splitlines()[0][:200]
        if not isinstance(exc, (SpurcliError, torch.cuda.OutOfMemoryError)):
            traceback.print_exc(file=sys.stderr)  # unexpected: the whole story on stderr
    finally:
        _free()
    return row


def finetune_row(setup: Setup, model: str, work: Path, change: dict) -> dict:
    import torch

    from spurcli.generate.config import FinetuneConfig
    from spurcli.generate.finetune import finetune

    change = {k: (setup.decode_size if v == "DECODE" else v) for k, v in change.items()}
    cfg = FinetuneConfig(
        model=model,
        instance_dir=work / "refs",
        class_dir=work / "class",
        class_noun="flower",
        target="hummingbird",
        output_dir=work / "runs" / f"{len(list((work / 'runs').glob('*')))}",
        resolution=setup.resolution,
        steps=setup.warmup + setup.timed,
        num_class_images=2,
        mixed_precision=setup.mixed_precision,
        extractor=setup.extractor,
        extractor_weights="random",
        sfsl_taesd="random",
        checkpoint_every=0,
        validate_every=0,
        log_grad_norms_every=0,
        **change,
    )
    cuda = torch.cuda.is_available()
    times: list[float] = []

    def on_step(step: int) -> None:
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        if step == setup.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()

    finetune(cfg, on_step=on_step)
    steps = [b - a for a, b in zip(times[setup.warmup - 1 :], times[setup.warmup :], strict=False)]
    return {
        "ms_per_step": round(statistics.median(steps) * 1000, 1),
        "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
    }


def sample_row(setup: Setup, model: str, work: Path) -> dict:
    import torch

    from spurcli.generate.pipelines import load_pipeline, resolve_model
    from spurcli.generate.sample import SampleConfig, sample, torch_dtype

    cuda = torch.cuda.is_available()
    ref = resolve_model(model)
    pipe = load_pipeline(ref, dtype=torch_dtype("auto", torch.device("cuda" if cuda else "cpu")))

    def config(n: int, out: str) -> SampleConfig:
        size, steps = setup.resolution, setup.sample_steps
        return SampleConfig(model=model, prompts=["a photo of a flower"], n=n, steps=steps,
                            height=size, width=size, batch_size=setup.sample_batch,
                            out=work / out)  # fmt: skip

    sample(config(1, "warm-up"), pipe=pipe, model_ref=ref)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    sample(config(setup.sample_images, "samples"), pipe=pipe, model_ref=ref)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(setup.sample_images / seconds, 3),
        "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
    }


def score_row(setup: Setup, images: Path, victim: str) -> dict:
    from spurcli.evaluate.score import score_images
    from spurcli.plugins import load_classifiers

    models = load_classifiers([victim], weights={victim: "random"})
    score_images(images, target=94, classifiers=models)  # warm-up (and clip's zero-shot head)
    start = time.perf_counter()
    result = score_images(images, target=94, classifiers=models)
    seconds = time.perf_counter() - start
    return {"images_per_s": round(result.n_images / seconds, 1)}


def run(setup: Setup, work: Path) -> list[dict]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_images(work / "refs", 3, setup.resolution, seed=1)
    write_images(work / "class", 2, setup.resolution, seed=2)  # reused: none generated
    (work / "runs").mkdir()
    model = "tiny" if setup.model == "tiny" else str(build_sd15(work / "sd15", device))
    rows = []
    for name, change in CONFIGS.items():
        rows.append(_row("finetune", name, lambda c=change: finetune_row(setup, model, work, c)))
        _report(rows[-1])
    rows.append(_row("sample", f"{setup.sample_steps} steps, {setup.resolution} px",
                     lambda: sample_row(setup, model, work)))  # fmt: skip
    _report(rows[-1])
    images = write_images(work / "score", setup.score_images, setup.resolution, seed=3)
    for victim in setup.victims:
        rows.append(_row("score", victim, lambda v=victim: score_row(setup, images, v)))
        _report(rows[-1])
    return rows


def _report(row: dict) -> None:
    print(f"  {row['kind']}: {row['configuration']}: {row['status']}", file=sys.stderr, flush=True)


def table(rows: list[dict], title: str) -> str:
    lines = [title, "", "| what | configuration | ms/step | images/s | peak CUDA GB | status |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip

    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['configuration']} | {cell(r.get('ms_per_step'))} | "
            f"{cell(r.get('images_per_s'))} | {cell(r.get('peak_cuda_gb'))} | {r['status']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (seconds)")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args(argv)

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network, ever
    import torch

    from spurcli import console

    console.configure(quiet=True)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; --tiny runs the same code on the CPU")
    setup = TINY if args.tiny else GPU
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spurcli-gpu-check-") as tmp:
        rows = run(setup, Path(tmp))
    seconds = round(time.perf_counter() - started, 1)
    title = (
        f"spurcli GPU check: {'tiny SD' if args.tiny else 'SD 1.5 architecture'}, "
        f"{setup.resolution} px, {setup.mixed_precision} autocast, {device}, torch "
        f"{torch.__version__}; {seconds} s"
    )
    print(table(rows, title))
    result = {"title": title, "device": device, "seconds": seconds, "tiny": args.tiny, "rows": rows}
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
