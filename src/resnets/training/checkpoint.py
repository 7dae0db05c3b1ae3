"""Checkpoints: written atomically, read without running code (weights_only=True)."""

import contextlib
import fcntl
import os
import re
import zipfile
from pathlib import Path

import torch

from .. import files
from ..errors import EnvironmentFailure, UserError, first_line

FORMAT = "resnets-checkpoint-1"
NAME = re.compile(r"iter-(\d+)\.pt")
LEGS = "legs.jsonl"  # one line per process that trained a run: from which iteration, when, on what machine


def save_atomic(obj, path: Path) -> None:
    """torch.save `obj` to `path` through the one atomic writer (files.replacing)."""
    # Into a Python file, not by name: torch's own file writer loses the OSError of a full disk ("iostream error").
    with files.replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load(path: str | Path) -> dict:
    """A checkpoint's contents; a one-line UserError if it is missing, damaged or not ours."""
    path = Path(path)
    if path.is_dir():
        path = latest(path)
    try:
        # torch.load does not check the zip's CRC-32s: a flipped bit in a tensor would load as a wrong weight.
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged:
            raise UserError(f"checkpoint {path} is corrupt ({damaged} fails its CRC-32 check)")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except UserError:
        raise
    except Exception as e:  # truncated zip, flipped bytes, a pickle that wants to run code: all refused
        raise UserError(f"checkpoint {path} is corrupt or not a resnets checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnets checkpoint")
    return ckpt


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold `run_dir` (created if need be) for one run; a second run pointed at it gets a UserError.

    The lock is flock(2) on the folder itself: nothing to clean up, and the OS drops it when the holder dies,
    SIGKILL included, so a killed run can be resumed at once. The holder first removes the temp files a killed
    writer left (see files.replacing). If the run fails before writing anything, the folders it created go again.
    """
    run_dir = Path(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # innermost first
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError as e:
        raise EnvironmentFailure(f"cannot create the run directory {run_dir} ({e.strerror}); choose another --out"
                                 ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another run is writing to {run_dir}; wait for it to end or choose another --out"
                            ) from None
        for tmp in run_dir.glob(files.TEMP_GLOB):
            with contextlib.suppress(OSError):  # a read-only disk keeps it; the run's first write says why
                tmp.unlink()
        yield run_dir
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something worth keeping
                folder.rmdir()
        raise
    finally:
        os.close(fd)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("iter-*.pt") if (m := NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest(run_dir: Path) -> Path:
    found = checkpoints(run_dir)
    if not found:
        raise UserError(f"no checkpoint in {run_dir}")
    return found[-1]

