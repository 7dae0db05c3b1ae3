import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes, which torch puts in some of its messages


def first_line(e: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message, uncoloured and cut to `limit` characters (its type's name if it
    has none): the reason in a one-line error."""
    text = ANSI.sub("", str(e)).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class UserError(Exception):
    """A mistake of the user's (bad path, bad flag, bad file): the CLI prints it as one line and exits 2."""

    exit_status = 2


class EnvironmentFailure(UserError):
    """The machine refused, not the command (disk full, read-only or unwritable folder): one line, exit 1."""

    exit_status = 1
