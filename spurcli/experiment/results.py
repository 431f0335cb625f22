"""What the stages wrote, read back: a set's per-image scores, the weights behind the numbers."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spurcli import imagenet
from spurcli.evaluate.imagepass import PerImage
from spurcli.experiment.plan import Experiment
from spurcli.generate.pipelines import model_identity, resolve_model
from spurcli.records import FINETUNE_CARD
from spurcli.text import csv_value


def read_json(path: Path) -> Any:
    """A JSON file's content, or None if it is missing or unreadable (or from an older spurcli)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The per-image rows of a score CSV, typed as `ScoreResult.rows` are."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    for row in rows:
        for key in ("image", "classifier", "top1_name"):
            row[key] = csv_value(row[key])
        row["top1_index"] = int(row["top1_index"])
        row["target_prob"] = float(row["target_prob"])
        row["target_rank"] = int(row["target_rank"])
    return rows


@dataclass
class SavedScores:
    """A set's per-image numbers read back from its score CSV, shaped as `compare.differences`
    takes a `ScoreResult` (the real images' from ``scores/real-images.csv``, when scored)."""

    target: Any  # ImageNetClass
    spurious: Any  # spurcli.evaluate.imagepass.PerImage
    real: Any  # spurcli.evaluate.imagepass.PerImage or None


def saved_scores(exp: Experiment, name: str) -> SavedScores:

    target = imagenet.resolve_class(exp.config.target)  # type: ignore[arg-type]
    rows = read_rows(exp.layout.score_rows(name))
    real_path = exp.layout.real_rows
    real = read_rows(real_path) if exp.compare.real and real_path.is_file() else None
    return SavedScores(
        target,
        PerImage.from_rows(rows, target.index),
        None if real is None else PerImage.from_rows(real, target.index),
    )


def weights_entry(model: Any) -> dict[str, Any]:
    return {"weights": model.weights, "weights_id": model.weights_id}


def model_identities(exp: Experiment) -> dict[str, Any]:
    """The exact weights behind a run's numbers (for the summary): the base model the arms were
    fine-tuned from, each arm's pipeline (content hashes) and SFSL extractor, the extractors."""

    arms = {}
    base = None
    for arm, cfg in exp.arms().items():
        card = read_json(Path(cfg.output_dir) / FINETUNE_CARD) or {}  # type: ignore[arg-type]
        base = base or card.get("model_id")
        arms[arm] = {
            "model_id": model_identity(resolve_model(cfg.output_dir)),  # type: ignore[arg-type]
            "sfsl_extractor": (card.get("extractor") or {}).get("weights_id"),
        }
    first = exp.comparisons()[0][0]  # a set every extractor saw
    extractors = {e: read_json(exp.layout.feature_weights(first, e)) for e in exp.feature_spaces()}
    return {"base": base, "arms": arms, "extractors": extractors}
