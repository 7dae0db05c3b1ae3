"""Issue 16, nothing false on the terminal: names from checkpoints and folders printed with their control characters
escaped (predict, eval, train and their warnings), exact in --json; warnings as one plain line."""

import json
import logging
import os
import sys
import warnings

import numpy as np
from PIL import Image

from resnets.cli import main
from resnets.rundir import load_checkpoint
from resnets.terminal import plain, shown

from .test_reliability import tiny_args

# Class names that, printed raw, colour the terminal, set its title, rewrite the line or print a fake result line.
HOSTILE = ["\x1b[31mred\x1b[0m", "two\nfake.png: 7 1.000", "\x1b]0;title\x07", "back\rspace"]


def test_shown_escapes_what_is_not_printable_and_keeps_the_rest():
    assert shown("cat") == "cat" and shown("chat noir, 猫 é") == "chat noir, 猫 é"
    assert shown("\x1b[31mred\nx\ty\rz\x07") == "\\x1b[31mred\\nx\\ty\\rz\\x07"
    assert shown("evil\u202egnp.exe") == "evil\\u202egnp.exe"  # right-to-left override
    assert shown(os.fsdecode(b"caf\xe9.png")) == "caf\\udce9.png"  # a byte that is not UTF-8


def _image(path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, "PNG")


def _stderr_as_a_terminal_shows_it(monkeypatch) -> None:
    """Warnings written to stderr in the form the user sees (pytest records them instead)."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)


def test_hostile_names_are_escaped_in_text_and_exact_in_json(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    for c, name in enumerate(HOSTILE[:2]):
        (data / name).mkdir(parents=True)
        for i in range(4):
            _image(data / name / f"{i}.png", 10 * c + i)
    (data / HOSTILE[0] / "\x1b[2Jbroken\n.png").write_bytes(b"not an image")
    run = tmp_path / "run"
    args = [f"data.path={data}", "data.val_split=2", "data.cache_dir=", "data.image_size=8",
            *tiny_args(**{"schedule.iterations": 2, "run.eval_every": 2, "optim.batch_size": 4})]
    _stderr_as_a_terminal_shows_it(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["train", "--out", str(run), *args]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "UserWarning" not in err and "warnings.warn" not in err
    assert f"image files in {data}: 1 unreadable: {data}/\\x1b[31mred\\x1b[0m/\\x1b[2Jbroken\\n.png\n" in err
    assert load_checkpoint(run)["classes"] == sorted(HOSTILE[:2])  # stored exactly

    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["\x1b[2Jclear.png", "fake\nline.png", os.fsdecode(b"caf\xe9.png")]
    for i, name in enumerate(names):
        _image(photos / name, i)
    (photos / "evil\x1b[31m.png").write_text("not an image")
    assert main(["predict", str(run), str(photos), "--top-k", "2"]) == 1
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\r" not in out + err
    assert out.count("\n") == 3 and err.count("\n") == 1  # a line per image, none made up by a name
    assert f"{photos}/\\x1b[2Jclear.png: " in out and f"{photos}/caf\\udce9.png: " in out
    assert "\\x1b[31mred\\x1b[0m 0." in out and "two\\nfake.png: 7 1.000 0." in out
    assert err == f"resnets predict: error: {photos}/evil\\x1b[31m.png: not an image (or a format Pillow cannot read)\n"

    assert main(["predict", str(run), str(photos), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["path"] for r in lines) == sorted(str(photos / n) for n in [*names, "evil\x1b[31m.png"])
    assert {t["class"] for r in lines if "top" in r for t in r["top"]} == set(HOSTILE[:2])

    (tmp_path / "other" / HOSTILE[2]).mkdir(parents=True)
    _image(tmp_path / "other" / HOSTILE[2] / "x.png", 0)
    assert main(["eval", str(run), "--data", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err == "resnets eval: error: classes \\x1b]0;title\\x07 are not among the model's 2 classes\n"


def test_warnings_are_one_plain_line_and_the_cuda_notice_is_quiet(capsys):
    """Inside a command: no `file:line: UserWarning:` and source line; torch's CPU-only CUDA notice (logged when
    Inductor first compiles, e.g. `predict --mode compiled`) left out, its other messages kept."""
    probe = logging.getLogger("torch.utils.cpp_extension")
    with plain():
        text = warnings.formatwarning(UserWarning("skipped \x1b[2J1 image"), UserWarning, "/x/folders.py", 7, "code")
        assert text == "warning: skipped \\x1b[2J1 image\n"
        assert not probe.filter(logging.LogRecord(probe.name, logging.WARNING, "", 0,
                                                  "No CUDA runtime is found, using CUDA_HOME='%s'", ("/usr",), None))
        assert probe.filter(logging.LogRecord(probe.name, logging.WARNING, "", 0, "something else", (), None))
    assert "UserWarning" in warnings.formatwarning(UserWarning("x"), UserWarning, "f.py", 1, "code")  # restored
    assert probe.filter(logging.LogRecord(probe.name, logging.WARNING, "", 0, "No CUDA runtime is found", (), None))


def test_a_run_of_several_processes_warns_once_by_rank_0(monkeypatch):
    """Issue 39: every process of a run read the same folder and said the same warnings (twice, two processes);
    rank 0 alone says them, as it alone prints."""
    for rank, said in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with plain():
                warnings.warn("skipped 1 of the 9 image files", UserWarning, stacklevel=1)
        assert len(caught) == said


def test_run_directory_names_are_escaped_by_train_experiment_report_and_responses(tmp_path, capsys):
    """Issue 39: `report`, `experiment` and `responses` printed a run directory's name raw, and `train` its --out."""
    out = tmp_path / "exp\x1b[31m"
    assert main(["experiment", "degradation", "--depths", "20", "--family", "cifar10", "--out", str(out), "--data",
                 "digits", "--val-split", "0", "--schedule", "cpu", "schedule.iterations=2", "run.eval_every=2",
                 "model.widths=[4,8,8]", "model.depths=[1,1,1]"]) == 0
    runs = [str(out / "plain20-seed0"), str(out / "resnet20-seed0")]
    assert main(["report", str(out)]) == 0
    assert main(["experiment", "responses", *runs, "--images", "20", "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert "\x1b" not in text.out + text.err
    assert text.out.count(f"run directory {shown(out)}/") == 2  # train's first lines, in the experiment
    assert text.out.count(f"| {shown(out)}/plain20-seed0 |") == 2  # the report's row and the responses' row
    assert f"wrote {shown(out)}/responses.md" in text.out
    assert [r["run"] for r in json.loads((out / "responses.json").read_text())] == runs  # exact in JSON
