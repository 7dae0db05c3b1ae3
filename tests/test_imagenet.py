"""The paper's ImageNet recipe, its input pipeline and its test protocols, on a tiny generated ImageNet."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from resnets import create_model
from resnets.cli import main
from resnets.config import ScheduleSection, load_config
from resnets.data import ArrayDataset, BatchLoader, ImageNetFolder, normalize
from resnets.data.decode import ImageError, decode_rgb
from resnets.data.imagenet import EIGVAL, EIGVEC, lighting, scale_crop_flip
from resnets.errors import UserError
from resnets.rundir import RunDir, load_checkpoint
from resnets.schedule import in_iterations, lr_factor, plateaus
from resnets.serving.evaluate import evaluate, image_scores
from resnets.training.loop import train

from .fakedata import make_imagenet_folder

IMAGENET = ["plain18", "plain34", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
# The recipe's sizes scaled down 7x (224 -> 32) so that a CPU trains it in seconds; docs/IMAGENET.md has the
# full-size commands, which are these without this line.
SMALL = ["data.crop=32", "data.scale=[36,64]", "data.resize=36", "run.precision=fp32"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: measured here, ResNet-18 steps 40x faster


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"))


# ------------------------------------------------------------------------------------------------- recipe


def test_imagenet_recipes_are_the_papers():
    for name in IMAGENET:
        cfg = load_config(f"imagenet/{name}", {"data.path": "x"})
        d, o, s = cfg.data, cfg.optim, cfg.schedule
        assert (d.crop, d.scale, d.resize, d.flip, d.lighting, d.pad, d.normalize) == (
            224, [256, 480], 256, True, 0.1, 0, "pixel_mean")
        assert (o.batch_size, o.lr, o.momentum, o.weight_decay, o.nesterov, o.label_smoothing) == (
            256, 0.1, 0.9, 1e-4, False, 0.0)
        assert (s.kind, s.unit, s.iterations, s.gamma, s.milestones) == ("plateau", "epoch", 120, 0.1, [30, 60])
        model = cfg.model_config(1000, 3)
        assert model.dropout == 0 and model.stem == "imagenet" and model.stride_in_1x1
        assert model.shortcut == {"plain18": "none", "plain34": "none", "resnet18": "A"}.get(name, "B")
        assert cfg.paper.top1_error > 20 and "10-crop" in cfg.paper.source


def test_batch_and_lr_scale_with_processes_and_warm_up():
    """One process: the paper, lr 0.1 flat until the plateaus. N: lr N x 0.1, reached linearly over 5 epochs."""
    s = in_iterations(load_config("imagenet/resnet50", {"data.path": "x"}).schedule, per_epoch=5000)
    assert (s.iterations, s.warmup_iterations, s.milestones) == (600_000, 25_000, [150_000, 300_000])
    lr = {world: [0.1 * world * lr_factor(s, it, [], world) for it in (0, 12_500, 25_000, 400_000)] for world in (1, 8)}
    assert lr[1] == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert lr[8] == pytest.approx([0.1, 0.45, 0.8, 0.8])
    s.kind = "step"  # the fixed-epoch alternative: lr / 10 at epochs 30 and 60
    assert [lr_factor(s, it, [], 8) for it in (149_999, 150_000, 300_000)] == pytest.approx([1, 0.1, 0.01])


def test_plateau_rule_counts_evaluations_without_progress():
    s = ScheduleSection(kind="plateau", patience=2, min_delta=0.01)
    assert plateaus(s, [0.9, 0.8, 0.795, 0.7, 0.69]) == 0  # no 1-point gain once, then twice but not in a row
    assert plateaus(s, [0.9, 0.8, 0.795, 0.79]) == 1  # twice in a row: a plateau
    assert plateaus(s, [0.9, 0.8, 0.8, 0.8, 0.8, 0.8]) == 2  # and the count starts again after each
    history = [{"iteration": 10 * i, "val_top1_error": e} for i, e in enumerate([0.9, 0.8, 0.8, 0.8], 1)]
    assert [lr_factor(s, it, history) for it in (40, 41)] == pytest.approx([1, 0.1])  # evaluations before `it`


def test_plateau_schedule_resumes_exactly(tmp_path):
    """The plateau lr depends on the evaluations, which the checkpoint holds: resuming is still bit-exact."""
    # min_delta=1: only the first evaluation sets a best; with patience 1 each later one divides the lr by 10.
    cfg = load_config("digits/resnet20", {"schedule.kind": "plateau", "patience": 1, "min_delta": 1.0,
                                         "schedule.iterations": 32, "run.eval_every": 8, "run.keep_checkpoints": 5})
    run = tmp_path / "run"
    train(cfg, run)
    reference = load_checkpoint(run)
    # The lr of the step before each evaluation: the evaluations at 16 and 24 lower it from steps 17 and 25 on.
    assert [m["lr"] for m in reference["history"]] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    for later in RunDir(run).checkpoints()[2:]:
        later.unlink()  # as if the run had died after the first plateau, before its lr drop took effect
    train(cfg, run, resume=True)
    resumed = load_checkpoint(run)
    assert all(torch.equal(reference["model"][k], resumed["model"][k]) for k in reference["model"])


def test_crop_settings_are_checked():
    with pytest.raises(UserError, match="needs data.scale"):
        load_config("imagenet/resnet18", {"data.scale": [200, 480]})
    with pytest.raises(UserError, match="data.pad=0"):
        load_config("imagenet/resnet18", {"data.pad": 4})
    with pytest.raises(UserError, match="applies to image folders"):
        train(load_config("imagenet/resnet18", {"data.path": "digits"}), "unused")
    with pytest.raises(UserError, match="needs GPUs"):
        train(load_config("digits/resnet20", {"run.sync_bn": True, "run.device": "cpu"}), "unused")


# --------------------------------------------------------------------------------------------- pipeline


def test_every_image_mode_decodes_to_rgb(imagenet):
    files = sorted((imagenet / "train").rglob("*.*"))
    decoded = {p.name: decode_rgb(p) for p in files if p.name != "corrupt.JPEG"}
    assert {p.suffix for p in files} == {".JPEG", ".png", ".gif", ".bmp"} and len(decoded) == 18
    for image in decoded.values():
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.shape[1] >= 36
    sixteen = decoded["train_0_4.png"]  # 16-bit grey, ~60 * 257: scaled to 8 bits, not clipped to white
    assert 40 < sixteen.float().mean() < 80 and torch.equal(sixteen[0], sixteen[2])
    with pytest.raises(ImageError, match="[Tt]runcated"):  # torchvision refuses it, and so does PIL, the fallback
        decode_rgb(imagenet / "train" / "n00000000" / "corrupt.JPEG")


def test_scale_crop_flip_geometry():
    image = torch.arange(3 * 40 * 50, dtype=torch.float32).reshape(3, 40, 50).to(torch.uint8)
    # Shorter side kept (side = 40): a plain crop at the corners, mirrored on request.
    assert torch.equal(scale_crop_flip(image, 32, 40, 0.0, 0.0, False), image[:, :32, :32])
    assert torch.equal(scale_crop_flip(image, 32, 40, 0.999, 0.999, True), image[:, 8:, 18:].flip(-1))
    # Shorter side 80 (twice the size): a 16-pixel region of the original, enlarged to 32.
    region = scale_crop_flip(image, 32, 80, 0.0, 0.0, False)
    expected = TF.resize(image[:, :16, :16], [32, 32], antialias=True)
    assert torch.equal(region, expected)


def test_lighting_is_alexnets_pca_noise():
    """The batched, normalised-space version equals fb.resnet.torch's per-image formula on [0, 1] pixels."""
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.rand(3, 1, 1), torch.rand(3, 1, 1) + 0.5
    alpha = 0.1 * torch.randn(4, 3)
    got = lighting(normalize(images, mean, std), alpha, std)
    for b in range(4):
        rgb = (EIGVEC * alpha[b].view(1, 3) * EIGVAL.view(1, 3)).sum(1)  # eigvec:cmul(alpha):cmul(eigval):sum(2)
        expected = ((images[b] / 255 + rgb.view(3, 1, 1)) - mean) / std
        torch.testing.assert_close(got[b], expected)


@pytest.mark.filterwarnings("ignore:skipped image")
def test_processes_share_each_batch_and_evaluation_shares_cover_every_image_once(imagenet):
    """2 processes with batch b get, together, the images and augmentation of 1 process with batch 2b."""
    ds = ArrayDataset(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20), ["x"] * 20)
    folder = ImageNetFolder(imagenet / "train", 32, 36)
    for data, kwargs in [(ds, {"pad": 2, "flip": True}), (folder, {"scale": [36, 64], "flip": True})]:
        one = BatchLoader(data, 4, shuffle=True, drop_last=True, seed=3, **kwargs)
        two = [BatchLoader(data, 2, shuffle=True, drop_last=True, seed=3, rank=r, world=2, **kwargs) for r in (0, 1)]
        assert len(one) == len(two[0]) == len(two[1])
        for whole, *parts in zip(one.epoch(1), two[0].epoch(1), two[1].epoch(1)):
            for i in (0, 1):  # images, labels
                assert torch.equal(whole[i], torch.cat([part[i] for part in parts]))
        assert torch.equal(one.noise(1, 2, 3), torch.cat([two[0].noise(1, 2, 3), two[1].noise(1, 2, 3)]))
    # Evaluation: 19 images on 2 processes, batches of 4: no padding, every image in exactly one share.
    shares = [torch.cat([labels for _, labels in BatchLoader(ds.subset(torch.arange(19)), 4, shuffle=False, rank=r,
                                                            world=2).epoch(0)]) for r in (0, 1)]
    assert sorted(torch.cat(shares).tolist()) == list(range(19)) and len(shares[0]) == 11


# ------------------------------------------------------------------------------------------ train and test


def test_imagenet_recipe_trains_on_a_tiny_folder(imagenet, tmp_path, capsys):
    """docs/IMAGENET.md's one-process command, sizes scaled down; then its evaluation commands."""
    run = tmp_path / "r18"
    with pytest.warns(UserWarning, match="skipped image") as warned:
        assert main(["train", "--recipe", "imagenet/resnet18", f"data.path={imagenet}", *SMALL, "optim.batch_size=4",
                     "optim.lr=0.01", "schedule.iterations=2", "data.workers=2", "--out", str(run)]) == 0
    messages = sorted(str(w.message) for w in warned if "unreadable" in str(w.message))  # once per file, counted
    assert len(messages) == 2 and all("n00000000/corrupt.JPEG: unreadable (1 so far" in m for m in messages)
    assert "/train/n00000000/" in messages[0] and "/val/n00000000/" in messages[1]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 19 training files (one corrupt, stood in for) / batch 4 = 4 iterations per epoch; evaluated every epoch.
    assert [m["iteration"] for m in lines] == [4, 8] and [m["epoch"] for m in lines] == [1, 2]
    assert all(math.isfinite(m["train_loss"]) and m["lr"] == pytest.approx(0.01) for m in lines)
    pre = load_checkpoint(run)["preprocessing"]
    assert (pre["input_size"], pre["resize"], tuple(pre["mean"].shape)) == (32, 36, (3, 32, 32))

    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"val/n00000000/corrupt\.JPEG"):
        assert main(["eval", str(run), "--data", str(imagenet / "val"), "--protocol", "center,10crop,multiscale",
                     "--scales", "32,40,48", "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["protocol"] for r in results] == ["center", "10crop", "multiscale"]
    assert all(r["images"] == 12 for r in results)  # 13 files, the corrupt one counted out
    assert results[0]["top1_error"] == pytest.approx(lines[-1]["val_top1_error"])
    assert main(["eval", str(run), "--data", "digits", "--protocol", "10crop"]) == 2
    assert "needs an image folder" in capsys.readouterr().err


def test_ten_crop_and_multiscale_equal_a_computation_by_hand(imagenet):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3).eval()
    mean, std = torch.rand(3, 32, 32), torch.ones(3, 1, 1)  # a per-pixel mean, as the recipe's
    ds = ImageNetFolder(imagenet / "val", crop=32, resize=36)
    scales = (32, 40, 48)

    def softmax(x: torch.Tensor) -> torch.Tensor:  # one crop or scale, as a uint8 (3, H, W) image
        m = F.interpolate(mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        with torch.no_grad():
            return model(((x / 255 - m) / std)[None])[0].softmax(0)

    def by_hand(image: torch.Tensor, protocol: str) -> torch.Tensor:
        if protocol == "multiscale":  # the whole image, shorter side at each scale
            return torch.stack([softmax(TF.resize(image, [s], antialias=True)) for s in scales]).mean(0)
        r = TF.resize(image, [36], antialias=True)
        h, w = r.shape[-2:]
        top, left = round((h - 32) / 2), round((w - 32) / 2)
        center = r[:, top:top + 32, left:left + 32]
        if protocol == "center":
            return softmax(center)
        corners = [r[:, :32, :32], r[:, :32, w - 32:], r[:, h - 32:, :32], r[:, h - 32:, w - 32:], center]
        return torch.stack([softmax(c) for c in corners] + [softmax(c.flip(-1)) for c in corners]).mean(0)

    with pytest.warns(UserWarning, match="corrupt") as warned:
        evaluate(model, ds, mean, std, torch.device("cpu"))
    assert sum("corrupt" in str(w.message) for w in warned) == 1
    readable = [i for i in range(len(ds)) if not ds.paths[i].endswith(b"corrupt.JPEG")]
    labels = ds.labels[readable]
    for protocol in ("center", "10crop", "multiscale"):
        views = ds.with_protocol(protocol, scales)
        hand = torch.stack([by_hand(decode_rgb(ds.paths[i].decode()), protocol) for i in readable])
        ours = torch.cat([image_scores(model, [views[i][0]] if protocol == "multiscale" else views[i][0][None],
                                       mean, std, torch.device("cpu")) for i in readable]).exp()
        torch.testing.assert_close(ours, hand, rtol=1e-4, atol=1e-6)
        with warnings.catch_warnings(record=True) as later:
            warnings.simplefilter("always")
            result = evaluate(model, views, mean, std, torch.device("cpu"), batch_size=5)
        assert not any("corrupt" in str(w.message) for w in later)  # reported once, whatever the protocols
        top5 = hand.topk(3, 1).indices == labels[:, None]  # 3 classes: top-5 is top-3
        assert result["images"] == len(readable) == 12
        assert result["top1_error"] == pytest.approx(float((hand.argmax(1) != labels).float().mean()))
        assert result["top5_error"] == pytest.approx(float((~top5.any(1)).float().mean()))
        assert result["loss"] == pytest.approx(float(-hand[torch.arange(12), labels].log().mean()), rel=1e-4)
