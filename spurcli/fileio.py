"""Atomic file and folder writes: a result is either complete or absent, never half-written.

    with atomic_path("out/result.json") as tmp:   # write to tmp; renamed over the target on success
        tmp.write_text(...)
    write_json("out/result.json", {"a": 1})
    with atomic_dir("run/checkpoints/step-10") as tmp:  # a folder, renamed in at the end
        save_everything(tmp)

A crash (or kill -9) leaves at most a hidden ``.tmp-*`` sibling; the target is never half-written.
Files keep the umask's permissions (0644 under the usual 022), whatever wrote them.

Output folders: one command owns each, one process writes into it at a time.

    with output_folder("runs/a", "finetune", recognise=is_old_run):
        ...                     # write freely: the folder is ours until the block ends

It refuses a folder that is neither empty nor already a spurcli result of the same kind (a home
folder, ``/``, a folder of the user's own files), a folder another process holds (an advisory
``fcntl.flock`` on ``.spurcli-folder`` inside it, which the kernel drops when the holder dies,
so a killed run never leaves a stale lock), and a folder with a symbolic link inside (a writer
would follow it out of the folder). It removes the ``.tmp-*`` and ``.old-*`` leftovers of a
killed writer. ``check_output_file`` probes a result file's path before the work starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError, UsageError, describe_os_error

FOLDER_FILE = ".spurcli-folder"  # the ownership marker and lock file of an output folder
LEFTOVERS = (".tmp-", ".old-")  # prefixes of a killed writer's temporaries (see atomic_dir)


def _tmp_sibling(path: Path) -> Path:
    # A fresh name, not a file made by mkstemp: mkstemp/mkdtemp create it with mode 0600/0700,
    # and after the rename results would be unreadable to the rest of a shared group.
    return path.parent / f".tmp-{path.name}.{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling path to write to, renamed to ``path`` on success (removed on error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _tmp_sibling(path)
    tmp_path.touch(exist_ok=False)  # exists (empty) like mkstemp's file, but with umask modes
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder renamed to ``path`` on success (an existing ``path`` is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        _umask_modes(tmp)  # safetensors and torch.save make their files 0600
        if path.exists():
            # Rename the old folder away first so that the target is never missing both copies.
            old = Path(tempfile.mkdtemp(prefix=f".old-{path.name}.", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old / path.name, path)  # put the previous version back
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(folder: str | os.PathLike[str], name: str) -> Iterator[Path]:
    """A temporary folder ``folder/.tmp-NAME.*`` to build a result in and move it out of, file by
    file (modes already the umask's); removed on exit, and, if a kill skipped that, by the next
    `output_folder` of ``folder``."""
    tmp = _tmp_sibling(Path(folder) / name)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def holds_only_our_files(folder: str | os.PathLike[str]) -> bool:
    """``folder`` holds nothing but a marker, temporaries and stamps (of a command that failed)."""
    return all(_ours(p.name) for p in Path(folder).iterdir())


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _umask_modes(folder: Path) -> None:
    """Give everything in ``folder`` the modes a plain ``open()`` / ``mkdir()`` would give it."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask, follow_symlinks=False)
        for name in files:
            with contextlib.suppress(NotImplementedError):  # a link: leave it alone
                os.chmod(os.path.join(root, name), 0o666 & ~umask, follow_symlinks=False)


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """``path`` is ``folder`` or below it (symlinks and ``..`` resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_file(path: str | os.PathLike[str], option: str) -> None:
    """Fail now, before the work, if a result file could not be written at ``path`` later."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = _tmp_sibling(path)
        probe.touch(exist_ok=False)  # the folder takes new files ...
        probe.unlink()  # ... and the probe is gone again
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
    except OSError as exc:
        raise SpurcliError(f"{option}: {describe_os_error(exc)}") from None


def _ours(name: str) -> bool:
    """Files spurcli leaves in any folder it writes: the marker, temporaries, `run`'s stamps."""
    is_stamp = name.startswith(".") and name.endswith(".stamp.json")
    return name == FOLDER_FILE or name.startswith(LEFTOVERS) or is_stamp


def _owner(fd: int) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8") or "{}")
        if isinstance(data, dict):
            return data
    return {}


def _scan(root: Path, links_below: tuple[str, ...] = ()) -> None:
    """Refuse symlinks below ``root`` and remove leftover temporaries; sub-folders owned by
    another command (their own marker) are theirs to check."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here != root and FOLDER_FILE in files:
            dirs.clear()
            continue
        top = here.relative_to(root).parts[:1]
        linked = bool(links_below) and bool(top) and top[0].startswith(links_below)
        for name in [*dirs, *files]:
            entry = here / name
            if entry.is_symlink() and not (linked and name in files):
                raise SpurcliError(
                    f"{entry} is a symbolic link inside the output folder {root}; spurcli never "
                    "writes through links (they could point anywhere): remove it"
                )
            if name.startswith(LEFTOVERS):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        dirs[:] = [d for d in dirs if not d.startswith(LEFTOVERS)]


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike[str],
    kind: str,
    *,
    recognise: Callable[[Path], bool] = lambda p: False,
    enabled: bool = True,
    links_below: tuple[str, ...] = (),
) -> Iterator[Path]:
    """Own and lock ``path`` as the output folder of a ``kind`` command (see the docstring).

    ``recognise``: whether a folder without a marker is this command's result all the same (made
    before markers existed). ``enabled=False`` (the other processes of a multi-process run, whose
    first process holds the folder): only the path is returned. ``links_below``: name prefixes of
    first-level sub-folders whose files may be symbolic links the command made itself (curate's
    ``--mode link``); the command only ever deletes those, never writes through them.
    """
    path = Path(path)
    if not enabled:
        yield path
        return
    if path.exists() and not path.is_dir():
        raise UsageError(f"the output folder {path} is a file; choose a folder")
    resolved = path.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise UsageError(f"refusing to write into {path} ({resolved}); choose a new folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / FOLDER_FILE
        created = not marker.exists()
        fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpurcliError(f"{path / FOLDER_FILE} is a symbolic link; remove it") from None
        raise SpurcliError(f"cannot use the output folder: {describe_os_error(exc)}") from None
    try:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _owner(fd)
            raise SpurcliError(
                f"{path} is in use by another spurcli {holder.get('kind', kind)} (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                f"{holder.get('started', '?')}); wait for it to end or choose another folder"
            ) from None
        owner = _owner(fd)
        if owner.get("kind") not in (None, kind):
            raise UsageError(
                f"{path} holds a spurcli {owner['kind']} result, not a {kind} one; choose "
                "another folder"
            )
        others = [p.name for p in path.iterdir() if not _ours(p.name)]
        if "kind" not in owner and others and not recognise(path):
            if created:
                marker.unlink(missing_ok=True)
            shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
            raise UsageError(
                f"{path} is not empty ({shown}) and not a spurcli {kind} folder; spurcli only "
                "writes into a new or empty folder or its own results: choose another one"
            )
        _scan(path, links_below)
        record = {
            "kind": kind,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
        }
        os.ftruncate(fd, 0)  # rewritten in place: replacing the file would drop the lock
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
