"""Reading image folders, writing PNGs with metadata, and image grids: shared by every command.

    from spurcli.images import find_images, read_image, read_folder, write_png
    paths = find_images("refs/")               # recursive, sorted; error if missing or empty
    img = read_image(paths[0])                 # PIL RGB, EXIF orientation applied, 8 bit
    images, skipped = read_folder("refs/")     # small folders: decode all, skip (warn) corrupt ones
    write_png("out/000001.png", img, {"prompt": "a photo of sks flower"})   # atomic, text chunks

Everything becomes 8-bit RGB: palette, grayscale, alpha (composited on white), CMYK and 16-bit
images included, so downstream code only ever sees one format.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from spurcli.errors import SpurcliError
from spurcli.fileio import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageReadError(SpurcliError):
    """An image file that cannot be decoded; the message names the file."""


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """All image files below ``root`` (recursive, sorted by path); hidden files are ignored.

    A file with another suffix is not an image to us (sidecar JSON, notes) and is passed over; a
    file with an image suffix that does not decode is reported later, by whoever reads it.
    """
    root = Path(root)
    if not root.exists():
        raise SpurcliError(f"image folder not found: {root}")
    if root.is_file():
        candidates = [root]
    else:
        candidates = [
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
    images = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SpurcliError(
            f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)"
        )
    return images


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow opens; transparency is composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale 0-65535 to 0-255 instead of letting convert() clip at 255.
        # A dark 16-bit image stays dark; only 32-bit "I" (no declared range) is guessed from
        # its values.
        import numpy as np

        arr = np.asarray(img, dtype=np.int64)
        scale = 257 if img.mode != "I" or arr.max(initial=0) > 255 else 1
        img = Image.fromarray((arr // scale).clip(0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        img = Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # a palette or colour-key transparency: composite it too
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode one image to RGB, or raise `ImageReadError` naming the file and the reason."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                raise ImageReadError(f"{path}: empty image ({img.width}x{img.height})")
            return to_rgb(img)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({exc})") from None


def read_folder(
    root: str | os.PathLike[str], *, strict: bool = False
) -> tuple[list[tuple[Path, Image.Image]], list[str]]:
    """Decode every image below ``root``: (path, image) pairs and the skipped files' reasons.

    For folders small enough to hold in memory (reference images). A corrupt file is a warning
    and skipped, or an error with ``strict``; no usable image at all is an error.
    """
    images: list[tuple[Path, Image.Image]] = []
    skipped: list[str] = []
    for path in find_images(root):
        try:
            images.append((path, read_image(path)))
        except ImageReadError as exc:
            if strict:
                raise
            log.warning("skipped %s", exc)
            skipped.append(str(exc))
    if not images:
        raise SpurcliError(f"no readable images in {root} ({len(skipped)} unreadable)")
    return images, skipped


def to_tensor(img: Image.Image) -> Any:
    """(3,H,W) float32 tensor in [0, 1]."""
    import numpy as np
    import torch

    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(tensor: Any) -> Image.Image:
    """PIL image from a (3,H,W) tensor in [0, 1]."""
    arr = (tensor.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu()
    return Image.fromarray(arr.numpy())


def write_png(
    path: str | os.PathLike[str], image: Image.Image, metadata: dict[str, Any] | None = None
) -> None:
    """Save ``image`` as PNG with ``metadata`` in text chunks, atomically."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_grid(
    images: Sequence[Image.Image], *, columns: int | None = None, cell: int = 128
) -> Image.Image:
    """Square thumbnails of ``images`` in a grid, row-major, white background."""
    if not images:
        raise SpurcliError("no images to put in a grid")
    columns = columns or max(1, min(len(images), round(len(images) ** 0.5 + 0.49)))
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * cell), "white")
    for i, img in enumerate(images):
        thumb = ImageOps.fit(img.convert("RGB"), (cell, cell), Image.Resampling.BICUBIC)
        grid.paste(thumb, ((i % columns) * cell, (i // columns) * cell))
    return grid
