"""The networks shipped inside the package (resnets.models.pretrained): they load offline, without pickle, and score
what their model cards say on the shared CIFAR-10 images (those tests skip where the images are absent)."""

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from resnets import UserError, create_model, load_model
from resnets.cli import main
from resnets.data import split_validation
from resnets.data.folders import scan_folder
from resnets.models import pretrained

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg-train.tar.gz"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHIPPED = sorted(pretrained.PRETRAINED)


@pytest.fixture(scope="module")
def cifar10_jpg(tmp_path_factory):
    """The 50,000 shared training images unpacked (train/<class>/NNNN.jpg); a skip where they are absent."""
    if not ARCHIVE.is_file():
        pytest.skip(f"the shared CIFAR-10 images are not at {ARCHIVE}")
    root = tmp_path_factory.mktemp("cifar10-jpg")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root / "train"


def test_the_finished_table6_networks_are_shipped_with_their_cards():
    assert {"resnet20:cifar10", "resnet32:cifar10", "resnet56:cifar10"} <= set(SHIPPED)
    card = (Path(__file__).resolve().parents[1] / "docs" / "PRETRAINED.md").read_text()
    for name, entry in pretrained.PRETRAINED.items():
        assert f"`{name}`" in card and f"{entry.heldout_top1_error:.2%}" in card


@pytest.mark.parametrize("name", SHIPPED)
def test_packaged_weights_load_offline_as_the_preset(name):
    network, dataset = name.split(":")
    model = create_model(network, pretrained=dataset)
    assert model.training  # like every new module; load_model gives eval mode
    fresh = create_model(network)
    assert model.config == fresh.config
    trained, info = load_model(name)
    assert not trained.training and info["classes"] == CIFAR10
    for key, value in trained.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
        if value.is_floating_point() and value.numel() > 1:
            assert value.dtype == torch.float32 and not torch.equal(value, fresh.state_dict()[key]), key


def test_wrong_names_and_options_are_one_line_errors():
    with pytest.raises(UserError, match="no packaged weights named 'resnet1202:cifar10' .*shipped: resnet20:cifar10, "):
        create_model("resnet1202", pretrained="cifar10")
    with pytest.raises(UserError, match="no packaged weights named 'resnet20:imagenet'"):
        load_model("resnet20:imagenet")
    with pytest.raises(UserError, match="num_classes=10, not 100: leave num_classes out"):
        create_model("resnet20", num_classes=100, pretrained="cifar10")


def test_damaged_packaged_weights_are_refused(monkeypatch):
    entry = pretrained.PRETRAINED["resnet20:cifar10"]
    monkeypatch.setitem(pretrained.PRETRAINED, "resnet20:cifar10", replace(entry, sha256="0" * 64))
    with pytest.raises(UserError, match=r"damaged \(.* fails its sha256\): reinstall resnets"):
        load_model("resnet20:cifar10")


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("resnet20:cifar10").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="resnet20:cifar10 is corrupt or not a resnets checkpoint"):
        load_model("resnet20:cifar10")


def held_out(root: Path, entry, n: int) -> list[tuple[Path, str]]:
    """The first n images (path, class) of those the run behind `entry` held out, found as the trainer finds them."""
    paths, labels, classes = scan_folder(root)

    class Listing:  # split_validation needs listing() and subset()
        def listing(self):
            return torch.arange(len(paths)), len(paths)

        def subset(self, index):
            return index

    _, index = split_validation(Listing(), entry.val_split, entry.split_seed)
    return [(paths[i], classes[labels[i]]) for i in index[:n].tolist()]


@pytest.mark.parametrize("name", SHIPPED)
def test_packaged_weights_classify_held_out_images(name, cifar10_jpg, capsys):
    entry = pretrained.PRETRAINED[name]
    images = held_out(cifar10_jpg, entry, 50)
    assert main(["predict", "--model", name, *(str(p) for p, _ in images), "--json", "--top-k", "1"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    correct = sum(a["top"][0]["class"] == label for a, (_, label) in zip(answers, images, strict=True))
    # 50 images it never trained on; no more than twice the card's error (at 9%, 41 of 50 or better).
    assert correct >= round(50 * (1 - 2 * entry.heldout_top1_error))


@pytest.mark.parametrize("name", SHIPPED)
def test_stated_held_out_error_is_what_eval_computes(name, cifar10_jpg, capsys):
    """The card's command (`resnets eval NAME --data ... --val-split 5000`, in fp32), one image either way for
    another CPU's rounding."""
    entry = pretrained.PRETRAINED[name]
    assert main(["eval", name, "--data", str(cifar10_jpg), "--val-split", str(entry.val_split),
                 "--split-seed", str(entry.split_seed), "--precision", "fp32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["protocol"], result["images"]) == ("center", entry.val_split)
    assert result["top1_error"] == pytest.approx(entry.heldout_top1_error, abs=1.5 / entry.val_split)
