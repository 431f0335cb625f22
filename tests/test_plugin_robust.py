"""spurcli-robust: MadryLab robustness checkpoints read directly into a torchvision ResNet-50.

The checkpoints are written here in the exact structure robustness saves (DataParallel-wrapped
AttackerModel under `model`, plus optimizer, schedule, epoch, amp and accuracy entries), in the
zip and the legacy torch.save formats; the weights are random but of the real shapes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import pytest

from spurcli.errors import SpurcliError
from spurcli.plugins import classifiers, extractors

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def robustness_checkpoint(state: dict) -> dict:
    """What robustness.train saves: `model` is the state dict of DataParallel(AttackerModel)."""
    model = {}
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        model[prefix + "new_mean"] = torch.tensor(MEAN).view(3, 1, 1)
        model[prefix + "new_std"] = torch.tensor(STD).view(3, 1, 1)
    for key, value in state.items():
        model["module.model." + key] = value
        model["module.attacker.model." + key] = value  # the attacker holds the same network
    return {
        "model": model,
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.zeros(3)}},
            "param_groups": [
                {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False, "params": [0]}
            ],
        },
        "schedule": None,
        "epoch": 90,
        "amp": None,
        "nat_prec1": torch.tensor(62.8),
        "adv_prec1": torch.tensor(30.1),
    }


@pytest.fixture(scope="session")
def robust_files(tmp_path_factory):
    """A ResNet-50 with non-default weights and its checkpoint in both torch.save formats."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50().eval()
    with torch.no_grad():  # move BatchNorm statistics away from their init so they matter
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("robust")
    checkpoint = robustness_checkpoint(net.state_dict())
    paths = {"zip": folder / "resnet50_l2_eps3.ckpt", "legacy": folder / "imagenet_l2_3_0.pt"}
    torch.save(checkpoint, paths["zip"])
    torch.save(checkpoint, paths["legacy"], _use_new_zipfile_serialization=False)
    # robustness's evaluation of a 256x256 image: centre 224 crop, its normalizer, the model.
    x = torch.rand(1, 3, 256, 256)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x[..., 16:240, 16:240] - mean) / std)
    return Robust(net, paths, x, expected)


class Robust(NamedTuple):
    net: torch.nn.Module  # the reference torchvision ResNet-50
    paths: dict[str, Path]  # its checkpoint in the zip and the legacy format
    x: torch.Tensor  # a 256x256 test image
    expected: torch.Tensor  # the reference logits for it


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_robustness_checkpoint_loads_weights_only_and_matches_torchvision(robust_files, fmt):
    path = robust_files.paths[fmt]
    with open(path, "rb") as f:  # really the format we meant to write
        assert (f.read(2) == b"PK") == (fmt == "zip")
    loaded = classifiers().load("robust-resnet50", path)
    assert loaded.plugin == "spurcli-robust" and loaded.weights == str(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(robust_files.x), robust_files.expected)
        assert loaded.module(torch.rand(1, 3, 37, 53)).shape == (1, 1000)


def test_extractor_is_the_2048d_pooled_features(robust_files):
    extractor = extractors().load("madry-l2-eps3", robust_files.paths["zip"]).module  # alias
    assert extractor.dim == 2048
    with torch.no_grad():
        features = extractor(robust_files.x)
        assert features.shape == (1, 2048)
        logits = robust_files.net.fc(features)
        torch.testing.assert_close(logits, robust_files.expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_resnet50_state_dict(tmp_path, robust_files, prefix):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    state = robust_files.net.state_dict()
    # no BatchNorm step counters (they do not change outputs; some saves lack them)
    save_file({prefix + k: v for k, v in state.items() if "num_batches" not in k}, str(path))
    model = classifiers().load("robust-resnet50", path).module
    with torch.no_grad():
        torch.testing.assert_close(model(robust_files.x), robust_files.expected)


def test_wrong_files_are_clear_errors_not_key_errors(tmp_path, robust_files):
    other = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(SpurcliError, match=r"resnet18\.pt does not hold ResNet-50 weights.*shape"):
        classifiers().load("robust-resnet50", other)

    state = dict(robust_files.net.state_dict())
    state["fc.weight"] = torch.zeros(10, 2048)
    del state["layer4.2.conv3.weight"]
    broken = tmp_path / "broken.ckpt"
    torch.save(robustness_checkpoint(state), broken)
    with pytest.raises(SpurcliError) as err:
        extractors().load("robust-resnet50", broken)
    message = str(err.value)
    assert "1 missing (layer4.2.conv3.weight)" in message
    assert "fc.weight (10, 2048) (needs (1000, 2048))" in message

    not_weights = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(SpurcliError, match=r"list\.pt"):
        classifiers().load("robust-resnet50", not_weights)


def test_random_weights():
    loaded = extractors().load("robust-resnet50", "random")
    assert loaded.is_random and loaded.module.dim == 2048


def test_default_weights_offline_name_the_hub_file_and_how_to_pass_it():
    from huggingface_hub import try_to_load_from_cache

    repo, filename = "madrylab/robust-imagenet-models", "resnet50_l2_eps3.ckpt"
    if isinstance(try_to_load_from_cache(repo, filename), str):
        pytest.skip("the robust checkpoint is in the local hub cache")
    entry, _ = classifiers().resolve("robust-resnet50")
    assert entry.default_weights == f"hub:{repo}/{filename}"
    start = time.monotonic()
    with pytest.raises(SpurcliError) as err:
        extractors().load("robust-resnet50")
    assert time.monotonic() - start < 20
    message = str(err.value)
    assert filename in message and repo in message
    assert "--weights robust-resnet50=PATH" in message
