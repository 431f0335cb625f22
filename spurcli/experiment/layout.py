"""Where everything of an experiment lives: every path of the experiment folder, in one place.

    out/
      references/{train,held-out}/, references/split.json   the references, split by the seed
      class-images/                   prior images of the frozen model, shared by both arms
      finetune/, finetune-dreambooth/ the arms ([finetune] output_dir may move them)
      samples/<set>/                  sfsl, dreambooth, baseline and their -recontext sets
      scores/<set>.json, .csv         per set; scores/real-images.csv with real images
      presence/<set>.json             the object detector's score per image (with a detector)
      features/<set>/<extractor>.npz  (+ .weights.json: which weights made them)
      compare/<a>-vs-<b>.json
      curated/, curated.json          with a [curate] table
      summary.json, report.html

Every file a stage writes may have a settings stamp beside it (`spurcli.experiment.freshness`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REFERENCES = "references"  # the held-out references (all of them when none could be held out)
TRAIN_REFERENCES = "references-train"  # the references the arms were trained on


@dataclass(frozen=True)
class Layout:
    """The paths of the experiment folder ``out``."""

    out: Path

    def references(self, part: str) -> Path:
        """``part``: "train" or "held-out"."""
        return self.out / "references" / part

    @property
    def split_record(self) -> Path:
        return self.out / "references" / "split.json"

    @property
    def class_images(self) -> Path:
        return self.out / "class-images"

    @property
    def finetune(self) -> Path:
        return self.out / "finetune"

    def set_dir(self, name: str, held_out: bool = True) -> Path:
        """The folder of an image set: a sample set, or one of the two reference sets
        (``held_out``: some references were held out, else "references" are those trained on)."""
        if name == REFERENCES:
            return self.references("held-out" if held_out else "train")
        if name == TRAIN_REFERENCES:
            return self.references("train")
        return self.out / "samples" / name

    def scores(self, name: str) -> Path:
        return self.out / "scores" / f"{name}.json"

    def score_rows(self, name: str) -> Path:
        return self.out / "scores" / f"{name}.csv"

    def presence(self, name: str) -> Path:
        """The object detector's presence score of every image of a set (with a detector)."""
        return self.out / "presence" / f"{name}.json"

    @property
    def real_rows(self) -> Path:
        return self.out / "scores" / "real-images.csv"

    def features(self, name: str, extractor: str) -> Path:
        return self.out / "features" / name / f"{_slug(extractor)}.npz"

    def feature_weights(self, name: str, extractor: str) -> Path:
        """Next to the features: which weights made them (compare JSON and the summary show it)."""
        return self.features(name, extractor).with_suffix(".weights.json")

    def comparison(self, a: str, b: str) -> Path:
        return self.out / "compare" / f"{a}-vs-{b}.json"

    @property
    def curated(self) -> Path:
        return self.out / "curated"

    @property
    def curated_record(self) -> Path:
        return self.out / "curated.json"

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
