"""`spurcli run`'s finetune stage and `spurcli finetune RUN_CONFIG`: what they say and read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run import write_config

from spurcli.experiment import stages as stages_module
from spurcli.experiment.freshness import Stages
from spurcli.experiment.plan import load_experiment
from spurcli.fileio import write_json
from spurcli.images import sha256_file
from spurcli.records import FINETUNE_CARD
from spurcli.settings import to_dict


def test_an_interrupted_arm_is_said_to_resume_at_its_newest_checkpoint(tmp_path, monkeypatch):
    exp = load_experiment(write_config(tmp_path))
    cfg = exp.arms()["sfsl"]
    folder = Path(cfg.output_dir)  # type: ignore[arg-type]
    # What an interrupted run leaves: a "running" card (steps_done 0 until it finishes) and
    # its checkpoints.
    card = {
        "status": "running",
        "steps_done": 0,
        "config": json.loads(json.dumps(to_dict(cfg), default=str)),
        "references": [{"sha256": sha256_file(p)} for p in exp.split.train],
    }
    write_json(folder / FINETUNE_CARD, card)
    for step in (1, 48):
        write_json(folder / "checkpoints" / f"step-{step}" / "state.json", {"step": step})
    calls = []
    monkeypatch.setattr(stages_module, "finetune", calls.append)
    stages = Stages()
    stages_module.finetune_stage(exp, "sfsl", stages)
    assert len(calls) == 1 and calls[0].resume == "latest"
    assert stages.reasons["finetune"] == "resumed at step 48"


def test_an_interrupted_arm_without_checkpoints_is_said_to_restart(tmp_path, monkeypatch):
    exp = load_experiment(write_config(tmp_path))
    cfg = exp.arms()["sfsl"]
    card = {
        "status": "running",
        "steps_done": 0,
        "config": json.loads(json.dumps(to_dict(cfg), default=str)),
        "references": [{"sha256": sha256_file(p)} for p in exp.split.train],
    }
    write_json(Path(cfg.output_dir) / FINETUNE_CARD, card)  # type: ignore[arg-type]
    monkeypatch.setattr(stages_module, "finetune", lambda cfg: None)
    stages = Stages()
    stages_module.finetune_stage(exp, "sfsl", stages)
    assert stages.reasons["finetune"] == "restarted: no checkpoint"


pytestmark = pytest.mark.usefixtures("one_torch_thread")
