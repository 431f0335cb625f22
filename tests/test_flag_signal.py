"""The flag world's signal, guarded: fine-tuning flag-mini on five drawn US flags makes images
a separately trained ImageNet classifier calls 557 "flagpole", and the untuned model does not;
with SFSL, the samples move closer to the held-out flags in that classifier's features (the
second test, on the quickstart's config).

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
# examples/quickstart.toml cut to one training run of 120 steps. What SFSL does there is move the
# samples towards the held-out flags in effnet-lite2's features, a space it never used: mean
# cosine, SFSL - DreamBooth, +0.151 (one CPU), and on another +0.066, +0.155, +0.055, +0.056 over
# seeds 0-3 (seed 0 +0.091 once the networks took channels-last batches). Whether more of them are
# *read* as flagpole after 120 steps is a coin toss: SFSL / DreamBooth 11 / 6 of 16 on the first
# CPU, 4 / 6, 8 / 3, 0 / 3, 4 / 7 over seeds 0-3 on the second (9 / 6 for seed 0 with
# channels-last batches; float rounding in SFSL's gradient grows into another model within 120
# steps, so another CPU is another draw); the count-based lead takes the demo's 200 steps and two
# runs (docs/quickstart.md), so it is not asserted here. A dead SFSL (its gradient clipped to
# 1e-9) leaves the arms one model: 0.42825 and 0.42825 on the first CPU, 0.4285 and 0.4284 on the
# second (6 and 6 of 16 read on both): at lr 1e-3 rounding does not part them in 120 steps.
STEPS = 120
COSINE_MARGIN = 0.025  # half the smallest margin measured; a dead SFSL gives 0


@pytest.mark.slow
def test_sfsl_on_samples_pulls_them_towards_the_held_out_flags(tmp_path):
    """The quickstart's SFSL signal: in the features of effnet-lite2, a network SFSL never used
    (its extractor is effnet-lite0), the SFSL arm's samples are closer to the held-out flags
    than the DreamBooth-only arm's. A change to SFSL's loss, its sampling or the gradient's path
    to the UNet that kills its effect makes the two arms one model and fails this test."""
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
    assert judge["spurious_rate"]["references"] == 1.0  # the instrument works
    pairs = summary["similarity"]["comparisons"]
    sfsl = pairs["sfsl-vs-references"]["effnet-lite2"]["mean_cosine"]
    dreambooth = pairs["dreambooth-vs-references"]["effnet-lite2"]["mean_cosine"]
    assert sfsl - dreambooth >= COSINE_MARGIN, (sfsl, dreambooth)
