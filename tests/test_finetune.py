"""Issue 18: fine-tune a trained ResNet on your own images (model.init, model.freeze, the backbone's lr, embed)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from resnets import create_model, load_model
from resnets.cli import main
from resnets.config import load_config
from resnets.data import load_folder
from resnets.errors import UserError
from resnets.rundir import RunDir, load_checkpoint, save_checkpoint
from resnets.serving.export import export
from resnets.training import finetune
from resnets.training.loop import train

from .conftest import torch_threads
from .fakedata import make_image_folder
from .scripts import load_study

ROOT = Path(__file__).parent.parent


def finetuning(init, data: Path, **overrides):
    """finetune/resnet20 on a 3-class folder of 18 images (6 held out), 6 steps of 8: seconds."""
    base = {"model.init": str(init), "data.path": str(data), "data.val_split": 6, "data.cache_dir": "",
            "optim.batch_size": 8, "schedule.unit": "iteration", "schedule.iterations": 6,
            "schedule.warmup_iterations": 2, "run.eval_every": 3, "run.keep_checkpoints": 5}
    return load_config("finetune/resnet20", {**base, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The new task: 3 classes (c0, c1, c2) of 32x32 RGB images."""
    return make_image_folder(tmp_path_factory.mktemp("task") / "task", classes=3, per_class=6, size=32)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 'trained' ResNet-20 of ours: 4 classes of 32x32 images, 4 steps (its weights, BN statistics and per-pixel
    mean are no longer the initial ones)."""
    root = make_image_folder(tmp_path_factory.mktemp("source") / "images", classes=4, per_class=6, size=32)
    cfg = load_config("cifar10/resnet20", {"data.path": str(root), "data.val_split": 4, "data.cache_dir": "",
                                           "optim.batch_size": 8, "schedule.iterations": 4, "run.eval_every": 4})
    run = tmp_path_factory.mktemp("source") / "run"
    with torch_threads(1):
        train(cfg, run)
    return run


def trained(run: Path) -> dict:
    return load_checkpoint(run)["model"]


def test_torchvision_weights_start_a_finetuning_run(tmp_path, data, monkeypatch, capsys):
    """A torchvision file (torchvision's own module, random weights) loads: every backbone tensor as in the file at
    step 0, a new 3-class classifier, torchvision's ImageNet statistics."""
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "resnet18-random.pth")
    at_start = {}
    start = finetune.start

    def spy(cfg, model, train_set, init):  # the model as the first step will find it
        stats = start(cfg, model, train_set, init)
        at_start.update({k: v.clone() for k, v in model.state_dict().items()})
        return stats

    monkeypatch.setattr(finetune, "start", spy)
    cfg = finetuning(tmp_path / "resnet18-random.pth", data, **{"model.name": "resnet18"})
    train(cfg, tmp_path / "run")
    backbone = [k for k in weights if not k.startswith("fc.")]
    assert len(backbone) == 120 and all(torch.equal(at_start[k], weights[k]) for k in backbone)
    assert at_start["fc.weight"].shape == (3, 512) and weights["fc.weight"].shape == (1000, 512)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["model_config"]["num_classes"] == 3 and ckpt["classes"] == ["c0", "c1", "c2"]
    assert ckpt["preprocessing"]["mean"].flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    out = capsys.readouterr().out
    assert "120 tensors (11,176,512 parameters) from torchvision weights" in out
    assert "new, freshly initialised: fc.weight, fc.bias (3 classes; the weights' classifier had 1000)" in out
    assert "the weights' own statistics (per-channel" in out


def test_our_checkpoint_keeps_its_statistics_unless_asked(tmp_path, data, source):
    """The per-pixel mean the source was trained with, not one of the new images; data.stats=data re-estimates."""
    train(finetuning(source, data), tmp_path / "kept")
    assert torch.equal(load_checkpoint(tmp_path / "kept")["preprocessing"]["mean"],
                       load_checkpoint(source)["preprocessing"]["mean"])
    train(finetuning(source, data, **{"data.stats": "data"}), tmp_path / "new")
    images = load_folder(data, 32).images  # data.val_split holds out 6 of them: the mean is of the other 12
    new = load_checkpoint(tmp_path / "new")["preprocessing"]["mean"]
    assert not torch.equal(new, load_checkpoint(source)["preprocessing"]["mean"])
    assert (new - images.double().mean(0) / 255).abs().max() < 0.2


@pytest.mark.parametrize("overrides, message", [
    ({"model.name": "resnet32"}, "does not fit resnet32: they have no layer1.3.conv1.weight"),
    ({"model.name": "plain20"}, "does not fit plain20: they were trained as shortcut='A', this run builds 'none'"),
    ({"model.shortcut": "C"}, "does not fit resnet20: they have no layer1.0.downsample.0.weight"),
])
def test_another_architecture_is_one_line_exit_2(tmp_path, data, source, overrides, message, capsys):
    args = [f"{k}={v}" for k, v in {**overrides, "model.init": source, "data.path": data, "data.val_split": 6,
                                      "data.cache_dir": '""', "optim.batch_size": 8}.items()]
    assert main(["train", "--recipe", "finetune/resnet20", *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_safetensors_export_a_checkpoint_and_a_run_directory_give_the_same_init(tmp_path, source):
    export(source, tmp_path / "source.safetensors")
    inits = [finetune.read(str(p)) for p in (tmp_path / "source.safetensors", RunDir(source).latest(), source)]
    for other in inits[1:]:
        assert other.classes == inits[0].classes and other.config == inits[0].config
        assert other.preprocessing == inits[0].preprocessing
        assert other.state.keys() == inits[0].state.keys()
        assert all(torch.equal(other.state[k], inits[0].state[k]) for k in other.state)


def test_a_wrong_init_fails_before_the_data_is_read(tmp_path, capsys):
    assert main(["train", "--recipe", "finetune/resnet20", "init=/no/such/run", "data.path=/no/such/folder",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "resnets train: error: checkpoint /no/such/run does not exist\n"


def test_torchvision_shapes_and_stride_are_checked(tmp_path, data):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(UserError, match=r"their conv1.weight is \(64, 3, 7, 7\), resnet20's \(16, 3, 3, 3\)"):
        train(finetuning(tmp_path / "resnet18.pth", data), tmp_path / "run")
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(UserError, match="stride on the 3x3 .* set model.stride_in_1x1=false"):
        train(finetuning(tmp_path / "resnet50.pth", data, **{"model.name": "resnet50"}), tmp_path / "run")
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(UserError, match="junk.pth") as e:
        train(finetuning(tmp_path / "junk.pth", data), tmp_path / "run")
    assert "\n" not in str(e.value)


def test_files_without_bn_step_counters_load(tmp_path):
    """torchvision's first weights files predate BN's num_batches_tracked; load_state_dict takes them, so do we."""
    weights = {k: v for k, v in torchvision.models.resnet18().state_dict().items()
               if not k.endswith("num_batches_tracked")}
    torch.save(weights, tmp_path / "old.pth")
    model = create_model("resnet18", num_classes=3)
    new = finetune.load_weights(finetune.read(str(tmp_path / "old.pth")), model, ["a", "b", "c"], "resnet18")
    assert new == ["fc.weight", "fc.bias"] and torch.equal(model.layer4[1].bn2.running_var, weights["layer4.1.bn2.running_var"])


def test_a_per_pixel_mean_needs_images_of_its_size(tmp_path, data, source):
    with pytest.raises(UserError, match=r"per-pixel mean of 32x32 images, and this data gives 16x16.*data.stats=data"):
        train(finetuning(source, data, **{"data.image_size": 16}), tmp_path / "run")


@pytest.mark.parametrize("stages", [1, 3])
def test_freeze_leaves_frozen_weights_and_bn_statistics_bit_identical(tmp_path, data, source, stages, capsys):
    train(finetuning(source, data, **{"model.freeze": stages}), tmp_path / "run")
    before, after = trained(source), trained(tmp_path / "run")
    frozen = ("conv1.", "bn1.", *(f"layer{i}." for i in range(1, stages + 1)))
    fixed = [k for k in after if k.startswith(frozen)]
    assert any(k.endswith("running_var") for k in fixed) and any(k.endswith("num_batches_tracked") for k in fixed)
    assert all(torch.equal(before[k], after[k]) for k in fixed)
    learned = [k for k in after if not k.startswith(frozen) and not k.startswith("fc.")]
    assert len(learned) == {1: 72, 3: 0}[stages]  # layer2 and layer3's, or none
    assert all(not torch.equal(before[k], after[k]) for k in learned if k.endswith(("weight", "running_mean")))
    assert f"model.freeze={stages}: stem and layer1" in capsys.readouterr().out


def test_the_backbone_learns_at_a_fraction_of_the_lr(tmp_path, data, source):
    train(finetuning(source, data, **{"optim.backbone_lr_factor": 0.1}), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    groups = ckpt["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == [57, 2]  # the 57 tensors before fc, then fc
    # The lrs of the last step: the classifier's is the run's (its metrics' "lr"), the backbone's a tenth of it.
    assert groups[1]["lr"] == ckpt["history"][-1]["lr"] > 0
    assert groups[0]["lr"] == pytest.approx(0.1 * groups[1]["lr"])


def test_finetuning_resumes_bit_exactly_without_the_init(tmp_path, data, source):
    """Resuming needs only the run's own checkpoint: the weights it started from may be gone."""
    reference = tmp_path / "reference"
    train(finetuning(source, data, **{"model.freeze": 1}), reference)
    init = shutil.copytree(source, tmp_path / "init")
    interrupted = tmp_path / "interrupted"
    cfg = finetuning(init, data, **{"model.freeze": 1})
    train(cfg, interrupted)
    for later in RunDir(interrupted).checkpoints()[1:]:
        later.unlink()  # as if killed just after iteration 3's checkpoint
    shutil.rmtree(init)
    train(cfg, interrupted, resume=True)
    a, b = load_checkpoint(reference), load_checkpoint(interrupted)
    assert a["iteration"] == b["iteration"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [m["val_loss"] for m in a["history"]] == [m["val_loss"] for m in b["history"]]


def test_checkpoints_from_before_finetuning_still_resume(tmp_path):
    """A run written before the fine-tuning keys existed: its config.toml and checkpoints lack them."""
    from .test_train import tiny

    added = {"model": ("init", "freeze"), "data": ("stats",), "optim": ("backbone_lr_factor",)}
    short = {"schedule.iterations": 8, "run.eval_every": 4, "schedule.milestones": [6]}
    train(tiny(**short), tmp_path / "reference")
    old = tmp_path / "old"
    train(tiny(**short), old)
    for later in RunDir(old).checkpoints()[1:]:
        later.unlink()
    (path,) = RunDir(old).checkpoints()
    state = load_checkpoint(path)
    for section, keys in added.items():
        for key in keys:
            del state["config"][section][key]
    save_checkpoint(state, path)
    text = (old / "config.toml").read_text()
    (old / "config.toml").write_text(re.sub(r"^(init|freeze|stats|backbone_lr_factor) = .*\n", "", text, flags=re.MULTILINE))
    train(load_config(old / "config.toml"), old, resume=True)
    a, b = load_checkpoint(tmp_path / "reference"), load_checkpoint(old)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_embed_gives_the_pooled_features_of_forward_features(tmp_path, source, capsys):
    images = make_image_folder(tmp_path / "images", classes=2, per_class=3, size=40, extras=True)
    capsys.readouterr()
    assert main(["embed", str(source), str(images), "--out", str(tmp_path / "f.npy"), "--batch-size", "4"]) == 1
    out, err = capsys.readouterr()
    # 6 noise images, a grey BMP, an RGBA PNG, a palette GIF and a truncated JPEG (notes.txt is no image file).
    assert "10 images x 64 features" in out and "1 unreadable: rows of NaN" in out
    assert err.count("\n") == 1 and "corrupt.jpg" in err
    features = np.load(tmp_path / "f.npy")
    assert main(["embed", str(source), str(images), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    readable = [i for i, line in enumerate(lines) if "features" in line]
    assert len(lines) == 10 and len(readable) == 9 and np.isnan(features[[i for i in range(10) if i not in readable]]).all()
    # The same rows from the model directly: forward_features, then the global average pool.
    model, info = load_model(source)
    from resnets.serving.predict import read_batches

    (_, decoded), = read_batches([Path(lines[i]["path"]) for i in readable], info["preprocessing"], 64)
    x = info["preprocessing"].normalize(torch.stack(decoded))
    with torch.no_grad():
        expected = model.avgpool(model.forward_features(x)).flatten(1)
    torch.testing.assert_close(torch.from_numpy(features[readable]), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor([lines[i]["features"] for i in readable]), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit):  # argparse: one of --out and --json is required
        main(["embed", str(source), str(images)])


def test_the_worked_example_runs_and_its_figure_is_in_docs(tmp_path, source):
    """docs/FINETUNE.md's worked example: its command at a fraction of its size (20 + 20 images per task, 2 steps
    per run) makes the table and the picture; docs/ holds the real ones, and the page shows the figure."""
    example = load_study("finetune_example")
    cifar = make_image_folder(tmp_path / "cifar", classes=2, per_class=30, size=32)
    example.main(["--init", str(source), "--cifar", str(cifar), "--cifar-held-out", "40", "--train", "20",
                  "--held-out", "20", "--runs", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                  "schedule.unit=iteration", "schedule.iterations=2", "schedule.warmup_iterations=1",
                  "run.eval_every=2", "optim.batch_size=8"])
    table = (tmp_path / "docs" / "finetune_example.md").read_text()
    assert table.count("| finetuned |") == 2 and table.count("| scratch | random |") == 2
    assert (tmp_path / "docs" / "finetune_example.png").stat().st_size > 1000
    upside = tmp_path / "runs" / "upside_down" / "images"
    assert [len(list((upside / s / c).iterdir())) for s in ("train", "val") for c in ("upright", "upside_down")] == [
        10, 10, 10, 10]
    page = (ROOT / "docs" / "FINETUNE.md").read_text()
    assert "python studies/finetune_example.py" in page and "](results/finetune_example.png)" in page
    assert (ROOT / "docs" / "results" / "finetune_example.png").is_file()


def test_shipped_weights_start_a_finetuning_run(tmp_path, data):
    """model.init=resnet20:cifar10: the packaged network under a new 3-class classifier; with every stage frozen its
    backbone, BN statistics included, ends as shipped, and the run normalises with the shipped per-pixel mean."""
    run = tmp_path / "run"
    train(finetuning("resnet20:cifar10", data, **{"model.freeze": 3}), run)
    shipped, info = load_model("resnet20:cifar10")
    ckpt = load_checkpoint(run)
    assert ckpt["model"]["fc.weight"].shape == (3, shipped.num_features)
    for key, value in shipped.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ckpt["model"][key], value), key
    assert torch.equal(ckpt["preprocessing"]["mean"], info["preprocessing"].mean)
