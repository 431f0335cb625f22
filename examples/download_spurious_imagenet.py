"""Download and unpack Spurious ImageNet (Neuhaus et al., ICCV 2023) for the class configs.

    python examples/download_spurious_imagenet.py                 # -> data/spurious_imagenet/
    python examples/download_spurious_imagenet.py --dest /data/sin --keep-zip

Source: the dataset's own download script, ``setup_download.sh`` in github.com/YanNeu/
spurious_imagenet, which fetches ``images_100_classes.zip`` from the University of Tübingen's
cloud (the URL below) into ``dataset/spurious_imagenet/`` and unzips it there; the official
loader then reads ``images/``: one folder per spurious feature, 75 images each, whose name's
third ``_``-separated token is the ImageNet class index (and whose last token is the feature's
neural-PCA component).

After unpacking, this script adds ``by_class/<index>/``: links to the images of every feature
folder of that class, which is what ``instance_dir`` in examples/classes/*.toml points at. The
unpacked ``images/`` folder is also what `spurcli score --layout spurious-imagenet` reads.

Standard library only; needs internet access. Please respect the dataset's terms of use (see the
repository's README and LICENSE).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

URL = (  # as in the dataset repository's setup_download.sh
    "https://nc.mlcloud.uni-tuebingen.de/index.php/s/xBtTG9jnACJDxSg/download/"
    "images_100_classes.zip"
)
ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def download(url: str, target: Path) -> None:
    """``url`` to ``target`` with a progress line; a partial download never has the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0)
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=target.parent)
        done = 0
        with os.fdopen(fd, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                share = f" ({100 * done / total:.0f}%)" if total else ""
                print(f"\r{target.name}: {done / 2**20:.0f} MiB{share}", end="", file=sys.stderr)
    print(file=sys.stderr)
    os.replace(tmp, target)


def class_folders(root: Path) -> dict[int, list[Path]]:
    """ImageNet index -> feature folders, from the first folder below ``root`` that holds them."""
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        found: dict[int, list[Path]] = {}
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            tokens = sub.name.split("_")
            if len(tokens) >= 3 and tokens[2].isdigit():
                found.setdefault(int(tokens[2]), []).append(sub)
        if found:
            return found
    raise SystemExit(f"no Spurious ImageNet class folders (name_x_<index>_...) found in {root}")


def link_by_class(folders: dict[int, list[Path]], by_class: Path) -> int:
    """by_class/<index>/<feature folder>__<file>: symlinks (copies where links are not allowed)."""
    count = 0
    for index, subs in folders.items():
        target = by_class / str(index)
        target.mkdir(parents=True, exist_ok=True)
        for sub in subs:
            for image in sorted(sub.iterdir()):
                if image.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                link = target / f"{sub.name}__{image.name}"
                if link.exists() or link.is_symlink():
                    continue
                try:
                    link.symlink_to(image.resolve())
                except OSError:
                    shutil.copy2(image, link)
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / "data" / "spurious_imagenet")
    parser.add_argument("--url", default=URL, help="where images_100_classes.zip is served")
    parser.add_argument("--keep-zip", action="store_true", help="keep the zip after unpacking")
    args = parser.parse_args()

    dest: Path = args.dest
    archive = dest / "images_100_classes.zip"
    if not any(dest.glob("**/timestamp.txt")) and not (dest / "images").is_dir():
        if not archive.is_file():
            print(f"downloading {args.url}", file=sys.stderr)
            download(args.url, archive)
        print(f"unpacking {archive}", file=sys.stderr)
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():  # refuse paths that would land outside dest
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise SystemExit(f"{archive}: unsafe path in the archive: {member}")
            zf.extractall(dest)
        if not args.keep_zip:
            archive.unlink()
    folders = class_folders(dest)
    made = link_by_class(folders, dest / "by_class")
    images = sum(len(list(p.iterdir())) for p in (dest / "by_class").iterdir())
    print(
        f"{len(folders)} classes, {images} images in {dest / 'by_class'} ({made} new links); "
        f"e.g. instance_dir = {dest / 'by_class' / '94'} (hummingbird: red feeder/flower)"
    )


if __name__ == "__main__":
    main()
