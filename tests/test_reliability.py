"""Issue 7, nothing lost and nothing let in: faults injected into training runs, bad input to every command.

docs/RELIABILITY.md lists the guarantees and the test that proves each. The tests print their figures (kills
survived, damaged files tried); `pytest tests/test_reliability.py -v -s` shows them.
"""

import errno
import io
import json
import multiprocessing
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tqdm import tqdm

from resnets import files
from resnets.cli import main
from resnets.config import load_config
from resnets.data import FolderDataset, load_train_val
from resnets.data.decode import ImageError, decode_rgb, to_channels
from resnets.errors import UserError
from resnets.rundir import RunDir, load_checkpoint
from resnets.training.loop import train

from .conftest import torch_threads
from .fakedata import Payload

# A 3-block ResNet on the 8x8 digits in fp32 on one thread: fast, and bit-exact from run to run on a CPU.
NET = {"model.depths": [1, 1, 1], "model.widths": [4, 8, 8], "optim.batch_size": 32, "run.precision": "fp32",
       "run.device": "cpu", "schedule.milestones": [20]}
TINY = {**NET, "schedule.iterations": 12, "run.eval_every": 4, "run.keep_checkpoints": 5}  # about a second


def cli_args(overrides: dict) -> list[str]:
    """Overrides as command-line KEY=VALUE arguments."""
    return [f"{k}={v}".replace(" ", "") for k, v in overrides.items()]


def tiny(**overrides):
    return load_config("digits/resnet20", {**TINY, **overrides})


def tiny_args(**overrides) -> list[str]:
    return cli_args({**TINY, **overrides})


# The runs that are killed: 40 iterations with a checkpoint every 2, about 10 s uninterrupted.
RUN = cli_args({**NET, "schedule.iterations": 40, "run.eval_every": 2})


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """The weights after an uninterrupted tiny() run: what every run that was disturbed must end with."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    with torch_threads(1):
        train(tiny(), run)
    return load_checkpoint(run)


def assert_same_weights(ckpt: dict, reference: dict) -> None:
    assert ckpt["iteration"] == reference["iteration"]
    assert ckpt["model"].keys() == reference["model"].keys()
    assert all(torch.equal(ckpt["model"][k], reference["model"][k]) for k in reference["model"])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------- 1. kill at any moment


def _cli(args: list[str], log: str) -> None:
    """`resnets ARGS` in a child process, on one thread, its output appended to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing semaphore, which a killed process cannot unregister: the resource
    # tracker would warn about each at exit. A thread lock does as well here.
    tqdm.set_lock(threading.RLock())
    sys.exit(main(args))


@pytest.fixture(scope="module")
def processes():
    """Processes forked from a server that has imported torch, resnets and sklearn once: a training process then
    starts in a tenth of a second instead of ~5 s, so a test can kill dozens of them."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "resnets.training.loop", "sklearn.datasets", "sklearn.model_selection"])
    return ctx


@pytest.fixture(scope="module")
def reference(processes, tmp_path_factory):
    """The final checkpoint of RUN, uninterrupted."""
    run = tmp_path_factory.mktemp("reference") / "run"
    child = processes.Process(target=_cli, args=(["train", "--out", str(run), *RUN], str(run.parent / "log")))
    child.start()
    child.join()
    assert child.exitcode == 0, (run.parent / "log").read_text()[-2000:]
    return load_checkpoint(run)


def _wait_for_new(run: Path, kind: str, n: int, child, before: set[str]) -> None:
    """Until the child has created its n-th new file of `kind` ("iter-" checkpoints or ".iter-" temp files)."""
    seen = set()
    while child.is_alive():
        names = set(os.listdir(run)) if run.is_dir() else set()
        seen |= {name for name in names - before if name.startswith(kind)}
        if len(seen) >= n:
            return
        time.sleep(0.0005)


def test_sigkill_at_any_moment_loses_nothing(processes, reference, tmp_path):
    """SIGKILL at random moments (start-up, training, evaluation, plotting, inside checkpoint writes) until the
    run completes by `resnets train --resume`: final weights bit-identical to the uninterrupted run."""
    run, log = tmp_path / "run", tmp_path / "log"
    rng = random.Random(7)
    kills, torn, loaded = Counter(), 0, 0
    start_up = 0.3  # seconds from launch to the first new checkpoint, measured below
    for launch in range(200):
        resume = (run / "config.toml").is_file()
        child = processes.Process(target=_cli, args=(["train", "--resume", str(run)] if resume else
                                                     ["train", "--out", str(run), *RUN], str(log)))
        before = set(os.listdir(run)) if run.is_dir() else set()
        moment = ["training", "checkpoint write", "start-up"][launch % 3]
        t = time.perf_counter()
        child.start()
        if moment == "start-up":  # anywhere before the first new checkpoint: imports, data, restore, first steps
            child.join(rng.uniform(0, start_up))
        elif moment == "training":  # after a checkpoint: steps, evaluation, plot, the next checkpoint
            _wait_for_new(run, "iter-", 1, child, before)
            start_up = time.perf_counter() - t
            child.join(rng.uniform(0, 0.5))
        else:  # between creating the temp file and renaming it into place
            _wait_for_new(run, ".iter-", rng.choice([1, 2]), child, before)
        child.kill()
        child.join()
        if child.exitcode == 0:
            break
        assert child.exitcode == -signal.SIGKILL, log.read_text()[-2000:]
        kills[moment] += 1
        torn += moment == "checkpoint write" and any(p.suffix == ".tmp" for p in run.iterdir())
        for path in RunDir(run).checkpoints():  # whatever a loader picks up is whole
            load_checkpoint(path)
            loaded += 1
    else:
        pytest.fail("the run never completed")
    print(f"\n{sum(kills.values())} kills survived ({dict(kills)}; {torn} left a half-written temp file), "
          f"{loaded} checkpoint loads after a kill, {launch + 1} launches")
    assert sum(kills.values()) >= 20 and torn >= 3
    assert_same_weights(load_checkpoint(run), reference)
    assert [m["val_top1_error"] for m in load_checkpoint(run)["history"]] == [
        m["val_top1_error"] for m in reference["history"]]
    assert not [p for p in run.iterdir() if p.suffix == ".tmp"]  # the temp files of killed writes were removed
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 20  # one line per evaluation, none twice
    text = log.read_text()
    assert "resuming" in text and "Traceback" not in text


# --------------------------------------------------------------------- 8. concurrent runs and the run lock


def test_concurrent_runs_do_not_interfere_and_a_shared_run_dir_is_refused(processes, reference, tiny_reference,
                                                                         tmp_path):
    """Two runs side by side, one of them by the real command line (`python -m resnets`, its own interpreter): each
    ends with the weights of the same run undisturbed. Two more pointed at the first one's directory while it
    trains: refused."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    other = subprocess.Popen([sys.executable, "-m", "resnets", "train", "--out", str(tmp_path / "b"), *tiny_args()],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = processes.Process(target=_cli, args=(["train", "--out", str(tmp_path / "a"), *RUN], str(tmp_path / "log")))
    first.start()
    while first.is_alive() and not (tmp_path / "a" / "config.toml").exists():
        time.sleep(0.001)
    intruders = [processes.Process(target=_cli, args=(command, str(tmp_path / f"intruder{i}"))) for i, command in
                 enumerate([["train", "--out", str(tmp_path / "a"), *RUN], ["train", "--resume", str(tmp_path / "a")]])]
    for p in intruders:
        p.start()
        p.join()
    assert first.is_alive()  # the intruders came while it trained
    first.join()
    assert other.wait(timeout=300) == 0, other.stdout.read()
    assert first.exitcode == 0 and [p.exitcode for p in intruders] == [2, 2]
    for i in range(2):
        err = (tmp_path / f"intruder{i}").read_text().splitlines()
        assert err[-1] == f"resnets train: error: another run is writing to {tmp_path / 'a'}; wait for it to end " \
                          "or choose another --out"
    assert_same_weights(load_checkpoint(tmp_path / "a"), reference)
    assert_same_weights(load_checkpoint(tmp_path / "b"), tiny_reference)
    # In one process: the lock is held until train returns, also when it fails.
    with RunDir(tmp_path / "c").lock(), pytest.raises(UserError, match="another run is writing to"):
        train(tiny(), tmp_path / "c")
    with RunDir(tmp_path / "a").lock():  # released again
        pass


# ------------------------------------------------------------------------------ 2. damaged checkpoints


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_damaged_checkpoints_are_refused_never_loaded_wrong(tiny_reference, tmp_path):
    """Truncations and single flipped bits anywhere in a checkpoint: each is refused with one line naming the file,
    or (a flip in zip padding or the archive comment) loads exactly the original contents."""
    run = tmp_path / "run"
    train(tiny(**{"schedule.iterations": 4}), run)
    good = RunDir(run).checkpoints()[-1]
    data, original = good.read_bytes(), load_checkpoint(good)
    rng = random.Random(0)
    variants = [data[:n] for n in [0, 1, 100, *rng.sample(range(len(data)), 40), len(data) - 1]]
    truncated = len(variants)
    for _ in range(300):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        variants.append(bytes(flipped))
    outcome = Counter()
    bad = tmp_path / "bad.pt"
    for content in variants:
        bad.write_bytes(content)
        try:
            loaded = load_checkpoint(bad)
        except UserError as e:
            assert str(bad) in str(e) and "\n" not in str(e)
            outcome["refused"] += 1
        else:
            assert _same(loaded, original)
            outcome["loaded identical"] += 1
    print(f"\n{len(variants)} damaged checkpoints ({truncated} truncated, {len(variants) - truncated} with one "
          f"flipped bit): {dict(outcome)}")
    assert outcome["refused"] >= 300


def test_resume_falls_back_past_damaged_and_foreign_checkpoints(tiny_reference, tmp_path, capsys):
    """The newest checkpoint flipped in one tensor byte (torch.load alone would load it), then one of another run:
    resume says which and why, goes on from the newest good one and ends bit-identical."""
    other = tmp_path / "other"
    train(tiny(**{"model.widths": [4, 8, 16], "schedule.iterations": 4}), other)
    run = tmp_path / "run"
    train(tiny(), run)
    (run / "iter-0000012.pt").unlink()  # stopped after iteration 8 ...
    ckpt8 = run / "iter-0000008.pt"
    fc = load_checkpoint(ckpt8)["model"]["fc.weight"]
    data = bytearray(ckpt8.read_bytes())
    data[data.index(fc.numpy().tobytes()[:64]) + 5] ^= 0x10  # ... and one bit of one fc weight flipped since
    ckpt8.write_bytes(bytes(data))
    assert not torch.equal(torch.load(ckpt8, weights_only=True)["model"]["fc.weight"], fc)  # torch.load takes it
    (RunDir(other).checkpoints()[-1]).rename(run / "iter-0000009.pt")
    capsys.readouterr()
    train(tiny(), run, resume=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"warning: {run / 'iter-0000009.pt'} was written with a different config; trying the previous " \
                     "checkpoint"
    assert out[1].startswith(f"warning: checkpoint {ckpt8} is corrupt (archive/data/") and "CRC-32" in out[1]
    assert out[2] == f"resuming {run} from iteration 4 (iter-0000004.pt)"
    assert_same_weights(load_checkpoint(run), tiny_reference)


def test_a_class_count_that_does_not_match_the_checkpoint(tmp_path, capsys):
    """The data gained a class since the run started, or a class was renamed: resume refuses in one line about the
    data (issue 39: it blamed each checkpoint in turn, then found "no usable checkpoint"; a renamed class resumed,
    mislabelled); eval of a folder whose classes the checkpoint lacks too."""
    from .fakedata import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=8)
    args = [f"data.path={root}", "data.val_split=3", "data.cache_dir=",
            *tiny_args(**{"schedule.iterations": 4, "run.eval_every": 2, "optim.batch_size": 4})]
    assert main(["train", "--out", str(tmp_path / "run"), *args]) == 0
    make_image_folder(tmp_path / "more", classes=4, per_class=4, size=8)
    (tmp_path / "more" / "c3").rename(root / "c3")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert capsys.readouterr() == ("", (f"resnets train: error: data.path {root} holds 4 classes (c0, c1, c2, ... (4)) "
                                       "but the run was trained on 3 (c0, c1, c2): resume it with the data it was "
                                       "trained on\n"))
    assert main(["eval", str(tmp_path / "run"), "--data", str(root)]) == 2
    assert "classes c3 are not among the model's 3 classes" in one_line_error(capsys)
    (root / "c3").rename(tmp_path / "c3")
    (root / "c2").rename(root / "c2-renamed")  # as many classes, not the same ones
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "holds 3 classes (c0, c1, c2-renamed) but the run was trained on 3 (c0, c1, c2)" in one_line_error(capsys)


# ----------------------------------------------------------------------- 3. disk full, unwritable folder


def _failing_writes(monkeypatch, name: str, error: int, calls_before: int = 0) -> None:
    """Make the write of file `name` fail after `calls_before` good ones: ENOSPC from the kernel itself (the temp
    file is a link to /dev/full, so every writer, torch's zip writer included, fails as on a full disk), or EACCES
    as from a folder made read-only (chmod cannot simulate that for root, who may run the tests)."""
    real, calls = files._create_temp, Counter()

    def create_temp(path: Path) -> Path:
        if path.name == name:
            calls[name] += 1
            if calls[name] > calls_before:
                tmp = path.with_name(f".{path.name}.full.tmp")
                if error == errno.EACCES:
                    raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
                tmp.symlink_to("/dev/full")
                return tmp
        return real(path)

    monkeypatch.setattr(files, "_create_temp", create_temp)


@pytest.mark.parametrize("name, error, calls_before, kept", [
    ("iter-0000008.pt", errno.ENOSPC, 0, 1),  # the disk fills while the second checkpoint is written
    ("metrics.jsonl", errno.ENOSPC, 2, 1),  # ... while the log gets its line for iteration 8
    ("curves.png", errno.ENOSPC, 0, 1),  # ... while the first plot is drawn, after the first checkpoint
    ("iter-0000008.pt", errno.EACCES, 0, 1),  # the folder turns read-only
    ("config.toml", errno.EACCES, 0, 0),  # the folder is read-only from the start
])
def test_a_failed_write_is_one_line_and_loses_nothing(tiny_reference, tmp_path, monkeypatch, capsys,
                                                      name, error, calls_before, kept):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _failing_writes(m, name, error, calls_before)
        assert main(["train", "--out", str(run), *tiny_args()]) == 1  # the machine's failure, not the command's
    err = one_line_error(capsys)
    assert f"cannot write {run / name} ({os.strerror(error)})" in err
    assert ("resume with `resnets train --resume" if kept else "run again") in err
    assert [p.name for p in RunDir(run).checkpoints()] == ["iter-0000004.pt"][:kept]
    if kept:
        assert load_checkpoint(run)["iteration"] == 4
        assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp file left
        assert main(["train", "--resume", str(run)]) == 0
    else:
        assert not run.exists()  # nothing was written, so nothing is left
        assert main(["train", "--out", str(run), *tiny_args()]) == 0
    assert_same_weights(load_checkpoint(run), tiny_reference)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_folder_is_one_line(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o500)
    assert main(["train", "--out", str(parent / "run"), *tiny_args()]) == 1
    assert f"cannot create the run directory {parent / 'run'} (Permission denied)" in one_line_error(capsys)


# --------------------------------------------------------------------------------- 4. non-finite loss


@pytest.mark.parametrize("eval_every, caught_at, kind, good", [
    (8, 10, "training", 8),  # the every-10-steps check, before the evaluation at 16 could save anything
    (3, 9, "validation", 6),  # step 9 broke the weights; the training loss (of steps 7-9) was still finite
])
def test_a_diverging_run_stops_keeping_the_last_good_checkpoint(tmp_path, capsys, eval_every, caught_at, kind, good):
    # lr 0.1 for 8 warm-up steps, then 1e30: the weights overflow at step 9.
    overrides = {"optim.lr": 1e30, "schedule.warmup_iterations": 8, "schedule.warmup_factor": 1e-31,
                 "schedule.iterations": 40, "run.eval_every": eval_every, "schedule.milestones": [40]}
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_args(**overrides)]) == 2
    err = one_line_error(capsys)
    assert re.search(f"the {kind} loss became (nan|inf) by iteration {caught_at}; stopped without saving", err)
    assert f"(the newest checkpoint, iter-{good:07d}.pt, is from before)" in err
    assert RunDir(run).checkpoints()[-1].name == f"iter-{good:07d}.pt"
    ckpt = load_checkpoint(run)
    assert all(torch.isfinite(w).all() for w in ckpt["model"].values()) and ckpt["iteration"] == good
    assert len((run / "metrics.jsonl").read_text().splitlines()) == good // eval_every


# ------------------------------------------------------------------------------------------ 5. bad data


def _bad_data(root: Path) -> dict[str, list[str]]:
    """root/train/c0..c2 + root/val (no c1) of 8x8 images, with every kind of awkward file among them."""
    rng = np.random.default_rng(0)

    def pixels(*shape):
        return rng.integers(0, 256, (8, 8, *shape), dtype=np.uint8)

    for split, classes in (("train", ["c0", "c1", "c2"]), ("val", ["c0", "c2"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(pixels(3)).save(root / split / c / f"{i}.png")
    c0 = root / "train" / "c0"
    jpeg = io.BytesIO()
    Image.fromarray(pixels(3)).save(jpeg, "JPEG")
    unreadable = {"truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "empty.jpg": b"",
                  "text.png": b"not an image", "html.jpeg": b"<html>404 not found</html>"}
    for name, content in unreadable.items():
        (c0 / name).write_bytes(content)
    converted = {
        "png_named.jpg": (Image.fromarray(pixels(3)), "PNG"), "gray.png": (Image.fromarray(pixels()), None),
        "cmyk.jpg": (Image.fromarray(pixels(3)).convert("CMYK"), None),
        "rgba.png": (Image.fromarray(pixels(4), "RGBA"), None),
        "la.png": (Image.fromarray(pixels()).convert("LA"), None),
        "palette.gif": (Image.fromarray(pixels(3)).convert("P"), None),
        "bits.bmp": (Image.fromarray(pixels() > 127), None),
        "gray16.png": (Image.fromarray(pixels().astype(np.uint16) * 257), None),
        "gray16.tif": (Image.fromarray(pixels().astype(np.uint16) * 257), None),
        "cmyk.tif": (Image.fromarray(pixels(3)).convert("CMYK"), None),
    }
    for name, (image, format) in converted.items():
        image.save(c0 / name, format)
    (c0 / "notes.txt").write_text("not an image extension: not looked at")
    (c0 / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "empty_class").mkdir()
    (root / "train" / "empty_class" / "readme.txt").write_text("no images here")
    return {"unreadable": [str(c0 / n) for n in unreadable], "converted": [str(c0 / n) for n in converted]}


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_bad_data_is_converted_skipped_or_refused_before_training(tmp_path, capsys, loader):
    files = _bad_data(tmp_path / "data")
    args = [f"data.path={tmp_path / 'data'}", "data.image_size=8", "data.cache_dir=", f"data.loader={loader}",
            "data.workers=1", "data.pad=0", *tiny_args(**{"schedule.iterations": 6, "run.eval_every": 3,
                                                         "optim.batch_size": 8})]
    with pytest.warns(UserWarning) as caught:
        assert main(["train", "--out", str(tmp_path / "run"), *args]) == 0
    warned = "\n".join(str(w.message) for w in caught)
    # Streamed, the files are counted before they are read (issue 39: unreadable ones were counted as images).
    listed = 3 * 6 + len(files["unreadable"]) + len(files["converted"])
    assert (f"training resnet20 on {listed} image files (3 classes), validating on 12; streamed: files that cannot be "
            "read are skipped as they are met;" if loader == "stream" else
            f"training resnet20 on {listed - len(files['unreadable'])} images (3 classes), validating on 12;"
            ) in capsys.readouterr().out
    assert f"skipped 1 class folder(s) without images: {tmp_path / 'data' / 'train' / 'empty_class'}" in warned
    assert f"{tmp_path / 'data' / 'val'} has no images of 1 of the 3 classes (c1)" in warned
    if loader == "memory":
        assert f"skipped 4 of the 32 image files in {tmp_path / 'data' / 'train'}: 4 unreadable: " in warned
    else:  # streamed: each unreadable file is named once (when first drawn) and replaced by the next readable one
        reported = [re.fullmatch(r"skipped image (.+): unreadable \((\d+) so far in .+\)", str(w.message))
                    for w in caught if str(w.message).startswith("skipped image ")]
        # Each of the 4, once: the first epoch draws all 32 files (4 batches of 8).
        assert sorted(m[1] for m in reported) == sorted(files["unreadable"])
        assert [int(m[2]) for m in reported] == [1, 2, 3, 4]
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["classes"] == ["c0", "c1", "c2"] and ckpt["iteration"] == 6
    print(f"\n{loader}: {len(files['unreadable'])} unreadable files skipped, {len(files['converted'])} converted, "
          "1 empty class folder skipped, 1 class missing from val")

    # Every file reads as 3 x 8 x 8 uint8, in streamed order, with no exception: no crash mid-epoch.
    with pytest.warns(UserWarning):
        ds = FolderDataset(tmp_path / "data" / "train", 8)
    with pytest.warns(UserWarning):
        batches = list(ds.load_batches([torch.arange(len(ds))]))
    assert batches[0][0].shape == (len(ds), 3, 8, 8) and batches[0][0].dtype == torch.uint8
    # Validation is labelled by class name: c2 is label 2 although val has only c0 and c2.
    cfg = load_config(None, {"data.path": str(tmp_path / "data"), "data.image_size": 8, "data.cache_dir": ""})
    with pytest.warns(UserWarning):
        _, val = load_train_val(cfg.data)
    assert val.classes == ["c0", "c1", "c2"] and sorted(set(val.labels.tolist())) == [0, 2]
    # A validation class that training lacks: refused before training starts, naming the folder.
    (tmp_path / "data" / "val" / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "val" / "zebra" / "z.png")
    capsys.readouterr()
    with pytest.warns(UserWarning):
        assert main(["train", "--out", str(tmp_path / "run2"), *args]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'data' / 'val'} has class folders that training lacks (zebra)" in err
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_eval_val_split_scores_the_images_the_run_held_out_among_unreadable_files(tmp_path, capsys, loader):
    """Issue 39: `eval --val-split` (which streams the folder) scored other images than a run that read the folder
    into memory had held out, since that run drew them from the readable files alone. Both draw from every file
    listed now, and leave the unreadable ones among them out: the same images, the same count and error."""
    from .fakedata import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=3, per_class=8, size=8)
    for i in range(5):
        (root / "c1" / f"broken{i}.png").write_bytes(b"not an image")
    run = tmp_path / "run"
    args = [f"data.path={root}", "data.val_split=10", "data.cache_dir=", f"data.loader={loader}", "data.workers=1",
            *tiny_args(**{"schedule.iterations": 2, "run.eval_every": 2, "optim.batch_size": 4})]
    with pytest.warns(UserWarning, match="broken"):
        assert main(["train", "--out", str(run), *args]) == 0
    last = RunDir(run).metrics()[-1]
    capsys.readouterr()
    with pytest.warns(UserWarning, match="broken"):  # some of the 10 held-out files are among the broken ones
        assert main(["eval", str(run), "--data", str(root), "--val-split", "10", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["images"] == last["val_images"] < 10
    assert scored["top1_error"] == last["val_top1_error"]
    assert scored["loss"] == pytest.approx(last["val_loss"], rel=1e-5)


def test_16_bit_images_are_scaled_not_clipped_whichever_library_decodes_them(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):  # torchvision decodes the PNG, Pillow the TIFF
        Image.fromarray(values).save(tmp_path / name)
        decoded = decode_rgb(tmp_path / name)
        assert decoded.dtype == torch.uint8 and decoded.shape == (3, 1, 4)
        assert decoded[0, 0].tolist() == [0, 1, 128, 255] and torch.equal(decoded[0], decoded[2])
        assert to_channels(decoded, 1)[0, 0].tolist() == [0, 1, 128, 255]  # a grey network's input


# ----------------------------------------------------------------------------------- 6. untrusted files


def test_a_malicious_checkpoint_runs_nothing(tiny_reference, tmp_path, capsys):
    """train --resume and eval meet a pickle that would create a file (predict and export: test_export.py)."""
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    train(tiny(), run)
    for later in RunDir(run).checkpoints()[1:]:
        later.unlink()
    evil = {**load_checkpoint(run), "model": Payload(marker)}
    torch.save(evil, run / "iter-0000012.pt")  # a valid zip with a valid CRC: only weights_only stops it
    (run / "iter-0000011.pt").write_bytes(pickle.dumps(evil, protocol=2))  # a bare pickle
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    capsys.readouterr()
    for path, reason in [("run/iter-0000012.pt", ("was refused: it holds Python objects other than tensors (io.open), "
                                                 "and loading them could run code, which resnets never does")),
                         ("run/iter-0000011.pt", "File is not a zip file"),
                         ("garbage.safetensors", "is a damaged")]:
        assert main(["eval", str(tmp_path / path), "--data", "digits"]) == 2
        assert reason in one_line_error(capsys)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("warning:") == 2 and "resuming" in out and "from iteration 4" in out
    assert not marker.exists()
    assert_same_weights(load_checkpoint(run / "iter-0000012.pt"), tiny_reference)  # the real one replaced it
    pickle.loads(pickle.dumps(Payload(marker))).close()  # the test's own check: plain pickle runs the payload
    assert marker.exists()


# ---------------------------------------------------------------------------------------- 7. bad commands


@pytest.mark.parametrize("args, message", [
    (["train", "optim.momentun=0.9"], "unknown config key 'optim.momentun'; did you mean optim.momentum"),
    (["train", "--recipe", "cifar10/resnet21"], "no recipe 'cifar10/resnet21'; did you mean"),
    (["train", "model.num_classes=5"], "model.num_classes is taken from the data"),
    (["train", "run.eval_every=0"], "run.eval_every must be at least 1, got 0"),
    (["train", "run.keep_checkpoints=0"], "run.keep_checkpoints must be at least 1, got 0"),
    (["train", "optim.batch_size=-8"], "optim.batch_size must be at least 1"),
    (["train", "run.device=tpu"], "unknown device 'tpu'"),
    (["train", "data.path=missing/folder"], "data path missing/folder does not exist"),
])
def test_more_bad_commands_are_one_line_exit_2(args, message, tmp_path, monkeypatch, capsys):
    """Beyond test_train.py's test_bad_commands_are_one_line_exit_2 (unknown model, wrong type, no data, ...)."""
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # no run directory left behind


def test_resume_with_another_config_and_debug(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_args(**{"schedule.iterations": 4})]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "optim.lr=0.2", "run.eval_every=3"]) == 2
    assert (f"{run} was started with a different config (optim.lr=0.1 (now 0.2), run.eval_every=4 (now 3)); "
            "resume with the run's own config.toml") in one_line_error(capsys)
    assert main(["--debug", "train", "--resume", str(run), "optim.lr=0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "check_config" in err
    assert err.splitlines()[-1].startswith(f"resnets train: error: {run} was started with a different config")


def test_a_run_moved_to_another_folder_and_device_resumes_where_its_images_now_are(tmp_path):
    """A run started on one machine (a GPU, say) and finished on another: its images in another folder there, read
    by another number of workers. Those keys may change on resume, the run's config.toml records them, and the
    result is the uninterrupted run's bit for bit; what the run trains may not change."""
    from .fakedata import make_image_folder

    first = make_image_folder(tmp_path / "first", classes=3, per_class=6, size=8)
    args = [f"data.path={first}", "data.val_split=3", "data.cache_dir=",
            *tiny_args(**{"schedule.iterations": 4, "run.eval_every": 2, "optim.batch_size": 4})]
    with torch_threads(1):
        assert main(["train", "--out", str(tmp_path / "whole"), *args]) == 0
        assert main(["train", "--out", str(tmp_path / "moved"), *args]) == 0
    moved = RunDir(tmp_path / "moved")
    moved.checkpoint_file(4).unlink()  # stopped after iteration 2
    there = first.rename(tmp_path / "there")
    with torch_threads(1):
        assert main(["train", "--resume", str(moved.path), f"data.path={there}", "data.workers=1"]) == 0
    assert_same_weights(load_checkpoint(moved.path), load_checkpoint(tmp_path / "whole"))
    assert moved.config().data.path == str(there) and moved.config().data.workers == 1
    assert main(["train", "--resume", str(moved.path), "data.val_split=2"]) == 2


def test_a_decompression_bomb_in_a_training_folder_is_skipped_before_it_is_decoded(tmp_path):
    """64 million pixels in a few kilobytes: readable, but 192 MB once decoded; refused from its header."""
    from resnets.data import ImageNetFolder, load_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8), c == "a" and "red" or "blue").save(tmp_path / c / "ok.png")
    bomb = tmp_path / "a" / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageError, match="8000x8000 is 64,000,000 pixels, over the limit of 50,000,000 .*: refused "
                                         "as a possible decompression bomb"):
        decode_rgb(bomb)
    with pytest.warns(UserWarning, match=f"skipped 1 of the 3 image files in .*: 1 over 50,000,000 pixels, refused "
                                         f"as a possible decompression bomb: {re.escape(str(bomb))}$"):
        assert len(load_folder(tmp_path, image_size=8)) == 2
    views = ImageNetFolder(tmp_path, crop=8, resize=8)
    labels = [views[i][1] for i in range(len(views))]
    assert sorted(labels) == [-1, 0, 1]  # counted out of an evaluation


# ------------------------------------------------------------------- issue 39: a hostile new user's 278 tries


# `resnets ARGS` in a fresh interpreter whose every temp file is a link to /dev/full (test_files.full).
ON_A_FULL_DISK = ("import sys\nfrom resnets import files\nfrom resnets.cli import main\n"
                  "def full(path):\n    tmp = path.with_name(f'.{path.name}.full.tmp')\n"
                  "    tmp.symlink_to('/dev/full')\n    return tmp\n"
                  "files._create_temp = full\nsys.exit(main(sys.argv[1:]))\n")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny() run directory (12 iterations, a checkpoint every 4)."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    with torch_threads(1):
        train(tiny(), run)
    return run


def test_a_pt2_export_onto_a_full_disk_is_one_line_not_an_abort(tiny_run, tmp_path):
    """torch's zip writer, refused a write, threw again from its destructor when the interpreter ended: C++
    terminate, exit 134, after the right line. In a fresh interpreter (a forked child ends without running it)."""
    out = tmp_path / "b.pt2"
    done = subprocess.run([sys.executable, "-c", ON_A_FULL_DISK, "export", str(tiny_run), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                          check=False)
    assert (done.returncode, done.stderr) == (1, (f"resnets export: error: cannot write {out} (No space left on "
                                                 "device); the files written before are intact: free some space, "
                                                 "then run the command again\n"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reader", ["/dev/full", "gone"])
def test_an_output_that_refuses_writes_is_one_line_and_a_reader_gone_is_quiet(tiny_run, digits_png, monkeypatch,
                                                                              capsys, reader):
    """`predict --json > /dev/full` printed a traceback; `predict | head -n 1` a BrokenPipeError traceback. Now: one
    line, exit 1; or nothing, as cat says nothing, and the status a shell gives cat there (128 + SIGPIPE)."""
    if reader == "gone":  # a pipe whose reader has closed it: `| head -n 0`
        read, write = os.pipe()
        os.close(read)
        stdout = open(write, "w")  # noqa: SIM115 (closed by the with below)
    else:
        stdout = open(reader, "w")  # noqa: SIM115
    monkeypatch.setattr(sys, "stdout", stdout)
    with stdout:
        status = main(["predict", str(tiny_run), str(digits_png), *(["--json"] if reader == "/dev/full" else [])])
    if reader == "gone":
        assert (status, capsys.readouterr().err) == (128 + signal.SIGPIPE, "")
    else:
        assert (status, one_line_error(capsys)) == (1, ("resnets predict: error: cannot write the standard output (No "
                                                       "space left on device); what was written is cut short: free "
                                                       "some space, then run the command again\n"))


@pytest.fixture
def digits_png(tmp_path) -> Path:
    Image.new("L", (8, 8), 200).save(tmp_path / "x.png")
    return tmp_path / "x.png"


def _misleading(run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    """The issue's commands that said something false or beside the point, and the one line each says now."""
    (tmp / "exported.pt2").write_bytes(b"PK\3\4 a torch.export archive")
    (tmp / "a_file").write_text("")
    ckpt = run / "iter-0000012.pt"
    return [
        (["train", "--resume", str(ckpt)], (f"{ckpt} is a checkpoint, not a run directory: resume its run with "
                                           f"--resume {run}, which goes on from the newest usable checkpoint")),
        (["train", "--resume", str(run), "--out", str(tmp / "other")], ("--resume continues a run in its own "
                                                                       "directory; drop --out")),
        (["train", "--out", str(tmp / "a_file"), *tiny_args()], (f"cannot create the run directory {tmp / 'a_file'}: "
                                                                "a file is in the way; choose another --out")),
        (["eval", str(tmp / "exported.pt2"), "--data", "digits"], (f"{tmp / 'exported.pt2'} is a pt2 export, which "
                                                                  "resnets does not read back: run it with "
                                                                  "torch.export.load")),
        (["eval", str(run), "--data", "digits", "--split-seed", "3"], ("--split-seed says which images --val-split N "
                                                                      "holds out; give --val-split too")),
        (["predict", "--model", "resnet20", "x.png"], ("resnet20 does not exist; packaged weights are named "
                                                      "NETWORK:DATASET (resnet20:cifar10, ")),
        (["predict", "--model", "resnet20:cifar10"], ("name the images (files or folders) to classify after "
                                                     "resnet20:cifar10")),
        (["predict"], ("name the network (a checkpoint, run directory, .safetensors export, or --model "
                      "NETWORK:DATASET), then the images to classify")),
        (["export", str(run), "--out", str(tmp / "r.onnx"), "--format", "safetensors"],
         (f"--out {tmp / 'r.onnx'} has the extension of onnx files but --format is safetensors: give it the "
         ".safetensors extension, or drop --format")),
        (["embed", str(run), "x.png", "--out", str(tmp / "feat.txt")], (f"--out {tmp / 'feat.txt'}: embed writes a "
                                                                        "NumPy .npy file; give it a .npy name")),
        *([] if torch.cuda.is_available() else [
            (["predict", str(run), "x.png", "--device", "cuda"], ("--device cuda but no CUDA device is available; use "
                                                                 "--device cpu"))]),
    ]


def test_misleading_messages_now_say_what_is_wrong(tiny_run, tmp_path, capsys):
    for args, message in _misleading(tiny_run, tmp_path):
        assert main(args) == 2, args
        err = one_line_error(capsys)
        assert err.startswith(f"resnets {args[0]}: error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "exported.pt2"]  # nothing written


def test_a_refused_pickle_says_code_was_refused_and_no_reason_is_cut_mid_word(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(tmp_path / "pwned")}, evil)
    assert main(["eval", str(evil), "--data", "digits"]) == 2
    assert one_line_error(capsys) == (f"resnets eval: error: checkpoint {evil} was refused: it holds Python objects "
                                      "other than tensors (io.open), and loading them could run code, which resnets "
                                      "never does; a resnets checkpoint holds only tensors and plain values\n")
    from resnets.errors import first_line

    assert first_line(ValueError("a reason of many words " * 9), 30) == "a reason of many words a ..."


def test_resuming_a_finished_run_says_so_and_adds_no_leg(tiny_run, capsys):
    legs = RunDir(tiny_run).legs()
    capsys.readouterr()
    assert main(["train", "--resume", str(tiny_run)]) == 0
    assert capsys.readouterr().out == f"{tiny_run} is finished: iteration 12 of 12; nothing to resume\n"
    assert RunDir(tiny_run).legs() == legs


def test_one_channel_rule_eval_and_predict_convert_images_training_does_not(tiny_run, tmp_path, capsys):
    """A grey (digits) network: eval and predict bring RGB images to its channel; fine-tuning it on RGB images is
    refused, saying so (it advised setting model.name, which cannot help)."""
    from .fakedata import make_image_folder

    root = make_image_folder(tmp_path / "rgb", classes=2, per_class=4, size=8)
    for k in range(2):
        (root / f"c{k}").rename(root / str(k))  # two of the digits' classes, as RGB images
    capsys.readouterr()
    assert main(["eval", str(tiny_run), "--data", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 8
    assert main(["predict", str(tiny_run), str(root / "0" / "0.png")]) == 0
    args = [f"model.init={tiny_run}", f"data.path={root}", "data.val_split=2", "data.cache_dir=",
            *tiny_args(**{"optim.batch_size": 4})]
    assert main(["train", "--out", str(tmp_path / "ft"), *args]) == 2
    assert (f"model.init {tiny_run} was trained on 1-channel (grey) images and the data holds RGB ones: a run trains "
            "on its data's channels (eval and predict convert images, training does not)") in one_line_error(capsys)


def test_an_epoch_schedule_says_it_counts_epochs(tmp_path, capsys):
    """schedule.unit=epoch (the finetune recipes') makes schedule.iterations count epochs: the first line says so."""
    assert main(["train", "--out", str(tmp_path / "run"), *tiny_args(**{"schedule.unit": "epoch",
                 "schedule.iterations": 1, "run.eval_every": 1, "schedule.milestones": [1]})]) == 0
    steps = re.search(r"; 1 epochs \(schedule\.unit=epoch\) = (\d+) iterations of 32;", capsys.readouterr().out)
    assert int(steps[1]) == RunDir(tmp_path / "run").metrics()[-1]["iteration"] > 1


def test_predict_does_not_wait_on_a_named_pipe(tiny_run, tmp_path, capsys):
    """A FIFO named explicitly blocked forever (one inside a scanned folder is skipped): reported, not read."""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    unblock = threading.Timer(20, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))
    unblock.start()  # should the old behaviour come back: the test fails instead of hanging
    start = time.perf_counter()
    try:
        assert main(["predict", str(tiny_run), str(fifo)]) == 1
    finally:
        unblock.cancel()
    assert time.perf_counter() - start < 15
    assert f"{fifo}: not a regular file (a named pipe, socket or device): not read" in one_line_error(capsys)
