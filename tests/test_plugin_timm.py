"""spurcli-timm: resnet, vit, timm:<name> classifiers and extractors; the shared preprocessing.

Offline: timm's tiny test_* architectures with random weights, weight files written here.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from spurcli import preprocess
from spurcli.errors import SpurcliError, UsageError
from spurcli.plugins import classifiers, extractors

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
spurcli_timm = pytest.importorskip("spurcli_timm")


def chelsea() -> np.ndarray:
    from skimage import data

    return data.chelsea()  # (300, 451, 3) uint8


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


def test_registered_names_and_labels():
    cls, ext = classifiers(), extractors()
    assert {"resnet", "vit", "timm:*"} <= set(cls.names())
    assert "timm:*" in ext.names()
    resnet, _ = cls.resolve("resnet")
    assert resnet.plugin == "spurcli-timm"
    assert resnet.default_weights == "hub:timm/resnet50.a1_in1k"
    assert cls.resolve("vit")[0].default_weights == (
        "hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    )
    entry, variant = cls.resolve("timm:resnet18.a1_in1k")
    assert (entry.name, variant) == ("timm:*", "resnet18.a1_in1k")


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_any_image_size_gives_imagenet_logits(arch):
    loaded = classifiers().load(f"timm:{arch}", "random")
    assert loaded.weights == "random" and loaded.is_random
    model = loaded.module
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        for shape in [(2, 3, 37, 53), (1, 3, 300, 200), (1, 3, 160, 160)]:
            out = model(torch.rand(*shape))
            assert out.shape == (shape[0], 1000)
            assert torch.isfinite(out).all()


def test_wrong_image_shape_is_a_clear_error():
    model = classifiers().load("timm:test_resnet", "random").module
    with pytest.raises(SpurcliError, match=r"\(B, 3, H, W\).*\(3, 32, 32\)"):
        model(torch.rand(3, 32, 32))


def test_random_weights_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = classifiers().load("timm:test_resnet", "random").module
    assert torch.equal(torch.rand(3), expected_next)  # seeded init did not consume our RNG
    b = classifiers().load("timm:test_resnet", "random").module
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "arch, dim", [("test_resnet", 96), ("test_vit", 64), ("test_efficientnet", 256)]
)
def test_extractor_returns_pre_logits_features(arch, dim):
    extractor = extractors().load(f"timm:{arch}", "random").module
    assert extractor.dim == dim
    classifier = classifiers().load(f"timm:{arch}", "random").module
    x = torch.rand(2, 3, 45, 70)
    with torch.no_grad():
        features = extractor(x)
        assert features.shape == (2, dim)
        # Same seeded weights: the classifier's last layer applied to the features gives its logits.
        head = classifier.net.get_classifier()
        torch.testing.assert_close(head(features), classifier(x), rtol=1e-4, atol=1e-4)


def test_extractor_is_differentiable_through_the_preprocessing():
    """SFSL backpropagates through the extractor, its resize and its normalisation."""
    extractor = extractors().load("timm:test_resnet", "random").module
    x = torch.rand(1, 3, 64, 48, requires_grad=True)
    extractor(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "resnet50.a1_in1k"])
@pytest.mark.parametrize("crop", [(slice(None), slice(None)), (slice(0, 200), slice(0, 300))])
def test_preprocessing_matches_timm_eval_transform(arch, crop):
    """The torch resize + centre crop + normalise agrees with timm's PIL transform."""
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(timm.create_model(arch, pretrained=False))
    image = np.ascontiguousarray(chelsea()[crop])
    expected = create_transform(**cfg)(Image.fromarray(image))[None]
    got = preprocess.preprocessed(torch.nn.Identity(), **cfg)(as_batch(image))
    assert got.shape == expected.shape
    # PIL works on 8-bit pixels: a difference of about 1/255 is quantisation; a one-pixel shift
    # of the crop or the wrong scale would be ten times larger.
    assert (got - expected).abs().mean() < 0.01
    assert (got - expected).abs().max() < 0.05


@pytest.mark.parametrize(
    "size, crop_mode, expected_content",
    [
        ((20, 20), "center", (20, 20)),  # shorter side to 20, centre crop: no padding
        ((20, 20), "squash", (20, 20)),  # stretched to the box
        ((20, 20), "border", (10, 20)),  # 40x80 fits as 10x20 and is padded with black
    ],
)
def test_crop_modes(size, crop_mode, expected_content):
    pre = preprocess.preprocessed(
        torch.nn.Identity(), input_size=size, mean=(0, 0, 0), std=(1, 1, 1), crop_mode=crop_mode
    )
    out = pre(torch.ones(1, 3, 40, 80))
    assert out.shape == (1, 3, *size)
    content = (out[0, 0] > 0.5).nonzero()
    rows = int(content[:, 0].max() - content[:, 0].min() + 1)
    cols = int(content[:, 1].max() - content[:, 1].min() + 1)
    assert (rows, cols) == expected_content


def test_resnet_and_vit_are_the_named_timm_models():
    resnet = classifiers().load("resnet", "random").module
    vit = classifiers().load("vit", "random").module
    assert resnet.net.pretrained_cfg["architecture"] == "resnet50"
    assert resnet.net.pretrained_cfg["tag"] == "a1_in1k"
    assert vit.net.pretrained_cfg["architecture"] == "vit_base_patch16_224"
    assert vit.net.pretrained_cfg["tag"] == "augreg2_in21k_ft_in1k"
    assert sum(p.numel() for p in resnet.parameters()) == 25_557_032
    # the model's own eval settings: bicubic, crop 0.95 (resnet) / 0.9 and mean 0.5 (vit)
    assert resnet.preprocess.crop_pct == 0.95 and resnet.preprocess.mode == "bicubic"
    assert vit.preprocess.crop_pct == 0.9
    assert vit.preprocess.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    with torch.no_grad():
        assert resnet(torch.rand(1, 3, 50, 60)).shape == (1, 1000)


def _perturbed_test_resnet() -> torch.nn.Module:
    """test_resnet with weights that differ from the seeded random init."""
    net = timm.create_model("test_resnet", pretrained=False).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt-module-prefix", "pt-checkpoint"])
def test_local_weights_round_trip(tmp_path, fmt):
    from safetensors.torch import save_file

    net = _perturbed_test_resnet()
    state = net.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "pt":
        torch.save(state, path)
    elif fmt == "pt-module-prefix":  # saved from DataParallel
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:  # a training checkpoint
        torch.save({"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)

    loaded = classifiers().load("timm:test_resnet", path)
    assert loaded.weights == str(path) and not loaded.is_random
    random = classifiers().load("timm:test_resnet", "random").module
    x = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        expected = net(loaded.module.preprocess(x))
        torch.testing.assert_close(loaded.module(x), expected)
        assert not torch.allclose(random(x), expected)  # the file was really used
    extractor = extractors().load("timm:test_resnet", path).module
    with torch.no_grad():
        torch.testing.assert_close(net.fc(extractor(x)), expected, rtol=1e-4, atol=1e-4)


def test_weights_of_another_model_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(path))
    with pytest.raises(SpurcliError, match=r"vit\.safetensors does not hold weights of timm model"):
        classifiers().load("timm:test_resnet", path)


def _cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


@pytest.mark.parametrize(
    "name, repo",
    [("resnet", "timm/resnet50.a1_in1k"), ("timm:test_vit", "timm/test_vit.r160_in1k")],
)
def test_default_weights_offline_name_the_file_and_how_to_pass_it(name, repo):
    if _cached(repo, "model.safetensors"):
        pytest.skip(f"{repo} is in the local hub cache")
    start = time.monotonic()
    with pytest.raises(SpurcliError) as err:
        classifiers().load(name)
    assert time.monotonic() - start < 20  # offline fails fast, never waits on the network
    message = str(err.value)
    assert "\n" not in message
    assert "model.safetensors" in message and repo in message
    assert f"--weights {name}=PATH" in message and "offline" in message


def test_unknown_models_and_tags_are_usage_errors():
    with pytest.raises(UsageError, match="did you mean resnet50"):
        classifiers().load("timm:resnt50", "random")
    with pytest.raises(UsageError, match=r"'resnet50\.nope'.*tags of resnet50: resnet50\.a1_in1k"):
        classifiers().load("timm:resnet50.nope", "random")
    with pytest.raises(UsageError, match="unknown timm model"):
        extractors().load("timm:no_such_net", "random")


def test_an_imagenet_21k_head_classifies_and_any_other_head_is_refused():
    name = "timm:vit_tiny_patch16_224.augreg_in21k"  # ImageNet-21k head: 21843 classes
    model = classifiers().load(name, "random").module
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 21843)  # core maps it to the 1k classes
    assert extractors().load(name, "random").module.dim == 192
    # ImageNet-21k-P (11221 classes) has no ImageNet-1k columns the protocol knows.
    with pytest.raises(SpurcliError, match="predicts 11221 classes; a classifier needs 1000 or "):
        classifiers().load("timm:mixer_b16_224.miil_in21k", "random")


def test_timm_models_carry_the_size_the_protocol_evaluates_them_at():
    """resnet50.a1_in1k trains at 224 and is tested at 288: the released code feeds it 288."""
    resnet = classifiers().load("timm:resnet50.a1_in1k", "random").module
    assert resnet.preprocess.size == (224, 224) and resnet.test_size == 288
    assert classifiers().load("timm:test_resnet", "random").module.test_size == 160


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_preprocessing_runs_in_low_precision_on_cpu(dtype):
    # Mixed-precision SFSL casts the frozen extractor to bf16/fp16; CPU has no low-precision
    # antialiased resize, so the wrapper resizes in fp32 and hands the net the same dtype back.
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.dtype)
            return x

    pre = preprocess.preprocessed(
        Probe(), input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=0.875
    )
    images = torch.rand(2, 3, 40, 30)
    low = pre.to(dtype)(images.to(dtype))
    full = pre.float()(images)
    assert seen == [dtype, torch.float32]
    assert low.shape == full.shape == (2, 3, 16, 16)
    assert torch.allclose(low.float(), full, atol=0.1)


def test_preprocess_is_its_resize_and_crop_then_its_normalisation():
    """`score --preprocess` relies on the split: forward == normalise(resize_and_crop(x))."""
    pre = preprocess.Preprocess((24, 24), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), crop_pct=0.8)
    x = torch.rand(2, 3, 50, 40)
    cropped = pre.resize_and_crop(x)
    assert cropped.shape == (2, 3, 24, 24) and cropped.min() >= 0 and cropped.max() <= 1
    assert torch.equal(pre(x), pre.normalise(cropped))
    assert torch.allclose(pre.normalise(cropped)[:, 1], (cropped[:, 1] - 0.5) / 0.3)


def test_the_old_import_path_still_gives_the_core_wrapper():
    assert spurcli_timm.preprocessed is preprocess.preprocessed
    assert spurcli_timm.Preprocessed is preprocess.Preprocessed
    assert spurcli_timm.IMAGENET_EVAL["crop_pct"] == 0.875


def test_channels_last_is_a_cpu_memory_order_and_nothing_else():
    """`Preprocessed(channels_last=True)` hands the network a channels-last batch on a CPU, the
    default order on any other device (measured on CPUs only), and is off by default."""
    seen: list[torch.Tensor] = []

    class Record(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x

    pre = preprocess.Preprocess((8, 8), mean=(0.5,) * 3, std=(0.5,) * 3)
    fast = preprocess.Preprocessed(pre, Record(), channels_last=True)
    plain = preprocess.Preprocessed(pre, Record())
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(fast(x), plain(x))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert seen[1].is_contiguous()
    meta = torch.empty(2, 3, 8, 8, device="meta")
    assert fast.run_net(meta) is meta  # another device: handed over untouched
    assert "channels_last=True" in repr(fast) and "channels_last" not in repr(plain)
    assert preprocess.preprocessed(Record(), **spurcli_timm.IMAGENET_EVAL).channels_last is False
