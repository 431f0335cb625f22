"""spurcli-owlv2: OWLv2 open-vocabulary detection as a presence detector, on a tiny random
OWLv2 (one layer per tower, width 32, 64 px) built from an `Owlv2Config`; no download."""

from __future__ import annotations

import pytest

from spurcli import imagenet
from spurcli.errors import SpurcliError
from spurcli.evaluate.detect import object_query
from spurcli.plugins import detectors

torch = pytest.importorskip("torch")
spurcli_owlv2 = pytest.importorskip("spurcli_owlv2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def owl():
    return detectors().load("owlv2", "random")


def test_registered_with_the_hub_default():
    entry, _ = detectors().resolve("owlv2")
    assert entry.plugin == "spurcli-owlv2"
    assert entry.default_weights == "hub:google/owlv2-base-patch16-ensemble"


def test_queries_are_one_prompt_per_class_name():
    query = object_query(imagenet.resolve_class(2), ["shark fin"])
    assert spurcli_owlv2.query_texts(query) == [
        "a photo of a great white shark",
        "a photo of a white shark",
        "a photo of a man-eater",
        "a photo of a man-eating shark",
        "a photo of a shark fin",
    ]


def test_presence_is_the_best_box_score_of_any_query(owl):
    query = object_query(imagenet.resolve_class(94))
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    before = images.clone()
    module = owl.module
    with torch.no_grad():
        got = module(images, query)
        tokens = module.tokenizer(
            spurcli_owlv2.query_texts(query),
            padding="max_length",
            truncation=True,
            max_length=16,
            return_tensors="pt",
        )
        for i in range(2):  # image by image, through the model's own output
            out = module.model(
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                pixel_values=module.preprocess(images[i : i + 1]),
            )
            assert got[i] == pytest.approx(torch.sigmoid(out.logits).max().item(), abs=1e-5)
    assert got.shape == (2,) and ((got >= 0) & (got <= 1)).all()
    assert torch.equal(images, before)


def test_preprocessing_pads_grey_at_bottom_right_then_resizes(owl):
    image = torch.zeros(1, 3, 32, 16)
    x = owl.module.preprocess(image)
    assert x.shape == (1, 3, 64, 64)
    mean = torch.tensor(spurcli_owlv2.CLIP_MEAN).view(3, 1)
    std = torch.tensor(spurcli_owlv2.CLIP_STD).view(3, 1)
    grey = ((0.5 - mean) / std).expand(3, 64)
    black = ((0 - mean) / std).expand(3, 64)
    torch.testing.assert_close(x[0, :, :, -1], grey)  # the padded right side
    torch.testing.assert_close(x[0, :, :, 0], black)  # the image itself


def test_a_local_folder_round_trip(tmp_path, owl):
    model, tokenizer = spurcli_owlv2.tiny_random()
    model.save_pretrained(tmp_path / "owl")
    tokenizer.save_pretrained(tmp_path / "owl")
    local = detectors().load("owlv2", tmp_path / "owl")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    query = object_query(imagenet.resolve_class(94))
    with torch.no_grad():
        torch.testing.assert_close(local.module(images, query), owl.module(images, query))
    assert local.weights == str(tmp_path / "owl") and not local.is_random


def test_offline_without_files_names_what_to_fetch(tmp_path):
    with pytest.raises(SpurcliError, match="hf download google/owlv2-base-patch16-ensemble"):
        detectors().load("owlv2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpurcliError, match="does not hold an OWLv2 model"):
        detectors().load("owlv2", tmp_path / "empty")
