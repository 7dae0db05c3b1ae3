"""The one way resnets writes a file: beside its final name, fsynced, renamed into place, the folder fsynced.

Checkpoints, config.toml, metrics.jsonl, plots, the decoded-folder cache, exports and experiment outputs all go
through `replacing`, so a reader never sees half a file and a failed write leaves the previous file as it was. A
process killed during a write leaves at worst a temp file matching TEMP_GLOB, which no loader looks at and which the
next write of the same file removes (or the next run in a run directory: rundir.RunDir.lock). A write the
machine refuses (disk full, read-only disk, no permission), however the writing library wraps the error, becomes
one WriteFailure line naming the file.
"""

import contextlib
import errno
import fcntl
import glob
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from .errors import EnvironmentFailure, UserError

TEMP_GLOB = ".*.tmp"  # the name of every temp file (see _create_temp): what a clean-up may remove
ADVICE = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (or raise the quota)",
          errno.EROFS: "write to a writable disk", errno.EACCES: "fix the permissions",
          errno.EPERM: "fix the permissions"}  # what to do about a refused write; "fix that" for any other reason


class WriteFailure(EnvironmentFailure):
    """A write the machine refused: the file, the reason and what to do, in one line."""

    def __init__(self, path: str | Path, error: OSError, then: str = "run the command again"):
        self.path, self.error = Path(path), error
        advice = ADVICE.get(error.errno, "fix that")
        super().__init__(f"cannot write {path} ({error.strerror or error}); the files written before are intact: "
                         f"{advice}, then {then}")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A new temp file beside `path` (its folder created if need be) for the block to write by name, so any writer
    can (torch, safetensors, matplotlib); renamed onto `path` when the block ends, removed if it raises."""
    path, tmp, held = Path(path), None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(path)
        tmp = _create_temp(path)
        held = _hold(tmp)
        yield tmp
        _settle(tmp)
        os.replace(tmp, path)
        tmp = None
        _sync_folder(path.parent)
    except Exception as e:
        refused = None if isinstance(e, UserError) else _refusal(e)
        if refused is None:
            raise  # not the machine's refusal: a bug, shown as such
        raise WriteFailure(path, refused) from e
    finally:
        if held is not None:
            os.close(held)
        if tmp is not None:
            with contextlib.suppress(OSError):  # a disk turned read-only keeps it; a clean-up removes it later
                tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(text.encode())


def _create_temp(path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # exclusively: never another writer's file
    return tmp


def _hold(tmp: Path) -> int:
    """A descriptor of `tmp` holding flock(2) on it while it is written: the OS drops the lock when the writer
    dies, SIGKILL included, which is how _remove_abandoned tells a killed writer's temp file from a live one's."""
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _remove_abandoned(path: Path) -> None:
    """The temp files of earlier writes of `path` whose writers were killed (an export killed by SIGKILL): nothing
    else would remove them outside a run directory. Those whose writer still holds them stay."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone already, a read-only disk, or a link: left alone
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a live writer's
                tmp.unlink()
            finally:
                os.close(fd)


def _umask() -> int:
    umask = os.umask(0)  # reading it means setting it
    os.umask(umask)
    return umask


def _settle(tmp: Path) -> None:
    """On the disk, with the permissions open() gives (0o666 less the umask) whoever wrote it: safetensors writes a
    private (0600) temp file of its own and renames it onto ours. Never through a link put in its place."""
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """The rename on the disk too: until the folder is fsynced, a power cut may bring back the old file (or none)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refusal(e: BaseException | None) -> OSError | None:
    """The OSError behind a failed write, however the writer wrapped it; None if there is none.

    torch.save into a file raises its zip writer's "unexpected pos" RuntimeError while handling the OSError of the
    write (its __context__); safetensors' Rust code only quotes the error: "... (os error 28)".
    """
    while e is not None:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        if isinstance(e, SafetensorError) and (code := re.search(r"\(os error (\d+)\)", str(e))):
            return OSError(int(code[1]), os.strerror(int(code[1])))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None
