"""spurcli.weights: safe checkpoint loading and the offline hub error (files written here)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spurcli.errors import SpurcliError
from spurcli.weights import RANDOM, hub_file, is_random, load_state_dict, read_weights_file

torch = pytest.importorskip("torch")


def state() -> dict:
    torch.manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.randn(10)}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_is_random():
    assert is_random(RANDOM) and is_random(Path("random"))
    assert not is_random(None) and not is_random("random.pt") and not is_random("/w/random")


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(state(), str(path))
    assert_same(load_state_dict(path), state())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}, "epoch": torch.tensor(90)},
        lambda sd: {"model_state_dict": sd},
    ],
    ids=["plain", "state_dict", "madrylab-style", "model_state_dict"],
)
@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_torch_save_round_trip(tmp_path, wrap, zipfile):
    path = tmp_path / "w.pt"
    torch.save(wrap(state()), path, _use_new_zipfile_serialization=zipfile)
    assert_same(load_state_dict(path), state())


def _side_effect(path: str) -> None:
    Path(path).write_text("code ran")


class Payload:
    """Unpickling this calls _side_effect: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_side_effect, (self.path,))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": Payload(sentinel)}, path)
    with pytest.raises(SpurcliError) as info:
        read_weights_file(path)
    message = str(info.value)
    assert str(path) in message and "_side_effect" in message and "refused" in message
    assert "\n" not in message and "\x1b" not in message
    assert "weights_only` set to `False`" not in message  # never suggest the unsafe load
    assert not sentinel.exists()
    # The file really is dangerous: an unsafe load would have run the code.
    torch.load(path, weights_only=False)
    assert sentinel.read_text() == "code ran"


def test_custom_class_is_refused(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"w": torch.zeros(1), "cfg": Path("x")}, path)
    with pytest.raises(SpurcliError, match=r"pickled Python object pathlib.*refused"):
        load_state_dict(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(SpurcliError, match=r"weights file not found: .*nope\.pt"):
        load_state_dict(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("hello, not a checkpoint")
    with pytest.raises(SpurcliError, match="not a PyTorch checkpoint"):
        load_state_dict(garbage)
    truncated = tmp_path / "truncated.pt"
    torch.save(state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(SpurcliError, match="truncated"):
        load_state_dict(truncated)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(SpurcliError, match="not a readable safetensors file"):
        load_state_dict(bad)


@pytest.mark.parametrize("content", [{}, {"a": 1}, [torch.zeros(1)], {"w": torch.zeros(1), "n": 2}])
def test_no_state_dict_of_tensors(tmp_path, content):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(SpurcliError, match="holds no state dict of tensors"):
        load_state_dict(path)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache, and the hub library offline even if it was imported earlier."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_file_offline_error_is_actionable_and_fast(hub_cache):
    start = time.monotonic()
    with pytest.raises(SpurcliError) as info:
        hub_file("spurcli-tests/no-such-repo", "model.safetensors", model="mymodel")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "spurcli-tests/no-such-repo" in message and "model.safetensors" in message
    assert "--weights mymodel=PATH" in message and "offline" in message
    assert "\n" not in message
    assert elapsed < 10, "offline lookup must fail at once, not wait for the network"


def test_hub_file_uses_the_cache_offline(hub_cache):
    """A file already in the hub cache (same layout huggingface_hub writes) is found offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--spurcli-tests--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "w.safetensors").write_bytes(b"weights")
    path = hub_file("spurcli-tests/cached", "w.safetensors", model="cached")
    assert Path(path).read_bytes() == b"weights"
