"""Builds spurcli/data/imagenet21k_index.tsv, the 1k -> 21k column map, from timm's wnid lists.

    pip install timm                               # any timm >= 0.9 ships the two lists
    python examples/make_in21k_index.py            # rewrites spurcli/data/imagenet21k_index.tsv
    python examples/make_in21k_index.py --check    # exit 1 if the committed file differs
    python examples/make_in21k_index.py --info-dir DIR   # lists from a folder instead of timm

Row i of the table is ImageNet-1k class i in spurcli's order (spurcli/data/imagenet_classes.tsv,
the sorted WordNet ids, which is torchvision's ImageNet order and the one the released Spurious
ImageNet code indexes by); ``head_21843`` / ``head_21841`` are the line numbers (0-based) of its
WordNet id in the head's class list, -1 where the list lacks it. The lists are

- 21843 outputs (Google's ImageNet-21k: BiT-M, ViT ``orig_in21k``, EfficientNetV2 ``in21k``):
  timm/data/_info/imagenet21k_goog_synsets.txt, byte-identical to the released code's
  utils/imagenet21k_wordnet_ids.txt;
- 21841 outputs (ImageNet fall11 / "22k": ConvNeXt ``fb_in22k``, BEiT, Swin ``in22k``):
  timm/data/_info/imagenet22k_synsets.txt, byte-identical to the released code's
  utils/imagenet21_wordnet_ids_non_google.txt.

The released code builds the same map at import time (``list.index`` of each 1k wnid in the
list; dataset/spurious_score.py, get_google_in1k_to_21k_map and get_in1k_to_21k_map). Neither
list holds n04399382 (teddy bear, class 850), which is not a Spurious ImageNet class.

timm is not imported (that would import torch): its files are read from its install folder.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ROOT / "spurcli" / "data" / "imagenet_classes.tsv"
OUT = ROOT / "spurcli" / "data" / "imagenet21k_index.tsv"
# head size -> timm's class list for it (what timm.data.ImageNetInfo picks for that size)
LISTS = {21843: "imagenet21k_goog_synsets.txt", 21841: "imagenet22k_synsets.txt"}


def timm_info_dir() -> Path:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("timm is not installed: pip install timm, or pass --info-dir")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def build_table(info_dir: Path) -> tuple[str, dict[int, int]]:
    """The TSV text, and per head size the number of 1k classes its list lacks."""
    with CLASSES.open(encoding="utf-8") as f:
        wnids = [row["wnid"] for row in csv.DictReader(f, delimiter="\t")]
    columns: dict[int, list[int]] = {}
    for n_outputs, name in LISTS.items():
        listed = (info_dir / name).read_text(encoding="utf-8").split()
        if len(listed) != n_outputs or len(set(listed)) != n_outputs:
            sys.exit(f"{info_dir / name}: expected {n_outputs} distinct wnids, got {len(listed)}")
        where = {wnid: i for i, wnid in enumerate(listed)}
        columns[n_outputs] = [where.get(wnid, -1) for wnid in wnids]
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(["index", "wnid", *(f"head_{n}" for n in LISTS)])
    for i, wnid in enumerate(wnids):
        writer.writerow([i, wnid, *(columns[n][i] for n in LISTS)])
    return out.getvalue(), {n: column.count(-1) for n, column in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--info-dir", type=Path, help="folder with timm's *_synsets.txt files")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    table, unmapped = build_table(args.info_dir or timm_info_dir())
    if args.check:
        same = OUT.read_text(encoding="utf-8") == table
        print(f"{OUT.relative_to(ROOT)}: {'up to date' if same else 'DIFFERS'}")
        sys.exit(0 if same else 1)
    OUT.write_text(table, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} (1000 rows; unmapped per head: {unmapped})")


if __name__ == "__main__":
    main()
