"""Issue 17, extension points as single tables: each is where the config's and the CLI's choices come from, and
adding a kind is one entry there (shown here for a block type and a schedule with monkeypatched entries)."""

import argparse
import copy
import typing

import pytest
import torch

from resnets import ResNetConfig, UserError, create_model
from resnets.cli import build_parser
from resnets.config import load_config
from resnets.data import SOURCES, Dataset, FolderDataset, ImageNetFolder, load_digits, load_folder
from resnets.data.sources import load_splits
from resnets.models.blocks import BLOCK_TYPES, SHORTCUT_TYPES, STEMS, BlockType, ConvSpec
from resnets.paper.responses import three_by_three_bns
from resnets.schedule import SCHEDULES, lr_factor
from resnets.serving.export import FORMATS, RETIRED, export
from resnets.serving.inference import MODES, InferenceMode, Mode, fold_batchnorm, prepare
from resnets.serving.predict import predict

from .fakedata import make_cifar_archive, make_image_folder, make_imagenet_folder, write_targz


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


# ------------------------------------------------------------------------------------------------- schedule.py

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

def _float64(model, calibration, keep_float):
    return copy.deepcopy(model).double().eval()


def test_inference_modes_are_the_mode_table(tmp_path, monkeypatch):
    assert typing.get_args(Mode) == tuple(MODES)
    needs_nothing = tuple(name for name, mode in MODES.items() if not mode.calibrated)
    assert cli_choices("predict", "--mode") == ("auto", *needs_nothing) and "int8" not in needs_nothing
    model = create_model("resnet20")
    assert one_line_error(prepare, model, "fast") == f"unknown inference mode 'fast'; use one of {', '.join(MODES)}"
    for name in needs_nothing:
        assert prepare(model, name).mode == name
    with pytest.raises(UserError, match="int8 needs calibration images"):
        next(predict(model, {"preprocessing": {}, "classes": []}, [tmp_path / "x.png"], mode="int8"))
    # What a mode serves is its entry's module: a new mode (float64 here) is one entry.
    monkeypatch.setitem(MODES, "float64", InferenceMode(_float64))
    served, x = prepare(model, "float64"), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert {p.dtype for p in served.module.parameters()} == {torch.float64}
    with torch.no_grad():
        torch.testing.assert_close(served(x), model.eval()(x.float()), rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------------------- data/sources.py

def _datasets(tmp_path) -> dict:
    folder = make_image_folder(tmp_path / "folder", classes=2, per_class=3, size=12)
    imagenet = make_imagenet_folder(tmp_path / "imagenet", classes=2, train_per_class=3, val_per_class=1)
    return {"ArrayDataset": load_digits()[1], "load_folder": load_folder(folder, 8),
            "FolderDataset": FolderDataset(folder, 8), "ImageNetFolder": ImageNetFolder(imagenet / "train", 16, 20)}


@pytest.mark.filterwarnings("ignore:skipped image")  # the fake ImageNet folder's corrupt file
def test_every_dataset_class_satisfies_the_dataset_protocol(tmp_path):
    for name, ds in _datasets(tmp_path).items():
        assert isinstance(ds, Dataset), name
        part = ds.subset(torch.tensor([3, 1]))  # not 0: the fake ImageNet folder's first file is that one
        assert isinstance(part, Dataset) and len(part) == 2 and part.labels.tolist() == ds.labels[[3, 1]].tolist()
        (images, labels), = part.load_batches([torch.tensor([0, 1])])
        assert images.dtype == torch.uint8 and images.shape == (2, *ds.image_shape), name
        assert labels.tolist() == part.labels.tolist() and len(ds.classes) == int(ds.labels.max()) + 1
        sample = ds.sample(3)
        assert isinstance(sample, Dataset) and len(sample) <= max(3, len(ds)) and sample.image_shape == ds.image_shape


def _source(path, data) -> str:
    return next(name for name, source in SOURCES.items() if source.claims(str(path), data))


def test_each_path_is_read_by_its_source(tmp_path):
    data = load_config(None).data
    cifar = make_cifar_archive(tmp_path / "c")
    renamed = tmp_path / "cifar10.tgz"  # CIFAR by its content, not by its name
    renamed.write_bytes(cifar.read_bytes())
    other = write_targz(tmp_path / "images.tar.gz", {"cat/1.png": b"x"})
    folder = make_image_folder(tmp_path / "f", classes=2, per_class=2, size=8)
    split = make_imagenet_folder(tmp_path / "split", classes=2, train_per_class=2, val_per_class=1)
    paths = {"digits": "digits", renamed: "CIFAR", tmp_path / "c": "CIFAR", other: "other archives",
             split: "train/val folders", folder: "image folder"}
    assert {path: _source(path, data) for path in paths} == paths
    assert len(load_splits(str(renamed), data)[0]) == 50
    message = one_line_error(load_splits, str(other), data)
    assert message == (f"{other} is an archive but not CIFAR's (no cifar-10-batches-py or cifar-100-python folder "
                       "first in it): extract it and set data.path to the folder of class folders")
