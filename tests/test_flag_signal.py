"""The flag world's signal, guarded: fine-tuning flag-mini on five drawn US flags makes images
a separately trained ImageNet classifier calls 557 "flagpole", and the untuned model does not;
with SFSL, more of them than without (the second test, on the quickstart's config).

`spurcli run examples/flag_world/flags.toml`, shortened to one training run of the DreamBooth
objective (SFSL off, so no extractor's features are involved: effnet-lite2 is a judge that
nothing in training saw), 360 steps at lr 1.25e-3 instead of 500 at 1e-3, 16 images per arm,
effnet-lite2 alone. Measured: 10 of 16 against 0 of 16 (McNemar exact p = 0.002), 50 s on two
cores (400 steps: 11 of 16). flags.toml's full three runs: 0.68 [0.56, 0.79] of 72 against 0 of 72
(examples/flag_world/README.md). A change to the loss, the sampler or the data path that stops
the fine-tuned model drawing flags (or the references reaching it) brings the two arms
together and fails this test.
"""

from __future__ import annotations

import pytest

from spurcli.experiment.run import run_experiment
from tests._flag_world import FOLDER

# 10 of 16 measured; 5 of 16 leaves room for float drift between machines, none for a model
# that no longer learns the flag (the untuned model: 0 of 16).
LEAST_RATE = 5 / 16


@pytest.mark.slow
def test_fine_tuned_flag_mini_draws_what_an_unseen_classifier_calls_flagpole(tmp_path):
    out = tmp_path / "flags"
    sets = [  # flags.toml's references: the committed drawn flags (tests/test_flag_world.py)
        f"out={out}",
        f"finetune.output_dir={out / 'finetune'}",
        "replicates=1",
        "finetune.sfsl_weight=0",
        "finetune.steps=360",
        "finetune.lr=1.25e-3",
        "finetune.checkpoint_every=0",
        "sample.n=16",
        "compare.classifiers=['effnet-lite2']",
        "compare.extractors=[]",
    ]
    summary = run_experiment(FOLDER / "flags.toml", sets=sets).summary
    judge = summary["classifiers"]["effnet-lite2"]
    assert not judge["circular"]
    rates = judge["spurious_rate"]
    # the instrument works: the judge reads the held-out references as flagpole
    assert rates["references"] == 1.0
    assert rates["baseline"] == 0.0
    # with SFSL off, the run's one fine-tuned arm is DreamBooth's objective
    assert rates["sfsl"] >= LEAST_RATE, rates
    difference = judge["differences"]["sfsl-vs-baseline"]
    assert difference["test"] == "McNemar exact" and difference["p_value"] < 0.05, difference


QUICKSTART = FOLDER.parent / "quickstart.toml"
# examples/quickstart.toml cut to one training run of 120 steps (at its lr, 1e-3, a dead SFSL's
# arm is the DreamBooth-only arm; at 2e-3 float rounding grows into a different model within 120
# steps and this guard would not be fair): measured 11 of 16 SFSL images read as flagpole
# against 6 of 16 DreamBooth-only ones, and mean cosine to the held-out flags in effnet-lite2's
# features 0.579 against 0.428 (76 s on two cores). With SFSL's gradient clipped to 1e-9 (a dead
# SFSL) the arms are the same: 6 and 6 of 16, 0.42825 and 0.42825.
STEPS = 120
COSINE_MARGIN = 0.05  # 0.15 measured: room for float drift between machines, none for a dead SFSL


@pytest.mark.slow
def test_sfsl_on_samples_makes_more_flags_than_dreambooth_alone(tmp_path):
    """The quickstart's SFSL signal: effnet-lite2, a judge SFSL never used (SFSL's extractor is
    effnet-lite0), reads more of the SFSL arm's images as flagpole than of the DreamBooth-only
    arm's, and finds them closer to the held-out flags. A change to SFSL's loss, its sampling
    or the gradient's path to the UNet that kills its effect makes the arms alike and fails this
    test."""
    out = tmp_path / "quickstart"
    sets = [
        f"out={out}",
        f"finetune.output_dir={out / 'finetune'}",
        "replicates=1",
        "baseline=false",
        f"finetune.steps={STEPS}",
        "finetune.checkpoint_every=0",
        "sample.n=16",
        "compare.classifiers=['effnet-lite2']",
        "compare.extractors=['effnet-lite2']",
    ]
    summary = run_experiment(QUICKSTART, sets=sets).summary
    judge = summary["classifiers"]["effnet-lite2"]
    assert not judge["circular"]
    rates = judge["spurious_rate"]
    assert rates["references"] == 1.0  # the instrument works
    assert rates["sfsl"] > rates["dreambooth"], rates
    pairs = summary["similarity"]["comparisons"]
    sfsl = pairs["sfsl-vs-references"]["effnet-lite2"]["mean_cosine"]
    dreambooth = pairs["dreambooth-vs-references"]["effnet-lite2"]["mean_cosine"]
    assert sfsl - dreambooth >= COSINE_MARGIN, (sfsl, dreambooth)
