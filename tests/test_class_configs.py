"""The documented GPU experiment, as shipped, through `spurcli run` on the tiny model.

Every `examples/classes/*.toml` is copied unchanged into a folder laid out like the repository
(its references where the download script puts them) and checked as `spurcli run` checks a config
before its first stage. The six share one recipe and differ only in the class, its feature and
prompts (a test says so), so one of them runs end to end, with only the model, the weights, the
sizes and the counts overridden: hub-only classifiers are swapped for offline ones of the same
kind. Everything else (fp16, checkpointing, SFSL on the robust ResNet-50, the DreamBooth-only arm,
held-out references, the circular victim) runs as a GPU user gets it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from spurcli.experiment.plan import load_experiment
from spurcli.experiment.run import check_experiment

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "examples" / "classes").glob("*.toml"))
# Hub-only victims -> offline ones (random weights); robust-resnet50 stays itself, random.
OFFLINE = {"resnet": "timm:test_resnet", "vit": "timm:test_vit", "clip": "effnet-lite0"}
RANDOM = ("timm:test_resnet", "timm:test_vit", "robust-resnet50")

# The keys in which the class configs may differ: the class, its feature, its folders, prompts.
PER_CLASS = {"out", "target", "class_noun", "instance_dir", "title", "notes", "prompts"}


def overrides(config: Path) -> list[str]:
    exp = load_experiment(config)
    victims = [OFFLINE.get(c, c) for c in exp.compare.classifiers]
    extractors = [OFFLINE.get(e, e) for e in exp.compare.extractors]
    toml_list = lambda items: "[" + ", ".join(f'"{i}"' for i in items) + "]"  # noqa: E731
    return [
        "model=tiny",
        "replicates=1",
        "finetune.resolution=32",
        "finetune.steps=1",
        "finetune.num_class_images=1",
        "finetune.class_inference_steps=1",
        "finetune.class_batch_size=1",
        "finetune.extractor_weights=random",
        "finetune.checkpoint_every=1",
        "finetune.validate_every=0",
        "sample.n=1",
        "sample.steps=1",
        "sample.batch_size=2",
        "sample.height=32",
        "sample.width=32",
        f"compare.classifiers={toml_list(victims)}",
        f"compare.weights={toml_list(f'{v}=random' for v in victims if v in RANDOM)}",
        f"compare.extractors={toml_list(extractors)}",
        f"compare.extractor_weights={toml_list(f'{e}=random' for e in extractors if e in RANDOM)}",
        "compare.batch_size=8",
        "compare.report_images=2",
    ]


def repository_copy(config: Path, root: Path) -> Path:
    """The config, byte for byte, where it lives in the repository, and 7 reference images
    where the download script would have put them (5 trained on, 2 held out)."""
    import skimage.data
    from PIL import Image

    copy = root / "examples" / "classes" / config.name
    copy.parent.mkdir(parents=True)
    shutil.copyfile(config, copy)
    refs = load_experiment(copy).config.instance_dir
    refs.mkdir(parents=True)
    # Seven different photos: overlapping crops of one would be near-duplicates, and the split
    # moves a held-out near-duplicate of a training image into training (references.py).
    names = ("coffee", "chelsea", "astronaut", "rocket", "camera", "moon", "immunohistochemistry")
    for i, name in enumerate(names):
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        photo.resize((40, 30)).save(refs / f"{i}.jpg")
    return copy


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_class_config_passes_every_check_before_the_first_stage(config, tmp_path):
    copy = repository_copy(config, tmp_path)
    assert copy.read_bytes() == config.read_bytes()
    exp = load_experiment(copy, overrides(copy))
    check_experiment(exp)  # the class, every model name, every table's settings
    assert len(exp.split.train) == exp.config.train_references == 5 and exp.split.held_out
    assert list(exp.arms()) == ["sfsl", "dreambooth"] and exp.circular() == ["robust-resnet50"]


def _recipe(config: Path) -> dict[str, object]:
    """A class config's settings, minus what names its class."""
    data = tomllib.loads(config.read_text(encoding="utf-8"))

    def strip(table: dict[str, object]) -> dict[str, object]:
        return {
            k: strip(v) if isinstance(v, dict) else v
            for k, v in table.items()
            if k not in PER_CLASS
        }

    return strip(data)


def test_class_configs_share_one_recipe():
    """What the one end-to-end run below covers holds for all six: only the class differs."""
    first = _recipe(CONFIGS[0])
    for config in CONFIGS[1:]:
        assert _recipe(config) == first, config.name


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_class_config_runs_end_to_end(tmp_path, cli_main):
    config = ROOT / "examples" / "classes" / "hummingbird.toml"
    copy = repository_copy(config, tmp_path)
    assert copy.read_bytes() == config.read_bytes()
    sets = [arg for item in overrides(copy) for arg in ("--set", item)]
    code, out, err = cli_main("-q", "run", str(copy), *sets, "--json")
    assert code == 0, err
    result = json.loads(out)
    exp = load_experiment(copy)
    assert result["references"]["judged_against"] == "held-out"
    assert len(result["references"]["train"]) == exp.config.train_references == 5
    assert set(result["arms"]) == {"sfsl", "dreambooth"}
    robust = result["classifiers"]["robust-resnet50"]
    assert robust["circular"] is True  # the SFSL extractor is also a victim
    assert "robust-resnet50" not in result["consensus"]["classifiers"]
    assert robust["differences"]["sfsl-vs-dreambooth"]["test"] == "McNemar exact"
    run_dir = exp.out
    assert (run_dir / "report.html").is_file()
    card = json.loads((run_dir / "finetune" / "spurcli-run.json").read_text())
    assert card["config"]["mixed_precision"] == "fp16" and card["config"]["gradient_checkpointing"]


def test_finetune_reads_a_class_config_as_run_does(tmp_path, cli_main):
    """`spurcli finetune CONFIG` on a run config: out/finetune, on the training references."""
    copy = repository_copy(CONFIGS[0], tmp_path)
    sets = [f"--set={s.removeprefix('finetune.')}" for s in overrides(copy)]
    # finetune takes its own table's keys; the run's own keys (replicates) are run's business
    sets = [s for s in sets if not re.match(r"--set=(sample\.|compare\.|replicates=)", s)]
    code, _, err = cli_main("-q", "finetune", str(copy), *sets)
    assert code == 0, err
    exp = load_experiment(copy)
    card = json.loads((exp.out / "finetune" / "spurcli-run.json").read_text())
    assert (
        len(card["references"]) == 5 and card["config"]["sfsl_weight"] == exp.finetune.sfsl_weight
    )


def test_install_lines_are_the_tested_environment():
    """Every install line a user copies (README, the paper guide) names every plugin the test
    environment installs."""
    makefile = (ROOT / "Makefile").read_text()
    plugins = re.search(r"^PLUGINS := (.*)$", makefile, re.M).group(1).split()  # type: ignore[union-attr]
    for doc in ("README.md", "docs/paper.md"):
        lines = [
            line for line in (ROOT / doc).read_text().splitlines() if "pip install -e ." in line
        ]
        assert lines, f"{doc} has no 'pip install -e .' line"
        for line in lines:
            assert sorted(re.findall(r"plugins/[\w-]+", line)) == sorted(plugins), (doc, line)
