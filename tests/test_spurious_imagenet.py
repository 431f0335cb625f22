"""spurcli.evaluate.spurious_imagenet (the released Spurious ImageNet protocol) and the joint score.

Pixels against PIL's bicubic resize / crop with hand-derived sizes and offsets (and against
torchvision's transforms, composed as the released code composes them, when installed); the
joint score against scikit-learn on pooled data; the 21k map against timm's wnid lists.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from spurcli import imagenet
from spurcli.errors import SpurcliError
from spurcli.evaluate.metrics import joint_ranking_scores
from spurcli.evaluate.spurious_imagenet import (
    ACCEPTED_OUTPUTS,
    SPURIOUS_SCORE_COLUMNS,
    check_head_has_class,
    check_head_outputs,
    head_in1k_top1,
    in21k_index,
    protocol_image,
    protocol_input_size,
    protocol_resized_size,
    spurious_score_joint,
    spurious_score_rows,
    write_spurious_score_csv,
)

BICUBIC = Image.Resampling.BICUBIC


# Reference implementations of the released code's arithmetic, written out in numpy for the
# tests (production reads probabilities with spurcli.evaluate.metrics.target_prob at the mapped
# columns,
# and feeds uint8 / 255 on the device).


def protocol_unit_array(img: Image.Image) -> np.ndarray:
    """torchvision's ToTensor of an RGB image: (3, H, W) float32, uint8 / 255.

    float32 division is correctly rounded in numpy and torch alike, so this is bit-identical.
    """
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image (see protocol_image), got mode {img.mode}")
    pixels = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)


def head_in1k_logits(logits: Any) -> np.ndarray:
    """(B, n) logits of an accepted head -> (B, 1000) logits: the 1k classes' columns, -inf for
    a class the head lacks.

    Not the released protocol's numbers: a softmax over these renormalises over the 1000 classes
    only, where the released code's softmax runs over the whole head
    (`head_in1k_probabilities`). For a 1000-output head the two agree.
    """
    array = np.asarray(logits)
    check_head_outputs(array.shape[1])  # production's refusal, first
    index = in21k_index(array.shape[1])
    out = array[:, np.maximum(index, 0)].astype(np.result_type(array.dtype, np.float32))
    out[:, index < 0] = -np.inf
    return out


def head_in1k_probabilities(logits: Any, dtype: type[np.floating] = np.float64) -> np.ndarray:
    """(B, n) logits -> (B, 1000): softmax over all ``n`` outputs, read at each 1k class's column
    (0 for a class the head lacks), as the released code does; rows of a 21k head sum to < 1.

    ``dtype=np.float32`` reproduces the released code's float32 rounding (p above 1 - 6e-8 is
    1.0 there, which can tie confident images); float64 keeps them apart, as spurcli does.
    """
    array = np.asarray(logits).astype(dtype)
    check_head_outputs(array.shape[1])  # production's refusal, first
    top = array.max(axis=1, keepdims=True)  # log-sum-exp: no overflow for large logits
    probabilities = np.exp(array - top)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    index = in21k_index(array.shape[1])
    out = probabilities[:, np.maximum(index, 0)]
    out[:, index < 0] = 0.0
    return out


def _photo(name: str) -> Image.Image:
    """A CC0 skimage photo; "<name>_t" is its transpose (portrait from landscape)."""
    transpose = name.endswith("_t")
    pixels = getattr(skimage.data, name.removesuffix("_t"))()
    if transpose:
        pixels = np.ascontiguousarray(pixels.transpose(1, 0, 2))
    return Image.fromarray(pixels)


# width x height: square, landscape 3:2 and ~4:3, portrait, and one larger than every crop
PHOTOS = ["astronaut", "coffee", "coffee_t", "chelsea", "chelsea_t", "rocket", "hubble_deep_field"]
SIZES = [224, 240, 288, 336, 384]


def _expected_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    # Exact integer arithmetic, independent of the module's float expression.
    if width <= height:
        return shorter, (shorter * height) // width
    return (shorter * width) // height, shorter


def _half_to_even(twice: int) -> int:
    """round(twice / 2) with ties to the even neighbour, in integers."""
    half, odd = divmod(twice, 2)
    return half + (1 if odd and half % 2 else 0)


# ---------------------------------------------------------------------------------------------
# Pixels


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", PHOTOS)
def test_val_transform_is_pil_bicubic_resize_then_centre_crop(name, size):
    img = _photo(name)
    shorter = 8 * size // 7  # int(256 / 224 * size): 256, 274, 329, 384, 438
    w, h = _expected_size(img.width, img.height, shorter)
    left, top = _half_to_even(w - size), _half_to_even(h - size)
    expected = img.resize((w, h), BICUBIC).crop((left, top, left + size, top + size))
    got = protocol_image(img, size, real=True)
    assert got.size == (size, size) and got.mode == "RGB"
    assert np.array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", PHOTOS)
def test_spurious_transform_is_pil_bicubic_shorter_side_resize_without_crop(name, size):
    img = _photo(name)
    expected = img.resize(_expected_size(img.width, img.height, size), BICUBIC)
    got = protocol_image(img, size, real=False)
    assert min(got.size) == size
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_sizes_and_crop_offsets_by_hand():
    coffee = _photo("coffee")  # 600 x 400
    assert coffee.size == (600, 400)
    # 384: shorter side int(438.857) = 438, longer int(438 * 600 / 400) = 657; (657 - 384) / 2
    # = 136.5 rounds to 136 (half to even), (438 - 384) / 2 = 27.
    expected = coffee.resize((657, 438), BICUBIC).crop((136, 27, 520, 411))
    assert np.array_equal(np.asarray(protocol_image(coffee, 384, real=True)), expected)
    # 224: 384 x 256, crop at (80, 16).
    expected = coffee.resize((384, 256), BICUBIC).crop((80, 16, 304, 240))
    assert np.array_equal(np.asarray(protocol_image(coffee, 224, real=True)), expected)
    assert protocol_image(coffee, 384, real=False).size == (576, 384)
    chelsea = _photo("chelsea")  # 451 x 300: int(224 * 451 / 300) = int(336.7) = 336
    assert protocol_image(chelsea, 224, real=False).size == (336, 224)
    assert protocol_image(_photo("chelsea_t"), 224, real=False).size == (224, 336)
    assert protocol_resized_size(451, 300, 224) == (336, 224)
    assert protocol_resized_size(300, 451, 224) == (224, 336)


def test_grey_and_rgba_images_are_converted_to_rgb_first():
    for pixels in (skimage.data.coins(), skimage.data.logo()):  # 384 x 303 grey, 500^2 RGBA
        img = Image.fromarray(pixels)
        rgb = img.convert("RGB")
        for real in (True, False):
            got = protocol_image(img, 224, real)
            assert got.mode == "RGB"
            assert np.array_equal(np.asarray(got), np.asarray(protocol_image(rgb, 224, real)))


def test_unit_array_is_to_tensor():
    img = protocol_image(_photo("rocket"), 224, real=True)
    got = protocol_unit_array(img)
    assert got.dtype == np.float32 and got.shape == (3, 224, 224)
    pixels = np.asarray(img)
    assert np.array_equal(got, np.moveaxis(pixels, 2, 0).astype(np.float32) / np.float32(255))
    assert got.min() >= 0 and got.max() <= 1
    with pytest.raises(ValueError, match="RGB"):
        protocol_unit_array(img.convert("L"))


def test_matches_torchvision_as_the_released_code_composes_it():
    transforms = pytest.importorskip("torchvision.transforms")
    torch = pytest.importorskip("torch")
    mode = transforms.InterpolationMode.BICUBIC
    for name in ("coffee", "chelsea_t", "astronaut"):
        img = _photo(name)
        for size in (224, 384):
            val = transforms.Compose(
                [
                    transforms.Resize(int(256 / 224 * size), interpolation=mode),
                    transforms.CenterCrop(size),
                    transforms.ToTensor(),
                ]
            )
            spurious = transforms.Compose(
                [transforms.Resize(size, interpolation=mode), transforms.ToTensor()]
            )
            for real, transform in ((True, val), (False, spurious)):
                ours = torch.from_numpy(protocol_unit_array(protocol_image(img, size, real)))
                assert torch.equal(ours, transform(img)), (name, size, real)


def test_input_size_prefers_test_input_size():
    assert protocol_input_size({"input_size": (3, 384, 384)}) == 384
    both = {"input_size": (3, 224, 224), "test_input_size": (3, 288, 288)}
    assert protocol_input_size(both) == 288
    assert protocol_input_size({"input_size": (3, 256, 320)}) == 256  # the height
    assert protocol_input_size({}) == 224


# ---------------------------------------------------------------------------------------------
# Heads


def _timm_list(name: str) -> list[str]:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    return (folder / name).read_text(encoding="utf-8").split()


@pytest.mark.parametrize(
    "n_outputs, listing",
    [(21843, "imagenet21k_goog_synsets.txt"), (21841, "imagenet22k_synsets.txt")],
)
def test_in21k_index_is_the_position_of_each_wnid_in_timms_list(n_outputs, listing):
    listed = _timm_list(listing)
    assert len(listed) == n_outputs
    where = {wnid: i for i, wnid in enumerate(listed)}
    expected = [where.get(c.wnid, -1) for c in imagenet.imagenet_classes()]
    index = in21k_index(n_outputs)
    assert index.shape == (1000,) and index.tolist() == expected
    # Every 1k class but teddy bear (850, not in fall11 nor Google's list) has its own column.
    assert np.flatnonzero(index < 0).tolist() == [850]
    mapped = index[index >= 0]
    assert len(set(mapped.tolist())) == 999 and mapped.max() < n_outputs
    # The lists are in wnid order and so is the 1k order: the map is increasing.
    assert np.all(np.diff(mapped) > 0)
    assert not index.flags.writeable


def test_in21k_index_of_a_1k_head_is_the_identity():
    assert in21k_index(1000).tolist() == list(range(1000))


@pytest.mark.parametrize("n_outputs", [0, 10, 999, 1001, 10450, 11821, 21842, 21844])
def test_other_head_sizes_are_refused_in_one_line(n_outputs):
    with pytest.raises(SpurcliError) as caught:
        in21k_index(n_outputs)
    message = str(caught.value)
    assert "\n" not in message and str(n_outputs) in message
    assert all(str(n) in message for n in ACCEPTED_OUTPUTS)
    with pytest.raises(SpurcliError):
        head_in1k_probabilities(np.zeros((2, n_outputs)))
    for n in ACCEPTED_OUTPUTS:
        check_head_outputs(n)


def test_a_class_the_head_lacks_is_refused():
    with pytest.raises(SpurcliError, match="teddy bear"):
        check_head_has_class(21843, 850)
    check_head_has_class(1000, 850)
    check_head_has_class(21841, 94)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n_outputs", ACCEPTED_OUTPUTS)
def test_probabilities_are_the_whole_head_softmax_at_the_mapped_columns(n_outputs):
    logits = np.random.default_rng(n_outputs).normal(scale=3, size=(5, n_outputs))
    index = in21k_index(n_outputs)
    full = _softmax(logits)
    got = head_in1k_probabilities(logits)
    mapped = index >= 0
    assert got.shape == (5, 1000)
    np.testing.assert_allclose(got[:, mapped], full[:, index[mapped]], rtol=1e-12)
    assert np.all(got[:, ~mapped] == 0)
    assert head_in1k_probabilities(logits, np.float32).dtype == np.float32
    subset = head_in1k_logits(logits)
    assert np.array_equal(subset[:, mapped], logits[:, index[mapped]])
    assert np.all(subset[:, ~mapped] == -np.inf)
    if n_outputs == 1000:
        np.testing.assert_allclose(got, _softmax(subset), rtol=1e-12)
    else:  # the released softmax is over the whole head: its 1k rows sum to less than 1
        assert np.all(got.sum(axis=1) < 1)


def test_softmax_over_the_whole_head_is_not_the_1k_subset_softmax():
    """Why the 21k head's p_k must come from `head_in1k_probabilities`: scoring the subset
    logits as a 1k model renormalises per image and can reorder images."""
    n = 21843
    index = in21k_index(n)
    k, col = 94, int(index[94])
    other = np.setdiff1d(np.arange(n), index[index >= 0])[0]  # a 21k-only class
    logits = np.zeros((2, n))
    logits[0, col], logits[1, col] = 2.0, 1.0  # image 0 has the larger logit for class k...
    logits[0, other] = 12.0  # ...but image 0's mass goes to a 21k-only class
    full = head_in1k_probabilities(logits)[:, k]
    subset = _softmax(head_in1k_logits(logits))[:, k]
    assert full[0] < full[1] and subset[0] > subset[1]
    assert head_in1k_top1(logits).tolist() == [-1, k]


def test_top1_is_the_whole_head_argmax_in_1k_indices():
    for n in (21843, 21841):
        index = in21k_index(n)
        logits = np.zeros((3, n))
        logits[0, index[94]] = 5
        logits[1, index[3]] = 1
        logits[1, index[999]] = 1  # tie: the first maximum, like torch.max
        logits[2, np.setdiff1d(np.arange(n), index)[5]] = 9
        assert head_in1k_top1(logits).tolist() == [94, 3, -1]
    logits = np.eye(1000)[[7, 850]]
    assert head_in1k_top1(logits).tolist() == [7, 850]
    with pytest.raises(ValueError, match="batch"):
        head_in1k_top1(np.zeros(1000))


# ---------------------------------------------------------------------------------------------
# Joint score and the per-class table


def test_joint_score_by_hand_and_not_the_mean():
    # class 0: real 0.9 0.8, spurious 0.3; class 2: real 0.2, spurious 0.6 0.1
    real, spurious = {0: [0.9, 0.8], 2: [0.2]}, {0: [0.3], 2: [0.6, 0.1]}
    got = joint_ranking_scores(real, spurious)
    # Pooled: positives 0.9 0.8 0.2, negatives 0.3 0.6 0.1. ROC-AUC: 0.9 and 0.8 beat all three,
    # 0.2 beats 0.1 -> 7/9. AP: ranking P P N N P N -> (1 + 1 + 3/5) / 3.
    assert got["joint_roc_auc"] == pytest.approx(7 / 9)
    assert got["joint_average_precision"] == pytest.approx((2 + 3 / 5) / 3)
    # The per-class APs are 1 and 1/2: their mean, 3/4, is another number.
    assert got["joint_average_precision"] != pytest.approx(0.75)


def _closed_form_classes(n_classes: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Class 3k: real p = ((k + 2j) mod 4n) / 4n for j < k + 2, spurious p = ((k + 3j) mod 4n)
    / 4n for j < 3 - k % 3: on one 1/4n grid, so values tie within and across classes."""
    grid = 4 * n_classes
    real, spurious = {}, {}
    for k in range(n_classes):  # class indices 0, 3, 6, ...: not the positions 0, 1, 2
        real[3 * k] = np.array([(k + 2 * j) % grid for j in range(k + 2)]) / grid
        spurious[3 * k] = np.array([(k + 3 * j) % grid for j in range(3 - k % 3)]) / grid
    return real, spurious


@pytest.mark.parametrize("n_classes", [1, 2, 5, 17])
def test_joint_score_equals_sklearn_on_the_pooled_images(n_classes):
    real, spurious = _closed_form_classes(n_classes)
    positives = np.concatenate(list(real.values()))
    negatives = np.concatenate(list(spurious.values()))
    y_true = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    y_score = np.r_[positives, negatives]
    got = joint_ranking_scores(real, spurious)
    assert got["joint_roc_auc"] == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-12)
    assert got["joint_average_precision"] == pytest.approx(
        average_precision_score(y_true, y_score), abs=1e-12
    )


def test_joint_score_needs_the_same_classes_on_both_sides():
    with pytest.raises(ValueError, match=r"\[2\]"):
        joint_ranking_scores({0: [0.5]}, {0: [0.4], 2: [0.1]})
    with pytest.raises(ValueError):
        joint_ranking_scores({}, {})


def _per_image(n_classes: int = 5):
    """Per-image arrays of real and spurious images (shuffled), plus real images of a class
    without spurious images, which the released protocol leaves out."""
    real, spurious = _closed_form_classes(n_classes)
    rng = np.random.default_rng(1)
    r_target = np.concatenate([np.full(v.size, k) for k, v in real.items()] + [np.full(4, 999)])
    r_prob = np.concatenate([*real.values(), np.full(4, 0.01)])
    s_target = np.concatenate([np.full(v.size, k) for k, v in spurious.items()])
    s_prob = np.concatenate(list(spurious.values()))
    r_top1 = np.where(rng.random(r_target.size) < 0.6, r_target, 5)
    s_top1 = np.where(rng.random(s_target.size) < 0.3, s_target, 7)
    r_order, s_order = rng.permutation(r_target.size), rng.permutation(s_target.size)
    return (
        (r_target[r_order], r_prob[r_order], r_top1[r_order]),
        (s_target[s_order], s_prob[s_order], s_top1[s_order]),
        real,
        spurious,
    )


def test_rows_are_the_released_per_class_numbers():
    (r_target, r_prob, r_top1), (s_target, s_prob, s_top1), real, spurious = _per_image()
    rows = spurious_score_rows(r_target, r_prob, r_top1, s_target, s_prob, s_top1)
    assert [r["index"] for r in rows] == sorted(spurious)  # class 999 (no spurious) left out
    for row in rows:
        k = row["index"]
        r_k, s_k = real[k], spurious[k]
        y = np.r_[np.ones(r_k.size), np.zeros(s_k.size)]
        assert {"classifier", "preprocess", "input_size", *row} == set(SPURIOUS_SCORE_COLUMNS)
        assert row["average_precision"] == pytest.approx(
            average_precision_score(y, np.r_[r_k, s_k]), abs=1e-12
        )
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y, np.r_[r_k, s_k]), abs=1e-12)
        assert row["val_mean_prob"] == pytest.approx(r_k.mean())
        assert row["spurious_mean_prob"] == pytest.approx(s_k.mean())
        assert row["val_frac_labelled"] == pytest.approx(np.mean(r_top1[r_target == k] == k))
        assert row["spurious_frac_labelled"] == pytest.approx(np.mean(s_top1[s_target == k] == k))
        assert (row["n_val"], row["n_spurious"]) == (r_k.size, s_k.size)
        assert row["wnid"] == imagenet.imagenet_classes()[k].wnid
    joint = spurious_score_joint(r_target, r_prob, s_target, s_prob)
    assert joint == joint_ranking_scores(real, spurious)  # class 999's real images left out


def test_rows_by_hand_and_released_class_names():
    # class 134 "crane" (the bird) and 517 "crane" (the machine): the released table's names
    r_target, r_prob, r_top1 = [134, 134, 517], [0.9, 0.4, 0.7], [134, 12, 517]
    s_target, s_prob, s_top1 = [134, 134, 517], [0.5, 0.1, 0.8], [134, 3, 517]
    rows = spurious_score_rows(r_target, r_prob, r_top1, s_target, s_prob, s_top1)
    assert [(r["index"], r["class"]) for r in rows] == [(134, "crane"), (517, "crane")]
    first = rows[0]
    assert first["average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)  # P N P N
    assert first["roc_auc"] == pytest.approx(3 / 4)
    assert (first["val_mean_prob"], first["spurious_mean_prob"]) == pytest.approx((0.65, 0.3))
    assert (first["val_frac_labelled"], first["spurious_frac_labelled"]) == (0.5, 0.5)
    assert rows[1]["average_precision"] == 0.5 and rows[1]["roc_auc"] == 0.0
    with pytest.raises(ValueError, match="no real"):
        spurious_score_rows([134], [0.5], [134], [517], [0.5], [517])
    with pytest.raises(ValueError, match="one entry per image"):
        spurious_score_rows([134, 134], [0.5], [134], [517], [0.5], [517])


def test_csv_has_the_columns_and_round_trips(tmp_path):
    (r_target, r_prob, r_top1), (s_target, s_prob, s_top1), _, _ = _per_image()
    rows = spurious_score_rows(r_target, r_prob, r_top1, s_target, s_prob, s_top1)
    rows = [{"classifier": "resnet", **row} for row in rows]
    rows.append({**rows[0], "class": "=HYPERLINK(1)"})  # names are data in a spreadsheet
    path = tmp_path / "out" / "spurious_score.csv"
    write_spurious_score_csv(rows, path)
    assert [p.name for p in path.parent.iterdir()] == ["spurious_score.csv"]  # no temp left
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        read = list(reader)
    assert tuple(reader.fieldnames) == SPURIOUS_SCORE_COLUMNS
    assert len(read) == len(rows)
    for row, back in zip(rows[:-1], read[:-1], strict=True):
        assert int(back["index"]) == row["index"] and back["class"] == row["class"]
        for key in ("average_precision", "roc_auc", "val_mean_prob", "spurious_frac_labelled"):
            assert float(back[key]) == row[key]  # repr of a float: exact
        assert int(back["n_spurious"]) == row["n_spurious"]
    assert read[-1]["class"] == "'=HYPERLINK(1)"


# ---------------------------------------------------------------------------------------------
# Wired into `spurcli score`: the protocol's pixels, 21k heads, the joint score, the class CSV

SIN_CLASS = 807  # solar thermal collector: effnet-lite0 puts brick walls there


class _Recorder:
    """Classifier networks whose logits are a fixed function of what they are fed, and which
    keep every input (so a test sees exactly the pixels the protocol gave them)."""

    def __init__(self) -> None:
        self.inputs: list = []

    def net(self, outputs: int = 1000):
        import torch

        recorder = self

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                gen = torch.Generator().manual_seed(0)
                self.weight = torch.nn.Parameter(torch.randn(3, outputs, generator=gen))

            def forward(self, x):
                recorder.inputs.append(x.detach().clone())
                return x.mean(dim=(2, 3)) @ self.weight * 4

        return Net()


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture
def sin_plugins():
    """Classifiers registered in code: `probe` (a Preprocessed 32-px model), `probe-plain`
    (the same net without the Preprocessed structure), `head21k` (a random test_resnet with an
    ImageNet-21k head) and `head21k-as-1k` (the same net, its logits read at the 1k columns)."""
    import torch

    from spurcli import hookimpl, plugins
    from spurcli.preprocess import Preprocess, Preprocessed, preprocessed, seeded

    recorder = _Recorder()

    def net21k(outside: float | None):
        import timm

        with seeded():
            net = timm.create_model("test_resnet", pretrained=False, num_classes=21843)
        index = torch.from_numpy(in21k_index(21843).copy())
        mapped = index >= 0

        class Masked(torch.nn.Module):  # the columns outside the 1k map set to `outside`
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x):
                out = self.net(x)
                if outside is None:
                    return out
                masked = torch.full_like(out, outside)
                masked[:, index[mapped]] = out[:, index[mapped]]
                return masked

        class As1k(torch.nn.Module):  # the 1k model whose logits are the mapped 21k logits
            def __init__(self) -> None:
                super().__init__()
                self.net = Masked()

            def forward(self, x):
                out = self.net(x)[:, index.clamp(min=0)]
                out[:, ~mapped] = -1e4  # teddy bear (850): in no 21k list
                return out

        return Masked(), As1k()

    cfg = dict(input_size=(3, 32, 32), mean=MEAN, std=STD, crop_pct=0.875)

    class SinPlugin:
        @hookimpl
        def register_classifiers(self, register):
            register(
                "probe", lambda w: Preprocessed(Preprocess((32, 32), MEAN, STD), recorder.net())
            )
            register("probe-plain", lambda w: recorder.net())
            register("head21k", lambda w: preprocessed(net21k(None)[0], **cfg))
            register("head21k-masked", lambda w: preprocessed(net21k(-1e4)[0], **cfg))
            register("head21k-as-1k", lambda w: preprocessed(net21k(-1e4)[1], **cfg))

    plugins.reset_plugins()
    plugins.get_plugins().register(SinPlugin(), name="sin-test")
    yield recorder
    plugins.reset_plugins()


def _sin_photos(root: Path) -> tuple[Path, Path]:
    """A two-class Spurious ImageNet tree of real photos: spurious images of 807 (brick crops,
    one of them not square) and 94, and real val images (coffee, chelsea, rocket, astronaut)."""
    sin, val = root / "sin", root / "val"
    brick = Image.fromarray(skimage.data.brick()).convert("RGB")
    for i, box in enumerate([(0, 0, 300, 300), (100, 50, 400, 350), (0, 0, 450, 300)]):
        path = sin / f"class_spurious_{SIN_CLASS}_bricks" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        brick.crop(box).save(path)
    grass = Image.fromarray(skimage.data.grass()).convert("RGB")
    path = sin / "class_spurious_94_flowers" / "0.png"
    path.parent.mkdir(parents=True)
    grass.crop((0, 0, 256, 256)).save(path)
    wnids = {k: imagenet.imagenet_classes()[k].wnid for k in (SIN_CLASS, 94)}
    photos = {SIN_CLASS: ("coffee", "chelsea"), 94: ("rocket", "astronaut")}
    for k, names in photos.items():
        for name in names:
            path = val / wnids[k] / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
    return sin, val


def _score_sin(sin: Path, val: Path, classifiers: list[str], preprocess: str = "model", **more):
    from spurcli.evaluate.config import ScoreConfig
    from spurcli.evaluate.score import score

    cfg = ScoreConfig(
        classifiers=classifiers,
        layout="spurious-imagenet",
        real=val,
        preprocess=preprocess,
        device="cpu",
        num_workers=0,
        batch_size=3,
        **more,
    )
    return score(cfg, sin)


def test_the_protocol_feeds_classifiers_its_own_pixels_then_their_normalisation(
    tmp_path, sin_plugins
):
    import torch

    sin, val = _sin_photos(tmp_path)
    # Files the released loader reads differently from spurcli's reader: an RGBA image (alpha
    # dropped, not composited) and a JPEG with an EXIF rotation (not applied).
    rgba = np.asarray(_photo("coffee").resize((120, 80)).convert("RGBA")).copy()
    rgba[..., 3] = 40
    Image.fromarray(rgba).save(sin / f"class_spurious_{SIN_CLASS}_bricks" / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    _photo("rocket").resize((90, 60)).save(sin / "class_spurious_94_flowers" / "rot.jpg", exif=exif)
    result = _score_sin(sin, val, ["probe"], preprocess="spurious-imagenet")
    seen = [x[i] for x in sin_plugins.inputs for i in range(len(x))]
    files = sorted(p for p in sin.rglob("*") if p.is_file()) + sorted(val.rglob("*.png"))
    expected = []
    for path in files:
        image = protocol_image(Image.open(path), 32, real=val in path.parents)
        unit = torch.from_numpy(protocol_unit_array(image))
        expected.append(
            (unit - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        )
    # Every image exactly once, with its own shape (the 450x300 crop stays 48x32; the rotated
    # JPEG stays landscape, as the released loader reads it).
    shapes = sorted(tuple(x.shape) for x in seen)
    assert shapes == sorted(tuple(x.shape) for x in expected)
    assert (3, 32, 48) in shapes and shapes.count((3, 32, 48)) == 3
    for want in expected:
        assert any(x.shape == want.shape and torch.allclose(x, want, atol=1e-6) for x in seen)
    out = result.to_json()
    assert out["preprocess"] == "spurious-imagenet"
    assert out["classifiers"]["probe"]["protocol_size"] == 32
    # The model's own transform gives other pixels, so other numbers.
    sin_plugins.inputs.clear()
    own = _score_sin(sin, val, ["probe"]).to_json()
    assert own["preprocess"] == "model" and "protocol_size" not in own["classifiers"]["probe"]
    assert all(tuple(x.shape[-2:]) == (32, 32) for x in sin_plugins.inputs)
    a = out["classifiers"]["probe"]["per_class"]
    b = own["classifiers"]["probe"]["per_class"]
    assert a.keys() == b.keys() and a != b


def test_the_protocol_refuses_a_classifier_without_its_normalisation_apart(tmp_path, sin_plugins):
    from spurcli.errors import UsageError

    sin, val = _sin_photos(tmp_path)
    with pytest.raises(UsageError, match=r"'probe-plain'.*not a spurcli\.preprocess\.Preprocessed"):
        _score_sin(sin, val, ["probe-plain"], preprocess="spurious-imagenet")


def test_a_21k_head_scores_through_the_map(tmp_path, sin_plugins):
    """With the columns outside the 1k map negligible, a 21k head's numbers are those of the 1k
    model fed its mapped logits; with them as they are, p is the softmax over all 21843."""
    sin, val = _sin_photos(tmp_path)
    masked = _score_sin(sin, val, ["head21k-masked", "head21k-as-1k"])
    numbers = masked.to_json()["classifiers"]
    a, b = numbers["head21k-masked"]["per_class"], numbers["head21k-as-1k"]["per_class"]
    assert a.keys() == b.keys() == {"94", str(SIN_CLASS)}
    for k in a:
        for key, value in a[k].items():
            assert value == pytest.approx(b[k][key]) if value is not None else b[k][key] is None
    assert np.allclose(masked.spurious.target_prob[0], masked.spurious.target_prob[1])
    assert np.array_equal(masked.spurious.top1[0], masked.spurious.top1[1])

    import torch

    from spurcli.plugins import classifiers

    full = _score_sin(sin, val, ["head21k"])
    model = classifiers().load("head21k").module
    for per_image, root in ((full.spurious, sin), (full.real, val)):
        for name, k, p, top1 in zip(
            per_image.images, per_image.target, per_image.target_prob[0], per_image.top1[0],
            strict=True,
        ):  # fmt: skip
            from spurcli.evaluate.imagepass import SquareImages

            _, square, _, _ = SquareImages([root / name], 384)[0]
            with torch.no_grad():
                logits = model(square[None].float() / 255).double().numpy()
            assert p == pytest.approx(head_in1k_probabilities(logits)[0, k], rel=1e-4)
            assert top1 == head_in1k_top1(logits)[0]


def test_the_joint_score_and_the_class_csv_come_from_the_per_image_numbers(tmp_path, sin_plugins):
    sin, val = _sin_photos(tmp_path)
    result = _score_sin(sin, val, ["probe", "head21k"])
    out = result.to_json()
    for c, name in enumerate(["probe", "head21k"]):
        y = np.r_[np.ones(len(result.real.images)), np.zeros(len(result.spurious.images))]
        p = np.r_[result.real.target_prob[c], result.spurious.target_prob[c]]
        joint = out["classifiers"][name]
        assert joint["joint_average_precision"] == pytest.approx(average_precision_score(y, p))
        assert joint["joint_roc_auc"] == pytest.approx(roc_auc_score(y, p))
        for key in ("joint_average_precision", "joint_roc_auc"):  # 1000 resamples by default
            lo, hi = joint[f"{key}_ci"]
            assert 0 <= lo <= joint[key] <= hi <= 1
    assert out["uncertainty"]["bootstrap"]["resamples"] == 1000
    off = _score_sin(sin, val, ["probe"], bootstrap=0).to_json()["classifiers"]["probe"]
    assert (
        off["joint_roc_auc_ci"] is None
        and off["joint_roc_auc"] == out["classifiers"]["probe"]["joint_roc_auc"]
    )
    path = tmp_path / "classes.csv"
    result.write_class_csv(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["classifier"], int(r["index"])) for r in rows] == [
        ("probe", 94), ("probe", SIN_CLASS), ("head21k", 94), ("head21k", SIN_CLASS)
    ]  # fmt: skip
    for row in rows:
        per_class = out["classifiers"][row["classifier"]]["per_class"][row["index"]]
        assert float(row["average_precision"]) == pytest.approx(per_class["average_precision"])
        assert float(row["roc_auc"]) == pytest.approx(per_class["roc_auc"])


def test_cli_class_csv_and_preprocess(tmp_path, sin_plugins, monkeypatch, capsys):
    import sys

    from spurcli import cli

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["spurcli", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    sin, val = _sin_photos(tmp_path)
    csv_path, json_path = tmp_path / "c.csv", tmp_path / "r.json"
    args = ["score", sin, "--layout", "spurious-imagenet", "--real", val, "-c", "probe"]
    args += ["--preprocess", "spurious-imagenet", "--class-csv", csv_path, "--workers", "0"]
    code, out, err = run(*args, "--json", json_path)
    assert code in (0, None), err
    header = "classifier,preprocess,input_size,index,wnid,class,average_precision"
    assert csv_path.read_text().startswith(header + ",")
    assert "\nprobe,spurious-imagenet,32,94,n01833805," in csv_path.read_text()
    assert '"preprocess": "spurious-imagenet"' in json_path.read_text()
    assert "joint_average_precision" in out and "--preprocess spurious-imagenet" in out
    assert "joint_*: [lo, hi] 95% percentile bootstrap, 1000 resamples" in out
    code, _, err = run("score", sin, "--target", "94", "-c", "probe", "--class-csv", csv_path)
    assert code == 2 and "--class-csv is the per-class table" in err
    code, _, err = run(*args[:7], "--preprocess", "spurious-imagenett")
    assert code == 2 and "spurious-imagenet" in err


def test_only_a_non_square_protocol_image_gets_the_no_crop_explanation(tmp_path, sin_plugins):
    """A model that cannot take a non-square spurious image is told why it got one; any other
    failure (out of memory, a bug on square images) keeps its own error."""
    import torch

    from spurcli import hookimpl, plugins
    from spurcli.preprocess import Preprocess, Preprocessed

    class SquareOnly(torch.nn.Module):
        def __init__(self, square_error: type[Exception] | None) -> None:
            super().__init__()
            self.square_error = square_error

        def forward(self, x):
            if x.shape[-1] != x.shape[-2]:
                raise RuntimeError("Input width (48) should be divisible by patch size (16).")
            if self.square_error is not None:
                raise self.square_error("out of memory")
            return torch.zeros(len(x), 1000)

    def make(error):
        return lambda w: Preprocessed(Preprocess((32, 32), MEAN, STD), SquareOnly(error))

    class Plugin:
        @hookimpl
        def register_classifiers(self, register):
            register("square-only", make(None))
            register("oom", make(torch.OutOfMemoryError))
            register("buggy", make(ValueError))

    plugins.get_plugins().register(Plugin(), name="square-only-test")
    sin, val = _sin_photos(tmp_path)
    with pytest.raises(SpurcliError, match=r"'square-only' failed on a 48x32 image .* cropping"):
        _score_sin(sin, val, ["square-only"], preprocess="spurious-imagenet")
    with pytest.raises(torch.OutOfMemoryError):
        _score_sin(sin, val, ["oom"], preprocess="spurious-imagenet")
    with pytest.raises(ValueError, match="out of memory"):
        _score_sin(sin, val, ["buggy"], preprocess="spurious-imagenet")


def test_compare_under_the_protocol_records_it_in_json_and_report(tmp_path, sin_plugins):
    from spurcli.evaluate.compare import compare
    from spurcli.evaluate.config import CompareConfig
    from spurcli.experiment.report import write_report

    sin, val = _sin_photos(tmp_path)
    cfg = CompareConfig(
        target=SIN_CLASS,
        classifiers=["probe"],
        extractors=[],
        real=val / imagenet.imagenet_classes()[SIN_CLASS].wnid,
        preprocess="spurious-imagenet",
        device="cpu",
        bootstrap=0,
    )
    result = compare(
        sin / f"class_spurious_{SIN_CLASS}_bricks", sin / "class_spurious_94_flowers", cfg
    )
    data = result.to_json()
    assert data["preprocess"] == data["a"]["preprocess"] == data["b"]["preprocess"]
    assert data["preprocess"] == "spurious-imagenet"
    report = tmp_path / "report.html"
    write_report(report, [result], title="protocol")
    assert "classifier pixels: <code>--preprocess spurious-imagenet</code>" in report.read_text()
