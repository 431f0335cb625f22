"""spurcli.fileio: results are complete or absent, never half-written, with normal permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from spurcli.fileio import atomic_dir, atomic_path, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_json_and_text(tmp_path):
    path = tmp_path / "a" / "b" / "result.json"  # parents are created
    write_json(path, {"x": 1, "path": tmp_path, "ü": [1.5]})  # default=str for paths
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "x": 1,
        "path": str(tmp_path),
        "ü": [1.5],
    }
    assert path.read_text().endswith("\n")
    write_text(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    assert listing(tmp_path) == ["a", "note.txt"]


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        assert path.read_text() == "old"  # not visible before the end
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old"
    assert listing(tmp_path) == ["out.txt"]  # no temporary left behind
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".tmp-out.txt.")
        tmp.write_text("new")
    assert path.read_text() == "new" and listing(tmp_path) == ["out.txt"]


def test_atomic_path_keeps_normal_permissions(tmp_path, umask_022):
    write_text(tmp_path / "shared.txt", "x")
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644


def test_atomic_dir_create_replace_and_fail(tmp_path, umask_022):
    target = tmp_path / "run" / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"1")
        assert not target.exists()
    assert listing(target) == ["weights.bin"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755

    with atomic_dir(target) as tmp:  # replaces the old folder as a whole
        (tmp / "model.safetensors").write_bytes(b"2")
    assert listing(target) == ["model.safetensors"]

    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "partial").write_bytes(b"3")
        raise RuntimeError("killed")
    assert listing(target) == ["model.safetensors"]  # previous version intact
    assert listing(target.parent) == ["checkpoint"]  # no .tmp-/.old- folders left
