"""`spurcli run`'s finetune stage and `spurcli finetune RUN_CONFIG`: what they say and read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run import CONFIG, write_config

from spurcli.experiment import run as run_module
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


def _moved_references(tmp_path: Path) -> tuple[Path, Path]:
    """A run config whose instance_dir is missing (as hummingbird.toml's before the download)
    and the folder the references really are in."""
    path = write_config(tmp_path)
    moved = tmp_path / "elsewhere"
    (tmp_path / "refs").rename(moved)
    return path, moved


def test_instance_dir_option_wins_over_a_run_config_with_split_references(tmp_path):
    path, moved = _moved_references(tmp_path)
    cfg = run_module.finetune_config(path, (), {"instance_dir": moved})
    out = tmp_path / "out"
    assert cfg.instance_dir == out / "references" / "train"  # as `run` trains: on the split
    split = json.loads((out / "references" / "split.json").read_text())
    assert Path(split["source"]).resolve() == moved.resolve()
    trained = sorted(p.name for p in cfg.instance_dir.iterdir())
    assert len(trained) == 2 and set(trained) <= {p.name for p in moved.iterdir()}


def test_instance_dir_set_wins_over_a_run_config_with_split_references(tmp_path):
    path, moved = _moved_references(tmp_path)
    cfg = run_module.finetune_config(path, [f"instance_dir={moved}"])
    split = json.loads((tmp_path / "out" / "references" / "split.json").read_text())
    assert Path(split["source"]).resolve() == moved.resolve()
    assert len(list(cfg.instance_dir.iterdir())) == 2  # type: ignore[union-attr]


def test_every_finetune_option_wins_over_a_run_config(tmp_path):
    """Options shared with the top level (seed, noun, ...) win even over the finetune table."""
    text = CONFIG.replace("[finetune]\n", '[finetune]\nseed = 1\nidentifier = "xyz"\n')
    path = write_config(tmp_path, text)
    given = {
        "seed": 7,
        "identifier": "zwx",
        "class_noun": "bird feeder",
        "target": 95,
        "lr": 0.25,
        "steps": 3,
        "output_dir": tmp_path / "mine",
    }
    cfg = run_module.finetune_config(path, (), given)
    assert {k: getattr(cfg, k) for k in given} == given
    # the seed also drew the split, as `run --set seed=7` would (the file's seed 3 draws another)
    split = json.loads((tmp_path / "out" / "references" / "split.json").read_text())
    assert [r["file"] for r in split["train"]] == ["ref0.png", "ref2.png"]
    by_set = run_module.finetune_config(path, ["seed=8", "identifier=qqq"])
    assert (by_set.seed, by_set.identifier) == (8, "qqq")


def test_sfsl_settings_retrain_the_sfsl_arm_only(tmp_path):
    """Another SFSL target or extractor is another SFSL run, but the DreamBooth arm (weight 0)
    is the run it was: `run` keeps it rather than refusing or retraining it."""
    from spurcli.experiment.stages import _changed_settings

    exp = load_experiment(write_config(tmp_path))
    for arm, cfg in exp.arms().items():
        old = json.loads(json.dumps(to_dict(cfg), default=str))
        old.update(sfsl_target="nearest", extractor="another", sfsl_sample_steps=7)
        want = ["extractor", "sfsl_sample_steps", "sfsl_target"] if arm == "sfsl" else []
        assert _changed_settings(old, cfg) == want
        old["lr"] = 123.0  # a setting DreamBooth reads still counts
        assert "lr" in _changed_settings(old, cfg)


def test_an_sfsl_arm_trained_before_separate_clipping_counts_as_changed(tmp_path):
    from spurcli.experiment.stages import _changed_settings

    exp = load_experiment(write_config(tmp_path))
    arms = exp.arms()
    for arm, cfg in arms.items():
        old = json.loads(json.dumps(to_dict(cfg), default=str))
        old.pop("sfsl_grad_clip")  # a run card written before the option
        changed = _changed_settings(old, cfg)
        # SFSL's gradient was clipped with the rest then; DreamBooth alone has none to clip
        assert changed == (["sfsl_grad_clip"] if arm == "sfsl" else [])
