"""What reaches the terminal: text read from files shown as text, warnings as one plain line each.

Class names come from checkpoints and folder names, file names from folders: whoever made them can put ANSI escapes
and newlines in them, which printed raw would colour the terminal, move the cursor or print result lines of their
own. Every such name the CLI prints in text goes through `shown`; JSON output escapes them itself (json.dumps) and
keeps them exact.
"""

import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from .distributed import lead
from .errors import EnvironmentFailure
from .files import ADVICE


def shown(text) -> str:
    """`text` with every character that is not printable escaped as Python writes it (\\x1b, \\n, \\u202e, and
    \\udcff for a byte of a file name that is not UTF-8), so it prints as one line that says what it holds."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """For one command: warnings as `warning: <message>` (Python's form adds the file, line and source line of the
    code that warned, which tells a user nothing), by rank 0 alone in a run of several processes, and torch's notice
    that a CPU-only run found no CUDA runtime left out (Inductor's compiler looks for a CUDA toolkit and logs it
    when torch.compile first runs)."""
    before = warnings.formatwarning
    warnings.formatwarning = _one_line
    probe = logging.getLogger("torch.utils.cpp_extension")
    probe.addFilter(_no_cuda_notice)
    try:
        with warnings.catch_warnings():
            if not lead():  # the processes of a run read the same data: rank 0 says what they meet, as it prints
                warnings.simplefilter("ignore")
            yield
    finally:
        warnings.formatwarning = before
        probe.removeFilter(_no_cuda_notice)


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {shown(message)}\n"


def _no_cuda_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No CUDA runtime is found")


class ReaderGone(Exception):
    """The standard output is a pipe whose reader has closed it (`resnets predict ... | head -n 1`)."""


class OutputRefused(EnvironmentFailure):
    """The standard output refused a write (a full disk, /dev/full): one line, exit 1."""

    def __init__(self, error: OSError):
        super().__init__(f"cannot write the standard output ({error.strerror or error}); what was written is cut "
                         f"short: {ADVICE.get(error.errno, 'fix that')}, then run the command again")


class _Checked:
    """sys.stdout whose refused writes are told apart from every other OSError: ReaderGone or OutputRefused."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def write(self, text: str) -> int:
        return self._call(self.stream.write, text)

    def flush(self) -> None:
        self._call(self.stream.flush)

    @staticmethod
    def _call(method, *args):
        try:
            return method(*args)
        except OSError as e:
            raise (ReaderGone() if e.errno == errno.EPIPE else OutputRefused(e)) from None


@contextlib.contextmanager
def checked_stdout() -> Iterator[None]:
    """For one command: a write to stdout that fails raises ReaderGone or OutputRefused, and what is still buffered
    is written before the command ends, so that it fails there too rather than in Python's flush at exit (which
    can only print "Exception ignored ..."). After a failure stdout goes to /dev/null: that flush has nothing
    left to fail on."""
    before = sys.stdout
    sys.stdout = _Checked(before)
    try:
        yield
        sys.stdout.flush()
    except (ReaderGone, OutputRefused):
        with contextlib.suppress(OSError, ValueError):  # no file descriptor (a test's captured output): nothing to do
            os.dup2(os.open(os.devnull, os.O_WRONLY), before.fileno())
        raise
    finally:
        sys.stdout = before
