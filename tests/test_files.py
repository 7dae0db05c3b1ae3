"""Issue 16, one write path: every file resnets writes goes through files.replacing, which turns a write the machine
refuses (however torch, safetensors or matplotlib wrap the error) into one line, exit status 1, and leaves the
previous file as it was. Simulated (the temp file a link to /dev/full) and on a real full disk (a 3 MB tmpfs,
mounted when the tests run as root)."""

import errno
import faulthandler
import fcntl
import fnmatch
import gc
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from resnets import files
from resnets.cli import main
from resnets.data import load_folder
from resnets.errors import UserError
from resnets.plots import plot_curves
from resnets.rundir import RunDir, load_checkpoint, save_checkpoint
from resnets.serving.export import FORMATS

from .fakedata import make_image_folder
from .test_reliability import assert_same_weights, tiny_args, tiny_reference  # noqa: F401 (a fixture)

METRICS = [{"iteration": i, "train_error": 0.5 / i, "val_top1_error": 0.6 / i} for i in (1, 2, 3)]
# Each writer the project uses, as it calls it, on a file big enough to pass Python's write buffer. (safetensors
# writes a temp file of its own and renames it onto ours, so a link to /dev/full does not stop it: its case is
# test_safetensors_quotes_the_os_error and, on a real full disk, the export below.)
WRITERS = {
    "torch.save": lambda path: save_checkpoint({"w": torch.zeros(100_000)}, path),
    "matplotlib": lambda path: plot_curves(METRICS, path),
    "text": lambda path: files.write_text(path, "x" * 100_000),
}
# How each wraps the kernel's ENOSPC: torch's wrapping hid it from the one-line handler before.
WRAPPED = {"torch.save": RuntimeError, "matplotlib": OSError, "text": OSError}


def _chain(e: BaseException | None) -> list[BaseException]:
    """The exception and those it was raised from or while handling, as a traceback shows them."""
    return [e, *_chain(e.__cause__ or e.__context__)] if e is not None else []


def full(monkeypatch) -> None:
    """Every temp file from now on a link to /dev/full: each write into it fails with ENOSPC from the kernel."""
    def create_temp(path: Path) -> Path:
        tmp = path.with_name(f".{path.name}.full.tmp")
        tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(files, "_create_temp", create_temp)


def read_only(monkeypatch) -> None:
    """Every temp file from now on refused as on a disk mounted read-only."""
    def create_temp(path: Path) -> Path:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(files, "_create_temp", create_temp)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writers_refused_write_is_one_write_failure_and_the_old_file_stays(writer, tmp_path, monkeypatch):
    target = tmp_path / "target.png"
    target.write_bytes(b"the previous file")
    full(monkeypatch)
    with pytest.raises(files.WriteFailure) as caught:
        WRITERS[writer](target)
    assert str(caught.value) == (f"cannot write {target} (No space left on device); the files written before are "
                                 "intact: free some space, then run the command again")
    assert caught.value.exit_status == 1
    chain = _chain(caught.value.__cause__)
    assert any(isinstance(e, WRAPPED[writer]) for e in chain)
    if writer == "torch.save":  # the case: the zip writer's error in front of the OSError
        assert any(isinstance(e, RuntimeError) and "unexpected pos" in str(e) for e in chain)
    assert target.read_bytes() == b"the previous file"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # the temp file is gone


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_is_fsynced_before_its_rename_and_its_folder_after(writer, tmp_path, monkeypatch):
    """RELIABILITY.md's "fsynced": the bytes are on the disk before the file takes its name, and the name (the
    folder's entry) after; without the second, a power cut may bring back the old file or none."""
    target, synced, fsync = tmp_path / "target.png", [], os.fsync

    def spy(fd: int) -> None:
        synced.append((os.fstat(fd).st_ino, target.exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    WRITERS[writer](target)
    assert synced == [(target.stat().st_ino, False), (tmp_path.stat().st_ino, True)]


def test_safetensors_quotes_the_os_error(tmp_path):
    """What safetensors raised on the 3 MB tmpfs of the issue: no OSError, only its text."""
    with (pytest.raises(files.WriteFailure, match="cannot write .*x \\(No space left on device\\); the files"),
          files.replacing(tmp_path / "x")):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert list(tmp_path.iterdir()) == []


def test_other_failures_pass_through_unchanged_and_leave_no_temp_file(tmp_path):
    for error in (ValueError("a bug"), UserError("the check failed")):
        with pytest.raises(type(error), match=str(error)), files.replacing(tmp_path / "x") as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert list(tmp_path.iterdir()) == []


def test_temp_files_match_the_clean_up_pattern_and_a_run_removes_them(tmp_path):
    """A killed write leaves its temp file; the next run in the directory removes it (before, the plot's
    `.curves.png.tmp.png` escaped the pattern)."""
    seen = []
    for name in ("curves.png", "iter-0000008.pt", "metrics.jsonl", "model.onnx"):
        with files.replacing(tmp_path / name) as tmp:
            seen.append(tmp)
            tmp.write_bytes(b"whole")
    assert all(fnmatch.fnmatch(tmp.name, files.TEMP_GLOB) for tmp in seen)
    umask = os.umask(0)
    os.umask(umask)
    with files.replacing(tmp_path / "model.safetensors") as tmp:
        save_file({"w": torch.zeros(3)}, tmp)  # which makes a private (0600) file of its own
    for name in ("curves.png", "model.safetensors"):  # the permissions open() would give
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    (tmp_path / "model.safetensors").unlink()
    for tmp in seen:
        tmp.write_bytes(b"half")  # as a kill in the middle of each write leaves them
    with RunDir(tmp_path).lock():
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "iter-0000008.pt", "metrics.jsonl",
                                                         "model.onnx"]


def test_a_killed_writers_temp_file_goes_with_the_next_write_of_its_file(tmp_path):
    """Issue 39: a kill -9 during `export` left `.NAME.xxxx.tmp` beside the output for good (run directories clean
    theirs on resume). The next write of the same file removes it; a temp file a live writer holds (flock) stays."""
    killed = tmp_path / ".model.onnx.0badc0de.tmp"  # what SIGKILL leaves: nobody holds it
    killed.write_bytes(b"")
    live = tmp_path / ".model.onnx.1234abcd.tmp"  # another process writing the same file right now
    live.write_bytes(b"half")
    other = tmp_path / ".other.onnx.0badc0de.tmp"  # another file's: not this write's business
    other.write_bytes(b"")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        files.write_text(tmp_path / "model.onnx", "whole")
    finally:
        os.close(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "model.onnx"])


def test_exports_and_reports_on_a_read_only_disk_are_one_line_exit_1(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_args(**{"schedule.iterations": 4})]) == 0
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"an older export")
    capsys.readouterr()
    read_only(monkeypatch)
    assert main(["export", str(run), "--out", str(out)]) == 1
    assert f"error: cannot write {out} (Read-only file system); the files written before are intact: write to a " \
           "writable disk, then run the command again" in one_line(capsys)
    assert main(["report", str(run), "--out", str(tmp_path / "report.md")]) == 1
    assert f"error: cannot write {tmp_path / 'report.md'} (Read-only file system)" in one_line(capsys)
    assert out.read_bytes() == b"an older export"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_cache_that_cannot_be_written_is_a_warning_not_the_end(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=8)
    (tmp_path / "cache").mkdir()
    read_only(monkeypatch)
    with pytest.warns(UserWarning, match="cannot cache the decoded images in .* \\(Read-only file system\\); going"):
        assert len(load_folder(root, cache_dir=tmp_path / "cache")) == 6
    assert list((tmp_path / "cache").iterdir()) == []


# ------------------------------------------------------------------------------------- a real full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs at tmp_path/disk, unmounted afterwards; skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=False,
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def leave(disk: Path, free: int) -> None:
    """Fill `disk` (with disk/filler) until `free` bytes are left."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    filler.write_bytes(b"\1" * (st.f_bavail * st.f_frsize - free))


def test_a_full_and_a_read_only_disk_are_one_line_exit_1_and_lose_nothing(small_disk, tiny_reference,  # noqa: F811
                                                                         tmp_path, capsys):
    """The issue's rows on a real filesystem: a run that fills the disk (at its checkpoint, at its plot, at its
    start when resumed), an export onto it, then the disk read-only; resumed with room, the run ends bit-identical
    to one never disturbed."""
    run = small_disk / "run"
    resume = f"then resume with `resnets train --resume {run}`"
    leave(small_disk, 32 << 10)  # room for config.toml and metrics.jsonl, not for a 54 KB checkpoint
    assert main(["train", "--out", str(run), *tiny_args()]) == 1
    err = one_line(capsys)
    assert f"cannot write {run / 'iter-0000004.pt'} (No space left on device)" in err and resume in err
    leave(small_disk, 72 << 10)  # room for the checkpoint, not for the 24 KB curves.png after it
    assert main(["train", "--resume", str(run)]) == 1
    err = one_line(capsys)
    assert f"cannot write {run / 'curves.png'} (No space left on device)" in err and resume in err
    assert [p.name for p in RunDir(run).checkpoints()] == ["iter-0000004.pt"]
    leave(small_disk, 0)  # not even room to rewrite metrics.jsonl at the start
    assert main(["train", "--resume", str(run)]) == 1
    assert f"cannot write {run / 'metrics.jsonl'} (No space left on device)" in one_line(capsys)
    export = small_disk / "model.safetensors"
    (small_disk / "filler").unlink()
    export.write_bytes(b"an older export")
    leave(small_disk, 0)
    assert main(["export", str(run), "--out", str(export)]) == 1
    assert f"cannot write {export} (No space left on device)" in one_line(capsys)
    assert export.read_bytes() == b"an older export"
    assert not [p.name for p in small_disk.rglob(files.TEMP_GLOB)]  # no temp file left by any failed write

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for args, message in [
        (["export", str(run), "--out", str(export)], f"cannot write {export} (Read-only file system)"),
        (["export", str(run), "--out", str(small_disk / "new" / "x.safetensors")],
         f"cannot write {small_disk / 'new' / 'x.safetensors'} (Read-only file system)"),
        (["train", "--resume", str(run)], f"cannot write {run / 'metrics.jsonl'} (Read-only file system)"),
        (["train", "--out", str(small_disk / "run2"), *tiny_args()],
         f"cannot create the run directory {small_disk / 'run2'} (Read-only file system)"),
    ]:
        assert main(args) == 1
        assert message in one_line(capsys)
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    (small_disk / "filler").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_weights(load_checkpoint(run), tiny_reference)
    assert export.read_bytes() == b"an older export"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("small") / "run"
    assert main(["train", "--out", str(run), *tiny_args(**{"schedule.iterations": 4})]) == 0
    return run


def _export(run: Path, out: Path) -> None:
    faulthandler.disable()  # pytest's, inherited: a crash is this test's failure, not a dump on the terminal
    status = main(["export", str(run), "--out", str(out)])
    gc.collect()  # what the end of the process would free (multiprocessing ends its children without it)
    sys.exit(status)


@pytest.mark.parametrize("format", list(FORMATS))
def test_every_export_format_on_a_full_disk_is_one_line_exit_1(format, small_run, small_disk, capfd):
    """In a forked process, so that a writer that crashes instead of raising fails this test, not the suite."""
    out = small_disk / f"model.{format}"
    out.write_bytes(b"an older export")
    leave(small_disk, 0)
    capfd.readouterr()
    child = multiprocessing.get_context("fork").Process(target=_export, args=(small_run, out))
    child.start()
    child.join()
    err = capfd.readouterr().err
    assert child.exitcode == 1, err[-2000:]
    assert err.count("\n") == 1 and f"cannot write {out} (No space left on device)" in err
    assert out.read_bytes() == b"an older export"
    assert not [p.name for p in small_disk.rglob(files.TEMP_GLOB)]
