"""The held-out references are independent of the training ones: near-duplicates (the same photo,
a resized copy, a crop sharing pixels) never straddle the split."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from spurcli.errors import UsageError
from spurcli.experiment.duplicates import Fingerprint, near_duplicate
from spurcli.experiment.references import split_references


def _photos() -> dict[str, Image.Image]:
    import skimage.data

    return {
        name: Image.fromarray(getattr(skimage.data, name)())
        for name in ("chelsea", "coffee", "astronaut", "camera", "rocket")
    }


def _copies(photos: dict[str, Image.Image]) -> dict[str, Image.Image]:
    """Each photo, and of two of them a crop and a resized copy (the groups of one photo)."""
    chelsea, astronaut = photos["chelsea"], photos["astronaut"]
    w, h = chelsea.size
    return {
        **photos,
        "chelsea-crop": chelsea.crop((int(w * 0.3), int(h * 0.3), int(w * 0.7), int(h * 0.7))),
        "chelsea-small": chelsea.resize((w * 2 // 5, h * 2 // 5)),
        "astronaut-corner": astronaut.crop((0, 0, 307, 307)),
    }


def test_near_duplicates_are_the_same_photo_or_a_crop_and_unrelated_photos_are_not():
    photos = _photos()
    prints = {name: Fingerprint.of(image) for name, image in _copies(photos).items()}
    assert "same photo" in near_duplicate(prints["chelsea"], prints["chelsea-small"])
    assert "crop" in near_duplicate(prints["chelsea-crop"], prints["chelsea"])
    assert "crop" in near_duplicate(prints["astronaut"], prints["astronaut-corner"])  # either way
    # Two crops of one photo that overlap (by 70% of each side), neither inside the other.
    w, h = photos["chelsea"].size
    first = Fingerprint.of(photos["chelsea"].crop((0, 0, w * 7 // 10, h * 7 // 10)))
    second = Fingerprint.of(photos["chelsea"].crop((w * 3 // 10, h * 3 // 10, w, h)))
    assert "crop" in near_duplicate(first, second)
    # Both halves of one photo share no pixel: not duplicates.
    w, h = photos["coffee"].size
    left = Fingerprint.of(photos["coffee"].crop((0, 0, w // 2, h)))
    right = Fingerprint.of(photos["coffee"].crop((w // 2, 0, w, h)))
    assert near_duplicate(left, right) is None
    unrelated = [n for n in photos]
    for i, a in enumerate(unrelated):
        for b in unrelated[i + 1 :]:
            assert near_duplicate(prints[a], prints[b]) is None, (a, b)
    # Flat colours have no structure (their dHash is all zeros): only the same colour matches.
    red, blue = (Fingerprint.of(Image.new("RGB", (40, 48), c)) for c in ("red", "blue"))
    assert near_duplicate(red, blue) is None


def test_held_out_references_share_no_photo_with_the_training_ones(tmp_path, caplog):
    groups = {"chelsea": "chelsea", "chelsea-crop": "chelsea", "chelsea-small": "chelsea"}
    groups |= {"astronaut": "astronaut", "astronaut-corner": "astronaut"}
    for name, image in _copies(_photos()).items():
        image.save(tmp_path / f"{name}.{'jpg' if name.endswith('small') else 'png'}")
    moved_any = False
    for seed in range(6):
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            split = split_references(tmp_path, 2, seed)
        trained = {p.stem for p in split.train}
        held = {p.stem for p in split.held_out}
        assert trained | held == {*groups, "coffee", "camera", "rocket"} and not trained & held
        for photo in ("chelsea", "astronaut"):
            members = {n for n, g in groups.items() if g == photo}
            assert members <= trained or members <= held, (seed, trained)  # never split
        assert len(split.train) == 2 + len(split.moved)
        if split.moved:
            moved_any = True
            assert {m["file"].rsplit(".", 1)[0] for m in split.moved} <= trained
            assert split.to_json()["moved"] == split.moved
            lines = [r.getMessage() for r in caplog.records if "near-duplicates" in r.getMessage()]
            assert len(lines) == 1 and all(m["file"] in lines[0] for m in split.moved)
        else:
            assert "moved" not in split.to_json()
    assert moved_any  # some seed drew a photo whose copy was held out


def test_a_split_whose_every_held_out_image_copies_a_training_one_is_refused(tmp_path):
    photo = _photos()["chelsea"]
    w, h = photo.size
    photo.save(tmp_path / "a.png")
    photo.crop((0, 0, w * 3 // 5, h * 3 // 5)).save(tmp_path / "b.png")
    photo.resize((w // 2, h // 2)).save(tmp_path / "c.png")
    with pytest.raises(UsageError, match="nothing independent is left"):
        split_references(tmp_path, 1, 0)


def test_flat_colour_references_are_not_duplicates_of_each_other(tmp_path):
    for i, colour in enumerate([(200, 30, 40), (30, 160, 60), (240, 200, 10), (20, 40, 220)]):
        Image.new("RGB", (40 + 8 * i, 48), colour).save(tmp_path / f"ref{i}.png")
    split = split_references(tmp_path, 2, 3)
    assert len(split.held_out) == 2 and split.moved == []


def test_keep_leaves_near_duplicates_held_out_and_says_the_set_is_not_independent(tmp_path):
    photo = _photos()["chelsea"]
    w, h = photo.size
    photo.save(tmp_path / "a.png")
    photo.crop((0, 0, w * 3 // 5, h * 3 // 5)).save(tmp_path / "b.png")
    photo.resize((w // 2, h // 2)).save(tmp_path / "c.png")
    split = split_references(tmp_path, 1, 0, "keep")
    assert len(split.train) == 1 and len(split.held_out) == 2 and split.moved == []
    assert {m["file"] for m in split.not_independent} == {p.name for p in split.held_out}
    assert split.to_json()["not_independent"] == split.not_independent
    with pytest.raises(UsageError, match="move, keep"):
        split_references(tmp_path, 1, 0, "drop")


def test_the_brick_world_references_are_crops_of_one_photo_and_it_says_so():
    """The brick world's eight references overlap (256-px crops of one 512-px photo at 128-px
    steps): every held-out one shares pixels with a training one. Its config keeps them held
    out, and the split records that they are not independent."""
    from pathlib import Path

    from spurcli.experiment.plan import load_experiment

    config = Path(__file__).resolve().parents[1] / "examples" / "brick_world" / "bricks.toml"
    split = load_experiment(config).split
    assert len(split.held_out) == 3 and split.moved == []
    assert {m["file"] for m in split.not_independent} == {p.name for p in split.held_out}
    with pytest.raises(UsageError, match="nothing independent is left"):
        _ = load_experiment(config, ["near_duplicate_references=move"]).split
