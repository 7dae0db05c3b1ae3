"""Issue 16, front-door manners: --version, --debug anywhere, --help-keys with the recipe's values, and the
mistakes a new user makes answered with one line that says what to do."""

import pytest
import torch
from PIL import Image

import resnets
from resnets.cli import main

from .fakedata import make_image_folder
from .test_reliability import tiny_args


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"resnets {resnets.__version__} (torch {torch.__version__})\n"


@pytest.mark.parametrize("args", [["--debug", "train", "lr=-1"], ["train", "lr=-1", "--debug"],
                                  ["train", "--debug", "lr=-1"]])
def test_debug_anywhere_on_the_line(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback")
    assert err.endswith("resnets train: error: optim.lr must be in (0, 3.4e38], got -1.0\n")


def test_help_keys_shows_what_the_command_would_train_with(capsys):
    assert main(["train", "--help-keys"]) == 0
    default = capsys.readouterr().out.splitlines()
    assert "schedule.iterations = 1500" in default and "data.pad = 1" in default  # digits/resnet20's, not 64000
    assert main(["train", "--recipe", "cifar10/resnet110", "lr=0.05", "--help-keys"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert {"schedule.iterations = 64000", "schedule.warmup_iterations = 400", "optim.lr = 0.05",
            "model.name = 'resnet110'"} <= set(out)
    assert out[-1].startswith("model.<option> = any of block, depths")


def test_overrides_may_follow_options(capsys):
    assert main(["train", "--recipe", "cifar10/resnet110", "optim.lr=0.05", "--help-keys", "schedule.iterations=7"]) == 0
    assert {"optim.lr = 0.05", "schedule.iterations = 7"} <= set(capsys.readouterr().out.splitlines())
    with pytest.raises(SystemExit) as exit:
        main(["train", "--recipe", "cifar10/resnet110", "--help-keys", "--no-such-option"])
    assert exit.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_one_class_and_an_image_file_as_data_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    one = make_image_folder(tmp_path / "one", classes=1, per_class=3, size=8)
    image = next((one / "c0").iterdir())
    monkeypatch.chdir(tmp_path)
    cases = [(f"data.path={one}", (f"{one} holds one class (c0); a classifier needs two or more: point data.path "
                                   "at the folder whose subfolders are the classes")),
             (f"data.path={image}", (f"image folder {image} is a file, not a folder of class folders; expected "
                                     "root/<class>/<image> files"))]
    for override, message in cases:
        assert main(["train", override, "data.val_split=1", "data.cache_dir=", *tiny_args()]) == 2
        assert capsys.readouterr().err == f"resnets train: error: {message}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["one"]  # no run directory left behind


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_max_pixels_must_be_a_positive_integer(value, tmp_path, capsys):
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit) as exit:
        main(["predict", str(tmp_path), str(tmp_path / "x.png"), "--max-pixels", value])
    assert exit.value.code == 2
    wanted = "expected an integer" + (" of at least 1" if value != "lots" else "")
    assert f"resnets predict: error: argument --max-pixels: {wanted}, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["-5", "0"])
def test_summary_input_size_must_be_a_positive_integer(size, capsys):
    """Issue 39: -5 gave a 26-line traceback (a negative dimension), 0 quietly meant the default."""
    with pytest.raises(SystemExit) as exit:
        main(["summary", "resnet20", "--input-size", size])
    assert exit.value.code == 2
    assert f"argument --input-size: expected an integer of at least 1, got '{size}'" in capsys.readouterr().err


def test_resume_of_a_run_killed_before_it_started_says_to_run_it_again(tmp_path, capsys):
    """A kill during start-up, before config.toml: the run directory holds at most a temp file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.toml.0123abcd.tmp").write_text("[model")
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"resnets train: error: {run} has no config.toml: not a run directory, or its run was stopped before it "
        f"started; start it again with the command that started it, with --out {run}\n")
    assert main(["train", "--out", str(run), *tiny_args(**{"schedule.iterations": 2, "run.eval_every": 2})]) == 0
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'} is not a run directory: it does not exist" in capsys.readouterr().err
