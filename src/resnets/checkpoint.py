"""Checkpoints: written atomically, read without running code (weights_only=True)."""

import os
import re
import tempfile
from pathlib import Path

import torch

from .errors import UserError
from .models import ResNet, ResNetConfig

FORMAT = "resnets-checkpoint-1"
NAME = re.compile(r"iter-(\d+)\.pt")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """A checkpoint's contents; a one-line UserError if it is missing, damaged or not ours."""
    path = Path(path)
    if path.is_dir():
        path = latest(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated zip, flipped bytes, a pickle that wants to run code: all refused
        text = ANSI.sub("", str(e)).strip()  # torch colours parts of its messages
        reason = text.splitlines()[0][:120] if text else type(e).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a resnets checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnets checkpoint")
    return ckpt


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("iter-*.pt") if (m := NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest(run_dir: Path) -> Path:
    found = checkpoints(run_dir)
    if not found:
        raise UserError(f"no checkpoint in {run_dir}")
    return found[-1]


def build_model(ckpt: dict) -> ResNet:
    """The network a checkpoint describes, with its weights; no flags needed."""
    model = ResNet(ResNetConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model
