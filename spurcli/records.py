"""What a generated image records about how it was made, and where: the contract between the
generation side (`spurcli sample`, `spurcli finetune`) and everything that reads its outputs.

    from spurcli.records import sample_records
    sample_records("samples/", ["a-photo-of-sks-flower/000000.png"])  # [{"prompt", "seed", ...}]

- ``manifest.jsonl`` in a sample folder: one JSON record per image (file, prompt, seed, steps,
  guidance, scheduler, model, model_id), written by `spurcli sample`;
- the ``spurcli`` text chunk of each PNG it writes: the same record, so an image carries its
  own provenance when copied elsewhere;
- ``spurcli-run.json`` in a finetune folder: the run card (config, identifier, references with
  their hashes, versions, losses).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
PNG_CHUNK = "spurcli"  # the PNG text chunk holding the image's whole record as JSON
FINETUNE_CARD = "spurcli-run.json"  # written by `spurcli finetune` next to its `pipeline/` folder
PIPELINE_DIR = "pipeline"  # a finetune folder's diffusers pipeline (full weights)


def read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """file -> record; a torn last line (a kill mid-append) and repeated files are dropped."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[record["file"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s line %d is not a manifest record; dropped", path, number)
    return records


def png_record(path: Path) -> dict[str, Any] | None:
    """The record stored in a spurcli PNG's text chunk (None for other PNGs)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = img.text.get(PNG_CHUNK) if hasattr(img, "text") else None
    except (OSError, ValueError, Image.DecompressionBombError):  # the readers name the file
        return None
    return json.loads(text) if text else None


def sample_records(root: str | os.PathLike[str], names: Sequence[str]) -> list[dict | None]:
    """The `spurcli sample` record of each image (manifest line, else the PNG chunk), or None."""

    root = Path(root)
    base = root if root.is_dir() else root.parent
    manifest = read_manifest(base)
    records: list[dict | None] = []
    for name in names:
        record = manifest.get(name)
        if record is None and name.lower().endswith(".png"):
            try:
                record = png_record(base / name)
            except ValueError:  # a damaged chunk: not a record
                record = None
        ok = isinstance(record, dict) and "seed" in record and "prompt" in record
        records.append(record if ok else None)
    return records
