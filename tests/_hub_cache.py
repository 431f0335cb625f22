"""A Hugging Face hub cache on disk, in the layout huggingface_hub writes, for offline tests.

    cache = FakeHubCache(tmp_path / "hub")               # then point HF_HUB_CACHE at cache.root
    commit = cache.add("org/name", {"model.safetensors": data})   # refs/main -> a new commit
    cache.add("org/name", files, ref="v1")               # a second commit, under refs/v1

``models--org--name/blobs/<sha256>`` holds each file's bytes once, ``snapshots/<commit>/<file>``
is a relative symlink to its blob, ``refs/<ref>`` the commit hash: what `hf_hub_download` and
`from_pretrained(..., local_files_only=True)` read offline.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class FakeHubCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._commits = 0

    def add(self, repo_id: str, files: dict[str, bytes], *, ref: str = "main") -> str:
        """Store ``files`` (relative name -> bytes) as a new commit of ``repo_id``; its hash."""
        self._commits += 1
        commit = hashlib.sha1(f"{repo_id}@{self._commits}".encode()).hexdigest()
        repo = self.root / ("models--" + repo_id.replace("/", "--"))
        for name, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        return commit

    @staticmethod
    def folder_files(folder: Path) -> dict[str, bytes]:
        """Every file below ``folder`` (e.g. a `save_pretrained` output) as ``add`` takes them."""
        return {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
