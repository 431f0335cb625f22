"""ImageNet-1k and Spurious ImageNet class data shipped with the package, and class lookup."""

from __future__ import annotations

import pytest

from spurcli import imagenet
from spurcli.errors import UsageError
from spurcli.imagenet import resolve_class, search_classes, spurious_classes


def test_the_thousand_classes_are_complete_and_unique():
    classes = imagenet.imagenet_classes()
    assert [c.index for c in classes] == list(range(1000))
    assert len({c.wnid for c in classes}) == 1000
    assert all(c.wnid.startswith("n") and len(c.wnid) == 9 for c in classes)
    names = imagenet.class_names()
    assert len(set(names)) == 1000  # unique, so a name identifies one class
    assert (names[0], names[94], names[999]) == ("tench", "hummingbird", "toilet paper")
    assert all(c.lemmas and all(lemma for lemma in c.lemmas) for c in classes)


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (94, 94),
        ("94", 94),
        (" 0 ", 0),
        ("999", 999),
        ("n01833805", 94),
        ("N01833805", 94),
        ("hummingbird", 94),
        ("HummingBird", 94),
        ("  hummingbird ", 94),
        ("Carassius auratus", 1),  # a WordNet synonym
        ("tabby", 281),  # synonym of "tabby cat"
        ("white shark", 2),
    ],
)
def test_resolve_class(query, index):
    assert resolve_class(query).index == index


@pytest.mark.parametrize("query", ["1000", 1000, "-1", -3])
def test_index_out_of_range(query):
    with pytest.raises(UsageError, match="out of range 0-999"):
        resolve_class(query)


@pytest.mark.parametrize(
    ("query", "indices"), [("crane", (134, 517)), ("maillot", (638, 639)), ("CRANE", (134, 517))]
)
def test_ambiguous_synonym_lists_the_classes(query, indices):
    with pytest.raises(UsageError) as info:
        resolve_class(query)
    message = str(info.value)
    assert "names several ImageNet classes" in message and "pass the index" in message
    for index in indices:
        assert f"{index} {imagenet.class_names()[index]}" in message
    assert info.value.exit_code == 2


def test_did_you_mean():
    with pytest.raises(UsageError, match=r"did you mean 94 hummingbird\?"):
        resolve_class("hummingbrd")
    with pytest.raises(UsageError) as info:
        resolve_class("cat")  # no class is just "cat": suggest cats, not "crate"
    assert "281 tabby cat" in str(info.value) and "crate" not in str(info.value)
    with pytest.raises(UsageError) as info:
        resolve_class("qqqqzzzz")
    assert "did you mean" not in str(info.value) and "spurcli classes" in str(info.value)


def test_odd_digits_are_not_indices():
    # "²".isdigit() is True but int("²") fails: must be an unknown name, not a crash.
    with pytest.raises(UsageError, match="unknown ImageNet class"):
        resolve_class("²")
    assert search_classes("²") == []


def test_search_classes():
    assert len(search_classes(None)) == len(search_classes("")) == 1000
    assert [c.index for c in search_classes("94")] == [94]
    assert search_classes("1000") == []
    assert [c.index for c in search_classes("N01833805")] == [94]
    humming = search_classes("HUMMING")
    assert [c.index for c in humming] == [94]
    sharks = {c.index for c in search_classes("shark")}
    assert {2, 3, 4} <= sharks
    # Synonyms count: "Tinca" only appears in tench's lemmas.
    assert [c.index for c in search_classes("tinca")] == [0]


def test_spurious_classes():
    spurious = spurious_classes()
    assert len(spurious) == 100
    assert len({s.cls.index for s in spurious}) == 100
    by_index = {s.cls.index: s.feature for s in spurious}
    assert by_index[94] == "red feeder/flower"
    assert by_index[0] == "humans"
    assert all(s.feature.strip() == s.feature and s.feature for s in spurious)
    assert spurious[0].cls is imagenet.imagenet_classes()[spurious[0].cls.index]
