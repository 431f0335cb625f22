"""The two kinds of expected failure.

Anything raised as a `SpurcliError` is a problem with the user's input or environment, not a bug:
the CLI prints its message on one line (no traceback unless `-v`) and exits 1. `UsageError` is the
subset that means "the command line was wrong" and exits 2, like a Typer/Click usage error.
"""


class SpurcliError(Exception):
    """An expected failure with a message a user can act on."""

    exit_code = 1


class UsageError(SpurcliError):
    """A bad name, option or value on the command line or in a config file."""

    exit_code = 2


class Signalled(BaseException):
    """SIGINT or SIGTERM outside the training loop (which checkpoints first). A BaseException,
    like KeyboardInterrupt, so that no library's ``except Exception`` swallows it; not a
    KeyboardInterrupt, which Typer turns into a silent exit 130. The CLI prints one line."""

    exit_code = 130


# errno -> what to do about it (the part of an OSError message a user can act on)
_OS_ADVICE = {
    "ENOSPC": "the disk is full: free some space or write somewhere else",
    "EDQUOT": "the disk quota is used up: free some space or write somewhere else",
    "EROFS": "the file system is read-only: write somewhere else",
    "EACCES": "no permission to write there: fix its permissions or write somewhere else",
    "EPERM": "no permission to write there: fix its permissions or write somewhere else",
    "EEXIST": "something is in the way: remove it or choose another path",
    "EISDIR": "a folder is in the way of a file: remove it or choose another path",
    "ENOTDIR": "a file is in the way of a folder: remove it or choose another path",
    "ENOTEMPTY": "a non-empty folder is in the way: remove it or choose another path",
    "ELOOP": "a symbolic link is in the way: remove it",
    "ENAMETOOLONG": "the name is too long: choose a shorter path",
    "EIO": "the disk reported an I/O error: check the device",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an `OSError`: the file, what happened, and what to do (no exception type)."""
    import errno
    import os

    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    where = " -> ".join(os.fspath(f) for f in (exc.filename, exc.filename2) if f is not None)
    advice = _OS_ADVICE.get(name)
    return f"{where + ': ' if where else ''}{what}" + (f"; {advice}" if advice else "")
