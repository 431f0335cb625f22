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
