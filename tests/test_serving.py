"""The serving contract: the Preprocessing that travels with the weights, eval as a library function, checkpoints
from before the contract, and serving without the trainer."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnets
from resnets import UserError, load_model
from resnets.cli import main
from resnets.data import load_digits, normalize
from resnets.data.decode import decode_rgb, to_mode
from resnets.data.folders import resize_center_crop
from resnets.preprocessing import Preprocessing
from resnets.rundir import RunDir, load_checkpoint, save_checkpoint
from resnets.serving.evaluate import evaluate, evaluate_checkpoint
from resnets.serving.export import export

from .fakedata import make_imagenet_folder
from .test_predict import train_briefly


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_briefly(tmp_path_factory.mktemp("serving") / "run")


def per_pixel(channels: int = 1, size: int = 8) -> Preprocessing:
    torch.manual_seed(0)
    return Preprocessing(torch.rand(channels, size, size), torch.ones(channels, 1, 1), input_size=size, resize=size,
                         in_channels=channels)


def test_a_checkpoints_dict_round_trips_and_old_ones_read():
    pre = per_pixel()
    stored = pre.to_dict()
    assert list(stored) == ["mean", "std", "input_size", "resize", "in_channels"]  # as checkpoints always held it
    assert Preprocessing.from_dict(stored) == pre and hash(Preprocessing.from_dict(stored)) == hash(pre)
    # Written before `resize` was recorded: trained on images of input_size.
    old = {k: v for k, v in stored.items() if k != "resize"}
    assert Preprocessing.from_dict(old).resize == 8 and Preprocessing.from_dict(old) == pre
    # ONNX / pt2 metadata: mean and std as nested lists in JSON, the same values.
    as_json = json.loads(json.dumps({k: v.tolist() if torch.is_tensor(v) else v for k, v in stored.items()}))
    assert Preprocessing.from_dict(as_json) == pre
    # torchvision publishes flat per-channel lists: (C, 1, 1).
    flat = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), input_size=224, resize=256, in_channels=3)
    assert flat.mean.shape == (3, 1, 1) and flat.shape == (3, 224, 224) and flat != pre
    with pytest.raises(UserError, match="lacks in_channels"):
        Preprocessing.from_dict({"mean": [0.5], "std": [1.0], "input_size": 8})


def test_preprocessing_is_frozen_and_owns_its_tensors():
    mean = torch.zeros(1, 8, 8)
    pre = Preprocessing(mean, torch.ones(1, 1, 1), input_size=8, resize=8, in_channels=1)
    mean += 1  # the tensor it was made from changes; it does not
    assert pre.mean.sum() == 0
    pre.to_dict()["mean"] += 1  # nor through the dict it gives
    assert pre.mean.sum() == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.resize = 9
    assert dataclasses.replace(pre, resize=9) != pre and len({pre, dataclasses.replace(pre)}) == 1


def old_predict_input(path: Path, pre: dict) -> torch.Tensor:
    """What predict fed the network before the serving contract: Pillow's decoding in the network's mode,
    resize and centre crop, then the normalisation."""
    with Image.open(path) as image:
        pixels = torch.from_numpy(np.array(to_mode(image, "L" if pre["in_channels"] == 1 else "RGB")))
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    return normalize(resize_center_crop(pixels, pre["resize"], pre["input_size"]), pre["mean"], pre["std"])


@pytest.mark.parametrize("channels", [1, 3])
def test_calling_it_on_a_decoded_image_gives_what_predict_gave(tmp_path, channels):
    """Every mode ImageNet holds (RGB, grey and CMYK JPEG, RGBA and 16-bit PNG, palette GIF, BMP), non-square,
    brought to a grey or a colour network: the very floats of the old predict."""
    root = make_imagenet_folder(tmp_path / "imagenet", classes=1, train_per_class=7, val_per_class=0)
    files = sorted(p for p in (root / "train").rglob("*.*") if p.name != "corrupt.JPEG")
    torch.manual_seed(0)
    stored = {"mean": torch.rand(channels, 1, 1), "std": torch.rand(channels, 1, 1) + 0.5, "input_size": 32,
              "resize": 36, "in_channels": channels}
    pre = Preprocessing.from_dict(stored)
    assert {Image.open(p).mode for p in files} >= {"RGB", "L", "CMYK", "RGBA", "I;16", "P"}
    for path in files:
        x = pre(decode_rgb(path))
        assert x.dtype == torch.float32 and x.shape == pre.shape
        assert torch.equal(x, old_predict_input(path, stored)), path


def test_evaluate_checkpoint_is_what_eval_prints(run, capsys):
    results = evaluate_checkpoint(run, "digits")
    assert [r["protocol"] for r in results] == ["center"] and results[0]["images"] == 360
    model, info = load_model(run)
    _, test = load_digits()
    pre = info["preprocessing"]
    direct = evaluate(model, test, pre.mean, pre.std, torch.device("cpu"))
    assert results[0] == {"protocol": "center", **{k: direct[k] for k in ("top1_error", "top5_error", "images",
                                                                          "loss")}}
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "digits", "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == results
    with pytest.raises(UserError, match="needs an image folder"):
        evaluate_checkpoint(run, "digits", ["10crop"])
    with pytest.raises(UserError, match="unknown test protocol 5crop"):
        evaluate_checkpoint(run, "digits", ["center", "5crop"])


def test_a_checkpoint_from_before_resize_was_recorded_serves(run, tmp_path, capsys):
    """The preprocessing of the first checkpoints lacked `resize`: eval, predict and export read them all the same."""
    ckpt = load_checkpoint(run)
    ckpt["preprocessing"] = {k: v for k, v in ckpt["preprocessing"].items() if k != "resize"}
    old = tmp_path / "old"
    old.mkdir()
    save_checkpoint(ckpt, old / RunDir(run).latest().name)
    _, info = load_model(old)
    assert info["preprocessing"] == load_model(run)[1]["preprocessing"] and info["preprocessing"].resize == 8
    assert evaluate_checkpoint(old, "digits") == evaluate_checkpoint(run, "digits")
    image = tmp_path / "digit.png"
    Image.fromarray(load_digits()[1].images[0, 0].numpy()).save(image)
    capsys.readouterr()
    assert main(["predict", str(old), str(image), "--json", "--mode", "fp32"]) == 0
    assert main(["predict", str(run), str(image), "--json", "--mode", "fp32"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == second
    assert export(old, tmp_path / "old.safetensors")["max_abs_diff"] == 0
    assert load_model(tmp_path / "old.safetensors")[1]["preprocessing"].resize == 8


def test_serving_does_not_import_the_trainer(run, tmp_path):
    """eval, predict, embed and export as commands, in a fresh process: the training loop is never imported."""
    image = tmp_path / "digit.png"
    Image.fromarray(load_digits()[1].images[0, 0].numpy()).save(image)
    code = (
        "import sys\n"
        "from resnets.cli import main\n"
        "from resnets.serving import embed, evaluate, export, predict, weights\n"
        "run, image, out = sys.argv[1:]\n"
        "assert main(['eval', run, '--data', 'digits']) == 0\n"
        "assert main(['predict', run, image, '--mode', 'fp32']) == 0\n"
        "assert main(['embed', run, image, '--json']) == 0\n"
        "assert main(['export', run, '--out', out]) == 0\n"
        "trainer = [m for m in ('resnets.training.loop', 'resnets.training.finetune') if m in sys.modules]\n"
        "assert not trainer, trainer\n"
    )
    src = str(Path(resnets.__file__).parents[1])  # this tree's resnets, whatever is installed
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(run), str(image), str(tmp_path / "m.safetensors")],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
