import difflib
import re
from collections.abc import Iterable

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes, which torch puts in some of its messages


def first_line(e: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message, uncoloured and cut at a space before `limit` characters (its
    type's name if it has none): the reason in a one-line error."""
    text = ANSI.sub("", str(e)).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."  # a cut says so, between words


def few(names: list[str]) -> str:
    """The first three of `names` and, if there are more, how many in all: names in a one-line message."""
    return ", ".join(names[:3]) + (f", ... ({len(names)})" if len(names) > 3 else "")


def close_matches(word: str, choices: Iterable[str], cutoff: float = 0.5) -> list[str]:
    """Up to three of `choices` that look like `word`, closest first: what a mistyped name probably meant."""
    return difflib.get_close_matches(word, list(choices), n=3, cutoff=cutoff)


def did_you_mean(matches: list[str], otherwise: str = "") -> str:
    """The end of a one-line error about an unknown name: "; did you mean a, b?" naming `matches` (close_matches'),
    or `otherwise` (where the names are listed, say) when there are none."""
    return f"; did you mean {', '.join(matches)}?" if matches else otherwise


class UserError(Exception):
    """A mistake of the user's (bad path, bad flag, bad file): the CLI prints it as one line and exits 2."""

    exit_status = 2


class EnvironmentFailure(UserError):
    """The machine refused, not the command (disk full, read-only or unwritable folder): one line, exit 1."""

    exit_status = 1
