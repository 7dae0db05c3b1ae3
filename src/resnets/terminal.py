"""What reaches the terminal: text read from files shown as text, warnings as one plain line each.

Class names come from checkpoints and folder names, file names from folders: whoever made them can put ANSI escapes
and newlines in them, which printed raw would colour the terminal, move the cursor or print result lines of their
own. Every such name the CLI prints in text goes through `shown`; JSON output escapes them itself (json.dumps) and
keeps them exact.
"""

import contextlib
import logging
import warnings
from collections.abc import Iterator


def shown(text) -> str:
    """`text` with every character that is not printable escaped as Python writes it (\\x1b, \\n, \\u202e, and
    \\udcff for a byte of a file name that is not UTF-8), so it prints as one line that says what it holds."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """For one command: warnings as `warning: <message>` (Python's form adds the file, line and source line of the
    code that warned, which tells a user nothing), and torch's notice that a CPU-only run found no CUDA runtime
    left out (Inductor's compiler looks for a CUDA toolkit and logs it when torch.compile first runs)."""
    before = warnings.formatwarning
    warnings.formatwarning = _one_line
    probe = logging.getLogger("torch.utils.cpp_extension")
    probe.addFilter(_no_cuda_notice)
    try:
        yield
    finally:
        warnings.formatwarning = before
        probe.removeFilter(_no_cuda_notice)


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {shown(message)}\n"


def _no_cuda_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No CUDA runtime is found")
