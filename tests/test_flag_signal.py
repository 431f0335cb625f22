"""The flag world's signal, guarded: fine-tuning flag-mini on five drawn US flags makes images
a separately trained ImageNet classifier calls 557 "flagpole", and the untuned model does not.

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
from tests._flag_world import FOLDER, script

# 10 of 16 measured; 5 of 16 leaves room for float drift between machines, none for a model
# that no longer learns the flag (the untuned model: 0 of 16).
LEAST_RATE = 5 / 16


@pytest.mark.slow
def test_fine_tuned_flag_mini_draws_what_an_unseen_classifier_calls_flagpole(tmp_path):
    out, references = tmp_path / "flags", tmp_path / "references"
    script("draw_flags").draw_references(references)  # as `draw_flags.py DIR` draws them
    sets = [
        f"instance_dir={references}",
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
