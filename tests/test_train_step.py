"""`train_step` on its own: a `Training` built by finetune's first stages, no run around it.

The whole-run tests (tests/test_finetune.py, tests/test_reliability.py) show the same guards end
to end; these pin down what one step does and what it leaves behind when it refuses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from _finetune_helpers import fast_config, make_refs

from spurcli.errors import SpurcliError
from spurcli.generate.config import FinetuneConfig
from spurcli.generate.finetune import (
    Training,
    load_training_models,
    make_accelerator,
    prepare_training,
    read_inputs,
)
from spurcli.generate.training import LOSS_KEYS, train_step


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Path:
    return make_refs(tmp_path_factory.mktemp("refs"))


def training_for(cfg: FinetuneConfig) -> Training:
    """A `Training` at step 0, as `_finetune` builds it (without prior images and SFSL, which
    need a class folder and an extractor plugin: not what these tests are about)."""
    cfg.check()
    out = Path(cfg.output_dir)  # type: ignore[arg-type]
    accelerator = make_accelerator(cfg)
    models = load_training_models(cfg, out, accelerator)
    return prepare_training(cfg, out, accelerator, read_inputs(cfg), models, [], {})


def step_config(refs: Path, tmp_path: Path, **changes: Any) -> FinetuneConfig:
    return fast_config(refs, tmp_path / "run", prior_weight=0.0, sfsl_weight=0.0, **changes)


def unet_weights(training: Training) -> dict[str, torch.Tensor]:
    unet = training.accelerator.unwrap_model(training.unet)
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_a_step_updates_the_weights_and_reports_its_losses(refs, tmp_path):
    training = training_for(step_config(refs, tmp_path, log_grad_norms_every=2))
    before = unet_weights(training)
    first = train_step(training)
    assert training.step == 1 and training.last_losses == first.losses
    assert set(first.losses) == set(LOSS_KEYS) and all(map(math.isfinite, first.losses.values()))
    assert first.losses["loss_prior"] == first.losses["loss_sfsl"] == 0.0  # both terms off
    assert first.lr == training.cfg.lr and first.grad_norms == {}  # norms only every 2nd step
    after = unet_weights(training)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    second = train_step(training)
    assert training.step == 2
    assert {"grad_norm_instance", "grad_norm_prior", "grad_norm_sfsl"} <= set(second.grad_norms)
    assert list(second.entry())[: len(LOSS_KEYS) + 1] == [*LOSS_KEYS, "lr"]  # log.jsonl's order


def test_a_non_finite_loss_stops_before_the_update(refs, tmp_path):
    training = training_for(step_config(refs, tmp_path))
    unet = training.accelerator.unwrap_model(training.unet)
    with torch.no_grad():
        next(unet.parameters()).view(-1)[0] = float("nan")  # every prediction, so the loss, NaN
    before = unet_weights(training)
    with pytest.raises(SpurcliError, match="loss became non-finite at step 1") as info:
        train_step(training)
    assert "without updating the weights; last good checkpoint: none" in str(info.value)
    assert training.step == 0 and training.last_losses == {}
    after = unet_weights(training)
    assert all(torch.allclose(before[k], after[k], 0, 0, equal_nan=True) for k in before)
    assert not training.optimizer.state  # AdamW never stepped: no moments were made


def test_non_finite_weights_after_the_update_stop_the_step(refs, tmp_path):
    # 1e38 is finite and passes every check; one AdamW update takes the weights past fp32.
    training = training_for(step_config(refs, tmp_path, lr=1e38, max_grad_norm=0.0))
    with pytest.raises(SpurcliError, match="non-finite in the update of step 1") as info:
        train_step(training)
    assert "last good checkpoint: none" in str(info.value)
    assert training.step == 0 and training.last_losses == {}


def test_paired_sfsl_pulls_each_sample_towards_the_features_of_its_own_crop(
    refs, tmp_path, monkeypatch
):
    """Random crops of non-square references: the paired target is the crop that was noised,
    not the reference's centre crop."""
    from spurcli.generate import losses

    cfg = fast_config(refs, tmp_path / "run", prior_weight=0.0, sfsl_weight=0.5)
    training = training_for(cfg)
    data = training.data
    centre = {i: data._crop(img, None) for i, img in enumerate(data.sets["instance"])}
    step = next(
        s for s in range(50) if data.batch(s).keys[0][2:] != centre[data.batch(s).keys[0][1]]
    )
    batch = data.batch(step)
    targets = []
    real = losses.feature_distance
    monkeypatch.setattr(
        losses, "feature_distance", lambda f, ref, d: targets.append(ref) or real(f, ref, d)
    )
    training.step = step
    train_step(training)
    extractor = training.sfsl.extractor  # type: ignore[union-attr]
    with torch.no_grad():
        own_crop = extractor((batch.images[0][None] + 1) / 2).float()
    index = batch.keys[0][1]
    assert not torch.allclose(own_crop, training.sfsl.reference[index][None])  # type: ignore[union-attr]
    torch.testing.assert_close(targets[0], own_crop)


def with_grad_scaler(training: Training, init_scale: float = 2.0**8) -> Any:
    """fp16's gradient scaler on a CPU run (accelerate makes none without CUDA): the same
    torch GradScaler, wired in as accelerate wires it (scaled backward, scaler.step)."""
    from accelerate.optimizer import AcceleratedOptimizer

    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    training.accelerator.scaler = scaler
    inner = training.optimizer.optimizer
    training.optimizer = AcceleratedOptimizer(inner, device_placement=False, scaler=scaler)
    return scaler


def overflow_on(steps: set[int], monkeypatch: Any) -> None:
    """The loss of the given (1-based) steps is infinite, as an fp16 overflow makes it."""
    from spurcli.generate import training as training_module

    real = training_module.step_losses
    calls = []

    def step_losses(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        losses = real(*args, **kwargs)
        if len(calls) in steps:
            losses.total = losses.total * float("inf")
        return losses

    monkeypatch.setattr(training_module, "step_losses", step_losses)


def test_a_gradient_scaler_skips_a_non_finite_step_and_the_run_goes_on(refs, tmp_path, monkeypatch):
    from spurcli.generate.training import LOG_FILE, log_summary, train

    training = training_for(step_config(refs, tmp_path, steps=3, checkpoint_every=0))
    scaler = with_grad_scaler(training)
    overflow_on({2}, monkeypatch)
    (tmp_path / "run").mkdir()
    before = {}

    def on_step(step: int) -> None:
        before[step] = unet_weights(training)

    train(training, on_step)
    assert training.step == 3 and training.consecutive_skips == 0
    assert all(torch.equal(before[1][k], before[2][k]) for k in before[1])  # step 2: no update
    assert any(not torch.equal(before[2][k], before[3][k]) for k in before[2])  # step 3: one
    assert scaler.get_scale() == 2.0**7  # halved once, by the skip
    log = [json.loads(line) for line in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    assert [e.get("skipped") for e in log] == [None, 1, None]
    assert log[1]["loss"] is None and math.isfinite(log[1]["loss_instance"])
    assert log_summary(tmp_path / "run" / LOG_FILE)["skipped_steps"] == 1
    assert math.isfinite(training.last_losses["loss"])  # the run card's final losses


def test_too_many_skips_in_a_row_stop_the_run(refs, tmp_path, monkeypatch):
    from spurcli.generate.training import MAX_CONSECUTIVE_SKIPS

    training = training_for(step_config(refs, tmp_path))
    with_grad_scaler(training)
    overflow_on(set(range(1, 100)), monkeypatch)
    for _ in range(MAX_CONSECUTIVE_SKIPS - 1):
        assert train_step(training).skipped
    with pytest.raises(SpurcliError, match=f"skipped {MAX_CONSECUTIVE_SKIPS} steps in a row"):
        train_step(training)


def gradient_at_update(training: Training) -> tuple[Any, list[torch.Tensor]]:
    """One step; the gradient the optimizer applied (after clipping)."""
    seen: list[torch.Tensor] = []
    real = training.optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        seen.extend(p.grad.detach().clone() for p in training.params)
        return real(*args, **kwargs)

    training.optimizer.step = step  # type: ignore[method-assign]
    return train_step(training), seen


def test_each_step_records_how_much_clipping_scaled_the_update(refs, tmp_path):
    # sfsl_grad_clip 0: --max-grad-norm clips the whole update (the separate SFSL clip: below)
    cfg = fast_config(
        refs, tmp_path / "run", prior_weight=0.0, max_grad_norm=1e-3, sfsl_grad_clip=0
    )
    result, applied = gradient_at_update(training_for(cfg))
    clip = result.clipping
    assert clip["clip_norm"] > 1e-3 and clip["clip_scale"] == pytest.approx(
        1e-3 / clip["clip_norm"]
    )
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in applied])) == pytest.approx(
        1e-3, rel=1e-3
    )
    assert {"clip_norm", "clip_scale"} <= set(result.entry())  # log.jsonl, every step
    unclipped = fast_config(
        refs, tmp_path / "free", prior_weight=0.0, max_grad_norm=100.0, sfsl_grad_clip=0
    )
    assert train_step(training_for(unclipped)).clipping["clip_scale"] == 1.0


def test_separate_sfsl_clip_leaves_the_dreambooth_terms_step_as_without_sfsl(refs, tmp_path):
    """--sfsl-grad-clip: --max-grad-norm clips the DreamBooth terms' gradient exactly as in the
    DreamBooth-only arm, and SFSL's gradient, clipped on its own, is added to it."""
    common = dict(prior_weight=0.0, max_grad_norm=0.5)
    dreambooth = fast_config(refs, tmp_path / "db", sfsl_weight=0.0, **common)
    db_log, db_grad = gradient_at_update(training_for(dreambooth))
    sfsl = fast_config(refs, tmp_path / "sfsl", sfsl_weight=0.5, sfsl_grad_clip=0.01, **common)
    log, grad = gradient_at_update(training_for(sfsl))
    assert log.clipping["clip_norm"] == pytest.approx(db_log.clipping["clip_norm"], rel=1e-5)
    assert log.clipping["clip_scale"] == pytest.approx(db_log.clipping["clip_scale"], rel=1e-5)
    assert log.clipping["sfsl_clip_norm"] > 0.01  # clipped: its norm becomes 0.01
    assert log.clipping["sfsl_clip_scale"] == pytest.approx(
        0.01 / log.clipping["sfsl_clip_norm"], rel=1e-3
    )
    added = torch.linalg.vector_norm(
        torch.stack([(g - d).norm() for g, d in zip(grad, db_grad, strict=True)])
    )
    assert float(added) == pytest.approx(0.01, rel=1e-3)
    # Clipped together (0), the sum's norm decides: the DreamBooth terms' step shrinks with SFSL.
    joint = fast_config(refs, tmp_path / "joint", sfsl_weight=0.5, sfsl_grad_clip=0.0, **common)
    joint_log, _ = gradient_at_update(training_for(joint))
    assert "sfsl_clip_norm" not in joint_log.clipping
    assert joint_log.clipping["clip_norm"] != pytest.approx(db_log.clipping["clip_norm"])
