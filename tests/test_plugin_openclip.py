"""spurcli-openclip: zero-shot ImageNet classifiers, image embeddings, the cached zero-shot head.

Offline: a tiny open_clip architecture (one transformer layer per tower, width 32, but the real
tokenizer, 77-token context, 1000 classes and 80 templates) registered with
`open_clip.add_model_config`, random weights, and weight files written here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from spurcli.errors import SpurcliError, UsageError
from spurcli.plugins import classifiers, extractors

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
spurcli_openclip = pytest.importorskip("spurcli_openclip")

TINY = "spurcli-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@contextlib.contextmanager
def counting_text_encoder() -> Iterator[list[int]]:
    """Counts calls of open_clip's CLIP.encode_text (the expensive part of the head)."""
    calls = [0]
    original = open_clip.CLIP.encode_text

    def encode_text(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(open_clip.CLIP, "encode_text", encode_text)
        yield calls


class TinyClip(NamedTuple):
    loaded: Any  # LoadedModel of open_clip:<TINY> with random weights
    cache: Path  # the SPURCLI_CACHE it was loaded with
    first_calls: int  # text-encoder calls the first load made


@pytest.fixture(scope="session", autouse=True)
def tiny_arch(tmp_path_factory) -> str:
    """open_clip learns the tiny architecture from a config file, as it learns its own."""
    config = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    return TINY


@pytest.fixture(scope="session")
def tiny_clip(tiny_arch, tmp_path_factory) -> TinyClip:
    """The tiny zero-shot classifier, loaded once: this load computes and caches its head."""
    cache = tmp_path_factory.mktemp("spurcli_cache")
    # 100 calls of tiny matrix products: one thread is several times faster than two fighting
    # over two shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp, counting_text_encoder() as calls:
            mp.setenv("SPURCLI_CACHE", str(cache))
            loaded = classifiers().load(f"open_clip:{TINY}", "random")
    finally:
        torch.set_num_threads(threads)
    return TinyClip(loaded, cache, calls[0])


@pytest.fixture
def tiny(tiny_clip, monkeypatch) -> TinyClip:
    monkeypatch.setenv("SPURCLI_CACHE", str(tiny_clip.cache))
    return tiny_clip


def tiny_model() -> Any:
    """The open_clip model behind open_clip:<TINY> with random weights (same seeded values)."""
    _, model, _ = spurcli_openclip.create(TINY, "random", name="test")
    return model


def test_registered_names():
    clip, _ = classifiers().resolve("clip")
    assert clip.plugin == "spurcli-openclip"
    assert clip.default_weights == "hub:timm/vit_base_patch32_clip_224.openai"
    assert "open_clip:*" in classifiers().names() and "open_clip:*" in extractors().names()
    assert {"clip", "open_clip:*"} <= set(extractors().names())


def test_head_is_computed_once_then_read_from_the_cache(tiny):
    assert tiny.first_calls == 100  # 1000 classes x 80 templates, 10 classes per call
    files = list((tiny.cache / "clip-zeroshot").glob("*.safetensors"))
    assert len(files) == 1 and files[0].name.startswith(TINY)
    with counting_text_encoder() as calls:
        again = classifiers().load(f"open_clip:{TINY}", "random")
    assert calls[0] == 0
    torch.testing.assert_close(again.module.net.head, tiny.loaded.module.net.head)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(again.module(x), tiny.loaded.module(x))


def test_head_is_open_clips_zero_shot_classifier(tiny):
    """Same numbers as open_clip's own builder (names, 80 templates, averaging, normalising)."""
    model = tiny_model()
    tokenizer = open_clip.get_tokenizer(TINY)
    names = list(open_clip.IMAGENET_CLASSNAMES[:12])
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert len(templates) == 80
    ours = spurcli_openclip.compute_head(model, tokenizer, names, templates)
    theirs = open_clip.build_zero_shot_classifier(
        model, tokenizer, names, open_clip.OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=12
    ).T
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # and the cached 1000-class head starts with exactly these classes, in this order
    torch.testing.assert_close(tiny.loaded.module.net.head[:12], theirs, rtol=1e-4, atol=1e-5)
    assert tiny.loaded.module.net.head.shape == (1000, 32)


def test_text_encoding_cut_at_the_last_end_of_text_token_changes_nothing():
    model = tiny_model()
    tokenizer = open_clip.get_tokenizer(TINY)
    ids = tokenizer(
        ["a photo of a tench.", "itap of a goldfish.", "a " + "very " * 30 + "long one"]
    )
    assert int(ids.argmax(-1).max()) + 1 < 77  # the cut really happens
    with torch.no_grad():
        cut = spurcli_openclip.encode_text(model, ids)
        full = model.encode_text(ids, normalize=True)
    torch.testing.assert_close(cut, full, rtol=1e-4, atol=1e-5)
    assert model.positional_embedding.shape[0] == 77 and model.attn_mask.shape == (77, 77)


def test_logits_are_100_times_cosine_similarity(tiny):
    module = tiny.loaded.module
    for shape in [(2, 3, 37, 53), (1, 3, 300, 200)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            logits = module(x)
            image = torch.nn.functional.normalize(module.net.visual(module.preprocess(x)), dim=-1)
        assert logits.shape == (shape[0], 1000)
        torch.testing.assert_close(logits, 100 * image @ module.net.head.T)
        assert logits.abs().max() <= 100 + 1e-3


def test_cache_key_follows_text_weights_prompts_and_names_not_the_image_tower():
    model = tiny_model()
    names = list(open_clip.IMAGENET_CLASSNAMES)
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    key = spurcli_openclip.head_key(model, TINY, names, templates)
    assert spurcli_openclip.head_key(tiny_model(), TINY, names, templates) == key
    assert spurcli_openclip.head_key(model, TINY, names, templates[:79]) != key
    assert spurcli_openclip.head_key(model, TINY, names[::-1], templates) != key
    assert spurcli_openclip.head_key(model, "other-arch", names, templates) != key
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    assert spurcli_openclip.head_key(model, TINY, names, templates) == key
    with torch.no_grad():
        model.text_projection.add_(1e-3)
    assert spurcli_openclip.head_key(model, TINY, names, templates) != key


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_local_weights_file_round_trip_and_cache_by_text_weights(tiny, tmp_path, fmt):
    from safetensors.torch import save_file

    model = tiny_model()
    with torch.no_grad():
        model.visual.proj.mul_(-1.0)  # new image tower, same text tower
    state = model.state_dict()
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with counting_text_encoder() as calls:
        loaded = classifiers().load(f"open_clip:{TINY}", path)
    assert calls[0] == 0  # same text weights: the cached head is reused
    assert loaded.weights == str(path)
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), -tiny.loaded.module(x), rtol=1e-4, atol=1e-4)
        image = model.encode_image(loaded.module.preprocess(x), normalize=True)
        torch.testing.assert_close(extractors().load(f"open_clip:{TINY}", path).module(x), image)


def test_a_file_of_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "vit_b32.safetensors"
    from safetensors.torch import save_file

    save_file({"visual.proj": torch.zeros(768, 512)}, str(path))
    with pytest.raises(SpurcliError, match=rf"vit_b32\.safetensors does not hold open_clip {TINY}"):
        extractors().load(f"open_clip:{TINY}", path)


def test_extractors_return_unit_embeddings(tiny):
    tiny_extractor = extractors().load(f"open_clip:{TINY}", "random").module
    assert tiny_extractor.dim == 32
    with torch.no_grad():
        out = tiny_extractor(torch.rand(3, 3, 70, 20))
    assert out.shape == (3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    clip = extractors().load("clip", "random")
    assert clip.module.dim == 512 and clip.is_random
    # the `openai` tag's setup holds for a random stand-in too: QuickGELU, OpenAI mean/std
    assert type(clip.module.net.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert clip.module.preprocess.mean.flatten().tolist() == pytest.approx(
        [0.48145466, 0.4578275, 0.40821073]
    )
    with torch.no_grad():
        assert clip.module(torch.rand(1, 3, 50, 90)).shape == (1, 512)


def test_preprocessing_matches_open_clip_transform():
    from PIL import Image
    from skimage import data

    cfg = open_clip.get_model_preprocess_cfg(tiny_model())
    image = data.chelsea()
    expected = open_clip.image_transform(
        cfg["size"],
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        resize_mode=cfg["resize_mode"],
        interpolation=cfg["interpolation"],
    )(Image.fromarray(image))[None]
    module = extractors().load(f"open_clip:{TINY}", "random").module
    got = module.preprocess(
        torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None] / 255
    )
    assert got.shape == expected.shape == (1, 3, 32, 32)
    assert (got - expected).abs().mean() < 0.02  # 8-bit rounding in PIL; a shift is far larger


def test_default_weights_offline_name_the_file_and_how_to_pass_it():
    from huggingface_hub import try_to_load_from_cache

    repo = "timm/vit_base_patch32_clip_224.openai"
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            pytest.skip("the CLIP weights are in the local hub cache")
    start = time.monotonic()
    with pytest.raises(SpurcliError) as err:
        classifiers().load("clip")
    assert time.monotonic() - start < 20
    message = str(err.value)
    assert "open_clip_pytorch_model.bin" in message and repo in message
    assert "--weights clip=PATH" in message


def test_offline_detector_names_the_detector_weights_option():
    """Loaded as a detector, the hint is the option that curate actually takes."""
    from huggingface_hub import try_to_load_from_cache

    from spurcli.plugins import load_detectors

    repo = "timm/vit_base_patch32_clip_224.openai"
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            pytest.skip("the CLIP weights are in the local hub cache")
    with pytest.raises(SpurcliError) as err:
        load_detectors(["clip-presence"])
    assert "--detector-weights clip-presence=PATH" in str(err.value)
    assert "--weights clip-presence" not in str(err.value)


def test_bad_names_are_usage_errors():
    with pytest.raises(UsageError, match="did you mean ViT-B-32"):
        classifiers().load("open_clip:ViT-B-33/openai")
    with pytest.raises(UsageError, match="no pretrained tag 'nope'; tags: openai"):
        extractors().load("open_clip:ViT-B-32/nope")
    with pytest.raises(UsageError, match="needs a pretrained tag"):
        extractors().load("open_clip:ViT-B-32")


# --- clip-presence: the zero-shot detector of the class object ---------------------------------


def test_presence_detectors_are_registered():
    from spurcli.plugins import detectors

    entry, _ = detectors().resolve("clip-presence")
    assert entry.plugin == "spurcli-openclip"
    assert entry.default_weights == "hub:timm/vit_base_patch32_clip_224.openai"
    assert "clip-presence:*" in detectors().names("clip*")


def test_presence_prompts_come_from_the_class_names_and_feature():
    from spurcli import imagenet
    from spurcli.evaluate.detect import object_query

    query = object_query(imagenet.resolve_class(2), ["a shark fin"], feature="ocean")
    prompts = spurcli_openclip.presence_prompts(query)
    n_templates = len(open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert len(prompts["class"]) == 5 * n_templates  # 4 names (no Latin binomial) + 1 extra
    assert "a photo of a great white shark." in prompts["class"]
    assert "a photo of a a shark fin." in prompts["class"]  # extra prompts go in as names
    assert "a photo of a ocean." in prompts["feature"]
    assert prompts["neutral"] == ["a photo."]
    assert (
        spurcli_openclip.presence_prompts(object_query(imagenet.resolve_class(2)))["feature"] == []
    )


def test_presence_is_the_calibrated_sigmoid_of_cosine_differences(tiny_arch):
    import torch.nn.functional as F

    from spurcli import imagenet
    from spurcli.evaluate.detect import object_query
    from spurcli.plugins import detectors

    loaded = detectors().load(f"clip-presence:{TINY}", "random")
    assert loaded.is_random
    query = object_query(imagenet.resolve_class(94), feature="red flower")
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded.module(images, query)
        model, tokenizer = tiny_model(), open_clip.get_tokenizer(TINY)

        def side(texts):
            return F.normalize(model.encode_text(tokenizer(texts), normalize=True).mean(0), dim=-1)

        prompts = spurcli_openclip.presence_prompts(query)
        c, f, n = (side(prompts[k]) for k in ("class", "feature", "neutral"))
        image = F.normalize(model.encode_image(loaded.module.preprocess(images)), dim=-1)
        expected = torch.sigmoid(100 * (image @ c - torch.maximum(image @ f, image @ n)))
    assert got.shape == (3,) and ((got >= 0) & (got <= 1)).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_a_pickled_payload_is_refused_without_torchs_advice(tmp_path):
    import os
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SpurcliError) as info:
        extractors().load(f"open_clip:{TINY}", path)
    text = str(info.value)
    assert "evil.pt" in text and "pickled Python" in text, text
    assert "weights_only" not in text and "\n" not in text and not marker.exists()
