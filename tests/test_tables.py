"""Issue 17, extension points as single tables: each is where the config's and the CLI's choices come from, and
adding a kind is one entry there (shown here for a block type and a schedule with monkeypatched entries)."""

import argparse
import typing

import pytest
import torch

from resnets import ResNetConfig, UserError, create_model
from resnets.cli import build_parser
from resnets.config import load_config
from resnets.models.blocks import BLOCK_TYPES, SHORTCUT_TYPES, STEMS, BlockType, ConvSpec
from resnets.paper.responses import three_by_three_bns
from resnets.serving.export import FORMATS, RETIRED, export
from resnets.serving.inference import MODES, Mode, fold_batchnorm, prepare
from resnets.serving.predict import predict
from resnets.training.schedule import SCHEDULES, lr_factor


def cli_choices(job: str, flag: str) -> tuple:
    parser = build_parser()
    jobs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(next(a for a in jobs.choices[job]._actions if flag in a.option_strings).choices)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        call(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------------------------------- models/blocks.py

@pytest.mark.parametrize("field, table", [("block", BLOCK_TYPES), ("shortcut", SHORTCUT_TYPES), ("stem", STEMS)])
def test_the_model_configs_choices_are_the_tables_keys(field, table):
    assert typing.get_args(ResNetConfig.__annotations__[field]) == tuple(table)
    message = one_line_error(create_model, "resnet20", **{field: "nope"})
    assert message == f"{field}='nope' is not one of {', '.join(table)}"


def _triple(c, width: int, stride: int) -> list[ConvSpec]:
    return [ConvSpec(3, width, stride), ConvSpec(3, width), ConvSpec(3, width)]


def test_a_new_block_type_is_one_entry(monkeypatch):
    """Three 3x3 convolutions per branch: the network builds, and BN folding and the layer responses (which ask the
    blocks for their conv -> BN pairs) need nothing more."""
    monkeypatch.setitem(BLOCK_TYPES, "triple", BlockType(_triple))
    torch.manual_seed(0)
    model = create_model("resnet20", block="triple", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, folded = model(x), fold_batchnorm(model)(x)
    assert expected.shape == (2, 5) and torch.allclose(folded, expected, atol=1e-5 * expected.abs().max().item())
    assert len(three_by_three_bns(model)) == 1 + 9 * 3  # the stem's, then three per block
    message = one_line_error(create_model, "resnet20", block="triple", groups=2)
    assert message == "groups and width_per_group apply to bottleneck blocks; widen triple blocks with widths"


# ---------------------------------------------------------------------------------------- training/schedule.py

def test_schedule_kinds_are_the_schedule_table(monkeypatch):
    message = one_line_error(load_config, None, ["schedule.kind=constant"])
    assert message == f"schedule.kind='constant' is not one of {', '.join(SCHEDULES)}"
    monkeypatch.setitem(SCHEDULES, "constant", lambda s, it, history: 0.5)
    s = load_config(None, ["schedule.kind=constant", "schedule.warmup_iterations=10"]).schedule
    # Warm-up stays common to every kind; after it, the new entry's function is the lr.
    assert lr_factor(s, 0) == pytest.approx(s.warmup_factor) and lr_factor(s, 10) == lr_factor(s, 10**6) == 0.5


# ------------------------------------------------------------------------------------------ serving/export.py

def test_export_formats_are_the_format_table(tmp_path):
    assert cli_choices("export", "--format") == (*FORMATS, *RETIRED)
    message = one_line_error(export, "resnet20:cifar10", tmp_path / "model.xyz")
    assert message == f"say --format {' or '.join(FORMATS)} (or give --out one of their extensions)"
    assert one_line_error(export, "resnet20:cifar10", tmp_path / "m", "torchscript") == RETIRED["torchscript"]
    assert {f.extension for f in FORMATS.values()} == {f".{name}" for name in FORMATS}
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------- serving/inference.py

def test_inference_modes_are_the_mode_table(tmp_path):
    assert typing.get_args(Mode) == tuple(MODES)
    needs_nothing = tuple(name for name, mode in MODES.items() if not mode.calibrated)
    assert cli_choices("predict", "--mode") == ("auto", *needs_nothing) and "int8" not in needs_nothing
    model = create_model("resnet20")
    assert one_line_error(prepare, model, "fast") == f"unknown inference mode 'fast'; use one of {', '.join(MODES)}"
    for name in needs_nothing:
        assert prepare(model, name).mode == name
    with pytest.raises(UserError, match="int8 needs calibration images"):
        next(predict(model, {"preprocessing": {}, "classes": []}, [tmp_path / "x.png"], mode="int8"))
