"""`spurcli sample`: many images per prompt from a (fine-tuned) Stable Diffusion, resumable.

    from spurcli.generate.sample import SampleConfig, sample
    result = sample(SampleConfig(model="tiny", prompts=["a photo of a red flower"], n=8,
                                 out="samples/", steps=4))
    result.generated, result.skipped        # 8, 0 (a second call: 0, 8)

    # CLI; data-parallel too: torchrun --nproc_per_node 2 -m spurcli sample ... (or accelerate)
    spurcli sample runs/hummingbird --prompt "a photo of [V] flower" --recontext -n 50 --out s/

Layout: ``OUT/<prompt-slug>/000123.png`` (the parameters in PNG text chunks, the whole record as
JSON in the ``spurcli`` chunk) and ``OUT/manifest.jsonl``, one line per image (``file``, ``prompt``,
``seed``, ``steps``, ``guidance``, ``scheduler``, ``model``, and ``model_id``: the exact weights,
e.g. the hub commit or the folder's content hash, see `spurcli.generate.pipelines.model_identity`),
sorted
by file.

Reproducibility, and why the code looks the way it does:
- Image i of a prompt starts from the noise of its own seed, derived from ``--seed``, the prompt
  without its ``[V]`` identifier and i (`image_seed`): images of different prompts are independent,
  while "a photo of [V] flower" of every tuned arm and "a photo of flower" of the untuned
  baseline share the noise of each index, which pairs them. The seed and its ``seed_scheme`` are
  recorded, so plain diffusers re-creates the image with ``torch.Generator().manual_seed(seed)``;
  a folder made under the older scheme (seed and i alone) is refused, never continued.
- Every UNet/VAE call has the same shape, min(--batch-size, images requested) (the last batch is
  filled up by repeating an image that is then not saved), and each prompt is encoded alone,
  once. Kernels give a row the same result whatever the other rows hold, but not whatever the
  batch *size*; so with a given --batch-size image i is bit-identical for any number of
  processes, shard, or resume point. Another --batch-size changes floating-point summation
  order and can move a few 8-bit pixels by one.
- A PNG is written to a temporary name and renamed, so it either exists complete or not at all;
  an existing file is a finished image and is skipped on the next run. Its manifest line is
  appended after; a kill between the two is repaired on the next run from the PNG's own chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spurcli.console import is_main_process, progress_bar
from spurcli.errors import SpurcliError
from spurcli.fileio import output_folder, write_text
from spurcli.finite import check_model_finite
from spurcli.generate.config import SampleConfig
from spurcli.generate.mini import EMBEDDED
from spurcli.generate.modules import set_attention_slicing
from spurcli.generate.pipelines import (
    SCHEDULERS,
    load_pipeline,
    make_scheduler,
    model_identity,
    resolve_model,
)
from spurcli.generate.prompts import fill_identifier, with_recontext, without_identifier
from spurcli.images import write_png
from spurcli.parallel import Processes
from spurcli.records import MANIFEST, PNG_CHUNK, png_record, read_manifest
from spurcli.seeds import derive_seed
from spurcli.text import slugify

log = logging.getLogger(__name__)

# How an image's seed is derived (recorded in every record as "seed_scheme"): from the base
# seed, the prompt without [V] and the image's index. Records without it were seeded by (base
# seed, index) alone, the same noise for image i of every prompt.
SEED_SCHEME = "seed,prompt-without-identifier,index"

# Fields that make two images "the same image": a finished file made with other values is an error.
IDENTITY = (
    "prompt",
    "negative_prompt",
    "seed",
    "seed_scheme",
    "steps",
    "guidance",
    "scheduler",
    "clip_sample",  # DDIM's and DDPM's: clipped latents, another (greyed) image
    "model",
    "height",
    "width",
    "dtype",
)


@dataclass
class Job:
    """One image to make."""

    file: str  # relative to the output folder
    prompt: str
    index: int
    seed: int


@dataclass
class SampleResult:
    out: Path
    prompts: list[str]  # after [V] replacement and recontextualisation
    files: list[str]  # every image of this request, relative to `out`, in prompt/index order
    generated: int  # made by this call (all processes)
    skipped: int  # already there
    seconds: float
    identifier: str | None
    model_id: dict[str, Any] | None = None  # the exact weights (`model_identity`)

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "prompts": self.prompts,
            "n_images": len(self.files),
            "generated": self.generated,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "identifier": self.identifier,
            "model_id": self.model_id,
        }


# ---------------------------------------------------------------------------------------- prompts


def prompt_folders(prompts: Sequence[str], taken: dict[str, str]) -> dict[str, str]:
    """prompt -> folder name; a slug already used by another prompt gets a hash suffix.

    ``taken`` maps existing folders to the prompt they hold (from the manifest), so a re-run
    finds the same folders. Two prompts never share one by construction: a candidate name is
    checked against every name assigned so far (and the hashed name gets a counter in the
    unlikely case that it is taken too), not just made unlikely to collide.
    """
    used = dict(taken)
    folders: dict[str, str] = {}
    for prompt in prompts:
        known = [folder for folder, p in used.items() if p == prompt]
        if known:
            folders[prompt] = known[0]
            continue
        slug = slugify(prompt)
        if slug in used or any(slugify(p) == slug for p in prompts if p != prompt):
            base = f"{slug}-{hashlib.sha1(prompt.encode()).hexdigest()[:8]}"
            slug, counter = base, 1
            while slug in used:
                counter += 1
                slug = f"{base}-{counter}"
        used[slug] = prompt
        folders[prompt] = slug
    return folders


# --------------------------------------------------------------------------------------- manifest


def write_manifest(out: Path, records: dict[str, dict[str, Any]]) -> None:
    """The manifest sorted by file; left untouched when already so (its mtime means "changed")."""

    text = "".join(json.dumps(records[f], sort_keys=True) + "\n" for f in sorted(records))
    path = out / MANIFEST
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)


def append_manifest(out: Path, records: Sequence[dict[str, Any]]) -> None:
    """One O_APPEND write per batch: processes appending at once never interleave in a line."""
    if not records:
        return
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")
    fd = os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def reconcile(out: Path) -> dict[str, dict[str, Any]]:
    """Make the manifest agree with the PNGs on disk (after a kill) and return it.

    Records of deleted files are dropped; finished PNGs without a record get theirs back from
    their own text chunk; leftover temporary files of a killed write are removed.
    """
    records = {f: r for f, r in read_manifest(out).items() if (out / f).is_file()}
    for root in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for tmp in root.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        for png in sorted(root.glob("*.png")):
            file = png.relative_to(out).as_posix()
            if file not in records:
                record = png_record(png)
                if record is not None:
                    records[file] = record
    on_disk = read_manifest(out)
    if set(on_disk) != set(records) or any(on_disk[f] != records[f] for f in records):
        write_manifest(out, records)
    return records


# ----------------------------------------------------------------------------------------- sample


def check_sample_config(config: SampleConfig) -> None:
    """Everything that can be checked before loading a model (`SampleConfig.check`)."""
    config.check()


def model_label(ref: Any) -> str:
    """How the manifest names the model: 'tiny', a hub id, or an absolute folder."""
    if ref.kind in ("tiny", "hub") or ref.kind in EMBEDDED:
        return ref.location
    return str(
        Path(ref.location).resolve().parent if ref.kind == "run" else Path(ref.location).resolve()
    )


def scheduler_label(scheduler: Any) -> str:

    name = type(scheduler).__name__
    return next((short for short, cls in SCHEDULERS.items() if cls == name), name)


def torch_dtype(name: str, device: Any) -> Any:
    import torch

    if name == "auto":
        return torch.float16 if getattr(device, "type", str(device)) == "cuda" else torch.float32
    return getattr(torch, name)


def sample(config: SampleConfig, *, pipe: Any = None, model_ref: Any = None) -> SampleResult:
    """Generate the missing images of ``config`` (see the module docstring).

    ``pipe``: an already loaded pipeline to use (moved to the device and dtype; its scheduler is
    left alone); ``model_ref``: the `ModelRef` it came from (for the identifier and the manifest).
    The first process owns and locks the output folder while it samples (`output_folder`).
    """

    started = time.perf_counter()
    check_sample_config(config)
    out = Path(config.out)
    if model_ref is None and pipe is None:  # a bad model name: an error before any folder exists
        model_ref = resolve_model(config.model, config.revision)
    with output_folder(out, "sample", recognise=is_sample_folder, enabled=is_main_process()):
        return _sample(config, out, pipe, model_ref, started)


def is_sample_folder(out: Path) -> bool:
    """``out`` holds spurcli samples (made before folders had a marker)."""
    return (out / MANIFEST).is_file()


def _sample(
    config: SampleConfig, out: Path, pipe: Any, model_ref: Any, started: float
) -> SampleResult:

    ref = model_ref
    tuned = ref is not None and ref.kind == "run"
    identifier = config.identifier or (ref.identifier if ref is not None else None)
    seed_prompts = prompt_plan(config, identifier, tuned)  # prompt -> what its seeds hash
    prompts = list(seed_prompts)

    procs = Processes(config.device)
    dtype = torch_dtype(config.dtype, procs.device)
    if pipe is None:
        pipe = load_pipeline(ref, dtype=dtype, scheduler=config.scheduler)
    else:
        if pipe.dtype != dtype:
            pipe = pipe.to(dtype=dtype)
        if config.scheduler is not None:  # a new pipeline object on the same models, so that
            scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)  # the caller's
            pipe = type(pipe)(**{**pipe.components, "scheduler": scheduler})  # keeps its own
            pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(procs.device)
    parts = {"UNet": pipe.unet, "text encoder": pipe.text_encoder, "VAE": pipe.vae}
    check_model_finite(parts, ref.location if ref is not None else str(config.model))
    if config.attention_slicing is not None:
        set_attention_slicing(pipe, config.attention_slicing)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    settings = {
        "negative_prompt": config.negative_prompt or "",
        "steps": config.steps,
        "guidance": config.guidance,
        "scheduler": scheduler_label(pipe.scheduler),
        "model": model_label(ref) if ref is not None else config.model,
        "height": config.height or native,
        "width": config.width or native,
        "dtype": str(dtype).removeprefix("torch."),
        "seed_scheme": SEED_SCHEME,
        # Recorded, not compared: a finished image made from other weights is not detected.
        "model_id": model_identity(ref) if ref is not None else None,
    }
    clipping = getattr(pipe.scheduler.config, "clip_sample", None)
    if clipping is not None:  # recorded where the scheduler has it: images made before
        settings["clip_sample"] = bool(clipping)  # `make_scheduler` unclipped them differ

    # Rank 0 repairs the manifest; then every process reads the same state from disk.
    if procs.is_main:
        reconcile(out)
    procs.barrier()
    records = read_manifest(out)
    check_seed_scheme(out, records)
    jobs = [
        Job(file, prompt, i, image_seed(config.seed, seed_prompts[prompt], i))
        for prompt, i, file in planned_files(prompts, config.n, records)
    ]
    todo = []
    for job in jobs:
        expected = {**settings, "prompt": job.prompt, "seed": job.seed}
        if (out / job.file).is_file():
            check_same(
                out / job.file, records.get(job.file) or png_record(out / job.file), expected
            )
        else:
            todo.append(job)
    mine = procs.shard(todo)
    embeddings = PromptCache(pipe, config.guidance, settings["negative_prompt"])
    # A request smaller than --batch-size runs at its own size: 1 image is 1 row, not 4 (the
    # size is fixed by the request, so resumes and shards still see the same shapes).
    size = min(config.batch_size, len(jobs))
    batches = [mine[i : i + size] for i in range(0, len(mine), size)]
    if todo and procs.is_main:
        log.info(
            "sampling %d images (%d already there) in %s on %d process(es)",
            len(todo),
            len(jobs) - len(todo),
            out,
            procs.world,
        )
    with progress_bar("sampling", total=len(mine)) as bar:
        for batch in batches:
            images = generate_batch(pipe, batch, size, embeddings, settings)
            new = []
            for job, image in zip(batch, images, strict=True):
                record = {**settings, "file": job.file, "prompt": job.prompt, "index": job.index}
                record["seed"] = job.seed
                save_image(out / job.file, image, record)
                new.append(record)
            append_manifest(out, new)
            bar.advance(len(batch))
    generated = sum(procs.gather([len(mine)]))
    procs.barrier()
    if procs.is_main:  # one sorted manifest, the same whatever the number of processes
        write_manifest(out, reconcile(out))
    procs.barrier()
    return SampleResult(
        out=out,
        prompts=prompts,
        files=[job.file for job in jobs],
        generated=generated,
        skipped=len(jobs) - len(todo),
        seconds=time.perf_counter() - started,
        identifier=identifier,
        model_id=settings["model_id"],
    )


def final_prompts(config: SampleConfig, identifier: str | None, tuned: bool) -> list[str]:
    """The prompts to sample: recontextualised if asked, `[V]` filled in, repeats dropped."""
    return list(prompt_plan(config, identifier, tuned))


def prompt_plan(config: SampleConfig, identifier: str | None, tuned: bool) -> dict[str, str]:
    """Each prompt to sample (as `final_prompts`) -> the text its images' seeds are derived
    from: its template without `[V]` (`without_identifier`), which is how `spurcli run` makes the
    untuned baseline's prompts, so a tuned prompt and its baseline share their seeds."""
    templates = with_recontext(config.prompts) if config.recontext else list(config.prompts)
    plan: dict[str, str] = {}
    for template, prompt in zip(
        templates, fill_identifier(templates, identifier, tuned), strict=True
    ):
        plan.setdefault(prompt, without_identifier(template))  # the first of repeats
    return plan


def image_seed(seed: int, prompt: str, index: int) -> int:
    """The seed of image ``index`` of ``prompt`` (the prompt without `[V]`) under ``--seed``."""
    return derive_seed(seed, prompt, index)


def check_seed_scheme(out: Path, records: dict[str, dict[str, Any]]) -> None:
    """A folder holding images seeded by another scheme is not continued: its old images and
    new ones would not be one sample (and pairs across folders would break)."""
    other = sorted({str(r.get("seed_scheme", "seed,index")) for r in records.values()})
    other = [scheme for scheme in other if scheme != SEED_SCHEME]
    if other:
        raise SpurcliError(
            f"{out} holds images seeded by ({other[0]}), not ({SEED_SCHEME}) as spurcli seeds "
            "them now; sample into a new --out folder or delete the old images"
        )


def count_missing(config: SampleConfig, identifier: str | None = None) -> int:
    """How many images of ``config`` are not in its output folder yet (loads no model)."""
    out = Path(config.out)
    records = read_manifest(out) if out.is_dir() else {}
    prompts = final_prompts(config, identifier, tuned=False)
    wanted = [file for _, _, file in planned_files(prompts, config.n, records)]
    return sum(1 for file in wanted if file not in records or not (out / file).is_file())


def planned_files(
    prompts: Sequence[str], n: int, records: dict[str, dict[str, Any]]
) -> list[tuple[str, int, str]]:
    """(prompt, index, file) of every image asked for, in prompt/index order; a prompt keeps the
    folder the manifest ``records`` already give it."""
    folders = prompt_folders(
        prompts, {r["file"].split("/")[0]: r["prompt"] for r in records.values()}
    )
    return [(p, i, f"{folders[p]}/{i:06d}.png") for p in prompts for i in range(n)]


def check_same(path: Path, record: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """A finished image must have been made with the settings asked for now."""
    if record is None:
        raise SpurcliError(
            f"{path} exists but is not a spurcli sample (no '{PNG_CHUNK}' PNG chunk); "
            "sample into an empty folder"
        )
    for key in IDENTITY:
        if key in expected and record.get(key) != expected[key]:
            raise SpurcliError(
                f"{path} was made with {key}={record.get(key)!r}, not {expected[key]!r}; sample "
                "into another --out folder or delete the old images"
            )


def save_image(path: Path, image: Any, record: dict[str, Any]) -> None:

    readable = {k: record[k] for k in ("prompt", "negative_prompt", "seed", "steps", "guidance")}
    readable.update(scheduler=record["scheduler"], model=record["model"])
    write_png(path, image, {**readable, PNG_CHUNK: json.dumps(record, sort_keys=True)})


class PromptCache:
    """Text embeddings per prompt, each encoded alone (so a batch's make-up cannot change it)."""

    def __init__(self, pipe: Any, guidance: float, negative_prompt: str) -> None:
        self.pipe = pipe
        self.cfg = guidance > 1.0  # diffusers' rule for classifier-free guidance
        self.negative_prompt = negative_prompt
        self.cache: dict[str, tuple[Any, Any]] = {}

    def __call__(self, prompt: str) -> tuple[Any, Any]:
        if prompt not in self.cache:
            import torch

            with torch.inference_mode():
                positive, negative = self.pipe.encode_prompt(
                    prompt, self.pipe.device, 1, self.cfg, self.negative_prompt
                )
            self.cache[prompt] = (positive, negative)
        return self.cache[prompt]


def generate_batch(
    pipe: Any, batch: Sequence[Job], size: int, embeddings: PromptCache, settings: dict[str, Any]
) -> list[Any]:
    """Images for ``batch``, run as a batch of exactly ``size`` (filled up, see the docstring)."""
    import numpy as np
    import torch

    rows = list(batch) + [batch[-1]] * (size - len(batch))
    positive = torch.cat([embeddings(job.prompt)[0] for job in rows])
    negative = torch.cat([embeddings(job.prompt)[1] for job in rows]) if embeddings.cfg else None
    # CPU generators: the initial noise of a seed is the same on every device.
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in rows]
    result = pipe(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance"],
        height=settings["height"],
        width=settings["width"],
        generator=generators,
        output_type="np",  # floats, checked before they become 8-bit (NaN would be black)
    )
    images = result.images[: len(batch)]
    if not np.isfinite(images).all():
        raise SpurcliError(
            f"sampling {batch[0].prompt!r} (seed {batch[0].seed}) gave NaN or infinite pixels "
            f"(guidance {settings['guidance']}, {settings['steps']} steps): nothing of this "
            "batch was saved; lower --guidance or check the model"
        )
    return pipe.numpy_to_pil(images)
