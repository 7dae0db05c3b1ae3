import copy
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import tomli_w
import torch
import torch.nn.functional as F
from PIL import Image

import resnets.training.loop
from resnets import runtime
from resnets.cli import main
from resnets.config import ScheduleSection, load_config
from resnets.data import ArrayDataset, cutout, load_digits, normalization_stats
from resnets.errors import UserError
from resnets.rundir import RunDir, TrainState, load_checkpoint
from resnets.schedule import lr_factor
from resnets.serving.evaluate import evaluate
from resnets.serving.weights import load_model
from resnets.training.loop import train

from .fakedata import make_cifar_archive, make_image_folder
from .fastpaths import compiled_graphs, conv_weights, is_compiled, watch_convs


def tiny(**overrides):
    """ResNet-20 on the embedded digits for a few iterations: seconds, not minutes."""
    base = {"schedule.iterations": 24, "schedule.milestones": [16], "run.eval_every": 8, "run.keep_checkpoints": 5}
    return load_config("digits/resnet20", {**base, **overrides})


def test_paper_step_schedule():
    s = load_config("cifar10/resnet20", {"data.path": "x"}).schedule
    lrs = {it: 0.1 * lr_factor(s, it) for it in (0, 31_999, 32_000, 47_999, 48_000, 63_999)}
    assert lrs == pytest.approx({0: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001, 63_999: 0.001})


def test_resnet110_warmup_goes_back_to_0_1():
    s = load_config("cifar10/resnet110").schedule
    assert 0.1 * lr_factor(s, 0) == pytest.approx(0.01) and 0.1 * lr_factor(s, 399) == pytest.approx(0.01)
    assert 0.1 * lr_factor(s, 400) == pytest.approx(0.1) and 0.1 * lr_factor(s, 32_000) == pytest.approx(0.01)


def test_cosine_and_onecycle_with_linear_warmup():
    s = ScheduleSection(kind="cosine", iterations=1000, warmup_iterations=100, warmup="linear", warmup_factor=0.0)
    assert lr_factor(s, 0) == 0 and lr_factor(s, 50) == pytest.approx(0.5) and lr_factor(s, 100) == pytest.approx(1)
    assert lr_factor(s, 550) == pytest.approx(0.5) and lr_factor(s, 999) < 1e-4
    s.kind = "onecycle"
    assert lr_factor(s, 550) == pytest.approx(0.5) and lr_factor(s, 1000) == pytest.approx(0)


def test_table6_recipes_are_the_papers():
    for depth in (20, 32, 44, 56, 110, 1202):
        cfg = load_config(f"cifar10/resnet{depth}")
        assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (128, 0.1, 0.9, 1e-4)
        assert (cfg.schedule.iterations, cfg.schedule.milestones) == (64_000, [32_000, 48_000])
        assert (cfg.data.pad, cfg.data.flip, cfg.model_config(10, 3).shortcut) == (4, True, "A")
        assert not cfg.optim.nesterov and cfg.optim.label_smoothing == 0 and cfg.schedule.kind == "step"


def test_overrides_are_typed_and_checked():
    cfg = load_config(None, ["lr=0.05", "schedule.milestones=10,20", "model.shortcut=B", "flip=false"])
    assert cfg.optim.lr == 0.05 and cfg.schedule.milestones == [10, 20] and cfg.data.flip is False
    assert cfg.model_config(10, 3).shortcut == "B"
    with pytest.raises(UserError, match="optim.lr must be float"):
        load_config(None, ["lr=fast"])
    with pytest.raises(UserError, match="did you mean optim.momentum"):
        load_config(None, ["optim.momentun=0.9"])
    with pytest.raises(UserError, match="did you mean .*shortcut"):
        load_config(None, ["model.shortcuts=B"])
    with pytest.raises(UserError, match="schedule.kind='linear' is not one of"):
        load_config(None, ["schedule.kind=linear"])
    with pytest.raises(UserError, match="unknown model"):
        load_config(None, ["model.name=resnet21"])


def test_resolved_config_is_a_recipe(tmp_path):
    cfg = load_config("cifar10/resnet110", ["data.path=/data", "lr=0.2"])
    (tmp_path / "c.toml").write_text(tomli_w.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.toml").to_dict() == cfg.to_dict()


def test_train_writes_a_complete_run(tmp_path, capsys):
    result = train(tiny(), tmp_path / "run")
    run = tmp_path / "run"
    # The run says what it picked for this machine, and why.
    cpu = torch.device("cpu")
    picked = f"{'bf16 autocast' if runtime.native_bf16_cpu() else 'fp32'} ({runtime.precision_reason('auto', cpu)})"
    assert f"{runtime.describe(cpu)}: {picked}, channels_last" in capsys.readouterr().out
    assert ("freed memory kept" in (run / "legs.jsonl").read_text()) == runtime.keep_freed_memory()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [8, 16, 24]
    keys = {"iteration", "epoch", "lr", "train_loss", "train_error", "val_loss", "val_top1_error",
            "val_top5_error", "images_per_s", "wall_s"}
    assert all(keys <= m.keys() for m in lines) and lines[-1] == result
    assert lines[-1]["lr"] == pytest.approx(0.01) and lines[0]["lr"] == pytest.approx(0.1)
    assert (run / "curves.png").stat().st_size > 1000 and (run / "config.toml").is_file()
    assert [p.name for p in RunDir(run).checkpoints()] == ["iter-0000008.pt", "iter-0000016.pt", "iter-0000024.pt"]
    assert result["val_top1_error"] < 0.5  # 24 steps already beat chance (90%) by far
    ckpt = load_checkpoint(run)
    assert ckpt["classes"] == [str(d) for d in range(10)] and ckpt["iteration"] == 24
    # `resnets eval` of the final checkpoint on the same test split agrees with the run's own log, in the
    # precision the run picked (bf16 where the CPU multiplies it, else fp32: emulated bf16 rounds differently).
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "digits", "--precision", "auto", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 360 and out["top1_error"] == pytest.approx(result["val_top1_error"], abs=1e-9)
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny(), run)


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    """Resuming from a mid-epoch checkpoint (iteration 8 of 11 per epoch) ends with identical weights."""
    reference = tmp_path / "reference"
    train(tiny(), reference)
    interrupted = tmp_path / "interrupted"
    train(tiny(), interrupted)
    for later in RunDir(interrupted).checkpoints()[1:]:
        later.unlink()  # as if the process had died just after writing iteration 8's checkpoint
    # The mean and std come from the checkpoint: no new estimate (on ImageNet, 2,000 images decoded again).
    monkeypatch.setattr(resnets.training.loop, "normalization_stats", lambda *a: pytest.fail("statistics re-estimated"))
    train(tiny(), interrupted, resume=True)
    a, b = load_checkpoint(reference), load_checkpoint(interrupted)
    assert a["iteration"] == b["iteration"] == 24
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [m["val_top1_error"] for m in a["history"]] == [m["val_top1_error"] for m in b["history"]]
    assert len((interrupted / "metrics.jsonl").read_text().splitlines()) == 3


def format_1(ckpt: dict) -> dict:
    """`ckpt` as the trainer wrote checkpoints before the run module (format 1): a LambdaLR's state beside the
    optimizer's, whose parameter groups that scheduler had given an initial_lr."""
    optimizer = copy.deepcopy(ckpt["optimizer"])
    for group in optimizer["param_groups"]:
        group["initial_lr"] = ckpt["config"]["optim"]["lr"]
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=ckpt["config"]["optim"]["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(probe, lambda it: 1.0)
    for _ in range(ckpt["iteration"]):
        probe.step()
        scheduler.step()
    keys = ("iteration", "config", "world_size", "model_config", "model", "classes", "preprocessing", "rng",
            "history", "cuda_rng")
    return {"format": "resnets-checkpoint-1", **{k: ckpt[k] for k in keys}, "optimizer": optimizer,
            "scheduler": scheduler.state_dict()}


def test_checkpoints_of_the_old_format_still_eval_predict_export_and_resume(tmp_path, capsys):
    """A run checkpointed in format 1 (by the trainer before the run module) is evaluated, classifies images,
    exports, and resumes to the same weights as an uninterrupted run of the new trainer."""
    reference = tmp_path / "reference"
    train(tiny(), reference)
    old = tmp_path / "old"
    train(tiny(), old)
    first, *later = RunDir(old).checkpoints()
    for path in later:
        path.unlink()
    torch.save(format_1(load_checkpoint(first)), first)
    assert load_checkpoint(first)["format"] == "resnets-checkpoint-1"
    capsys.readouterr()
    assert main(["eval", str(first), "--data", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 360
    image = tmp_path / "digit.png"
    Image.fromarray(load_digits()[1].images[0, 0].numpy()).save(image)
    assert main(["predict", str(first), str(image), "--json", "--mode", "fp32"]) == 0
    assert len(json.loads(capsys.readouterr().out)["top"]) == 5
    assert main(["export", str(first), "--out", str(tmp_path / "old.safetensors")]) == 0

    train(tiny(), old, resume=True)
    a, b = load_checkpoint(reference), load_checkpoint(old)
    assert a["iteration"] == b["iteration"] == 24
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(), run)
    newest = RunDir(run).checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.raises(UserError, match="corrupt") as e:
        load_checkpoint(newest)
    assert "\n" not in str(e.value)
    train(tiny(), run, resume=True)
    assert "trying the previous checkpoint" in capsys.readouterr().out
    assert load_checkpoint(run)["iteration"] == 24
    assert main(["eval", str(newest.with_name("nope.pt")), "--data", "digits"]) == 2


def test_resume_refuses_a_different_config(tmp_path):
    train(tiny(), tmp_path / "run")
    with pytest.raises(UserError, match="different config"):
        train(tiny(**{"optim.lr": 0.2}), tmp_path / "run", resume=True)


@dataclass
class Steps:
    """What the training loop's own steps did (spy_steps)."""

    convs: set = field(default_factory=set)  # (training, dtype, channels_last) of the convolutions' outputs
    weights: set = field(default_factory=set)  # (dtype, channels_last) of the convolutions' weights
    losses: list[float] = field(default_factory=list)
    first_grad: torch.Tensor | None = None  # every parameter's gradient in the first step, flattened
    step_model: torch.nn.Module | None = None  # what the loop stepped (the model, or it compiled)


def spy_steps(monkeypatch, watch: bool = True) -> Steps:
    """Watch the next train()'s steps through loop.step itself: a fast path counts only where the loop takes it.
    `watch`: hooks on the convolutions (not in a compiled step, whose graph they would break)."""
    steps, step = Steps(), resnets.training.loop.step

    def spied(s, state, images, labels, epoch):
        if steps.step_model is None:
            steps.step_model, steps.weights = s.step_model, conv_weights(s.model)
            steps.convs = watch_convs(s.model) if watch else steps.convs
        loss, logits, labels = step(s, state, images, labels, epoch)
        steps.losses.append(loss.item())
        if steps.first_grad is None:
            steps.first_grad = torch.cat([p.grad.flatten() for p in s.model.parameters()])
        return loss, logits, labels

    monkeypatch.setattr(resnets.training.loop, "step", spied)
    return steps


@pytest.mark.skipif(not runtime.native_bf16_cpu(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_and_channels_last_train_like_fp32(tmp_path, monkeypatch):
    """The fast path (bf16 autocast + channels_last) against plain fp32 NCHW, both through the loop's own steps:
    the convolutions of the steps and of the evaluations run in bf16 on channels_last weights and activations, the
    first step has the same loss (not bit-identical) and gradient direction, and after 24 steps both have learned.
    Forced, not `auto`, which could pick fp32 and compare fp32 with itself."""
    fast_steps = spy_steps(monkeypatch)
    fast = train(tiny(**{"run.precision": "bf16"}), tmp_path / "fast")
    plain_steps = spy_steps(monkeypatch)
    plain = train(tiny(**{"run.precision": "fp32", "run.channels_last": False}), tmp_path / "plain")
    assert fast_steps.convs == {(True, torch.bfloat16, True), (False, torch.bfloat16, True)}
    assert fast_steps.weights == {(torch.float32, True)}  # autocast casts them in each step
    # The plain run's activations are channels_last too: a batch of one channel is both layouts at once, and its
    # loader's strides make the convolutions pick channels_last.
    assert {dtype for _, dtype, _ in plain_steps.convs} == {torch.float32}
    assert plain_steps.weights == {(torch.float32, False)}
    assert fast_steps.losses[0] == pytest.approx(plain_steps.losses[0], rel=0.02)
    assert fast_steps.losses[0] != plain_steps.losses[0]
    # The first step's gradients point the same way (measured: cosine 0.990 on an AMD EPYC with AVX512-BF16).
    assert F.cosine_similarity(fast_steps.first_grad, plain_steps.first_grad, dim=0) > 0.97
    # Rounding differs from the first step on and 24 steps at lr 0.1 are chaotic: the runs drift apart (by 6
    # points of held-out error on 360 images, in either direction, depending on the thread count), but both learn.
    assert fast["val_top1_error"] < 0.3 and plain["val_top1_error"] < 0.3  # chance: 0.9
    assert abs(fast["train_loss"] - plain["train_loss"]) <= 0.2


@pytest.mark.skipif(not runtime.native_bf16_cpu(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_evaluation_in_bf16_runs_bf16_channels_last_convolutions_close_to_fp32():
    """serving.evaluate.evaluate, what the loop's evaluations and `resnets eval` run, in bf16 and in fp32."""
    from resnets import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)  # NCHW weights: the layout is evaluate's choice
    grey = load_digits()[1]
    # In three channels: one channel is both layouts at once.
    digits = ArrayDataset(grey.images.repeat(1, 3, 1, 1), grey.labels, grey.classes)
    mean, std = torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 0.25)
    convs, logits = watch_convs(model), []
    model.fc.register_forward_hook(lambda fc, inputs, out: logits.append(out.float()))
    results = {}
    for bf16 in (True, False):
        results[bf16] = evaluate(model, digits, mean, std, torch.device("cpu"), bf16)
        assert convs == {(False, torch.bfloat16 if bf16 else torch.float32, True)}
        convs.clear()
    fast, reference = logits
    # bf16 keeps 8 bits of mantissa: logits within 5% of their largest magnitude, the same top-1 on most images.
    assert (fast - reference).abs().max() <= 0.05 * reference.abs().max() and not torch.equal(fast, reference)
    assert (fast.argmax(1) == reference.argmax(1)).float().mean() >= 0.8
    assert results[True]["loss"] == pytest.approx(results[False]["loss"], rel=0.02)


def test_compiled_model_matches_eager(tmp_path, monkeypatch):
    """run.compile=true steps a compiled module, which compiles graphs; one step of it is close to eager's."""
    # One step: fused kernels sum in another order, and early training at lr 0.1 amplifies any rounding
    # difference step after step (measured: 8e-5 after 1 step, 0.2 after 8), as it would for two eager devices.
    one_step = {"run.precision": "fp32", "schedule.iterations": 1, "run.eval_every": 1}
    steps = spy_steps(monkeypatch, watch=False)
    compiled, graphs = compiled_graphs(lambda: train(tiny(**one_step, **{"run.compile": True}), tmp_path / "c"))
    assert is_compiled(steps.step_model) and graphs >= 1
    eager = train(tiny(**one_step), tmp_path / "e")
    a, b = load_checkpoint(tmp_path / "c")["model"], load_checkpoint(tmp_path / "e")["model"]
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-3, atol=5e-4)
    assert not all(torch.equal(a[k], b[k]) for k in a)  # another order of sums: close, not the same
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_step_with_cuda_graphs_learns_like_eager(tmp_path):
    """benchmarks/table6_gpu.sh's path: data held on the GPU, fused SGD, bf16, compiled into CUDA graphs."""
    from torch._dynamo.utils import counters

    counters.clear()
    graphs = train(tiny(**{"run.device": "cuda", "run.compile": True}), tmp_path / "graphs")
    assert counters["inductor"]["cudagraph_skips"] == 0  # a skip falls back to launching every kernel: no gain
    eager = train(tiny(**{"run.device": "cuda"}), tmp_path / "eager")
    assert abs(graphs["val_top1_error"] - eager["val_top1_error"]) <= 0.05
    assert abs(graphs["train_loss"] - eager["train_loss"]) <= 0.2


def test_trains_on_a_cifar_archive_with_held_out_split(tmp_path):
    archive = make_cifar_archive(tmp_path, n_train=300, n_test=50)
    cfg = load_config("cifar10/resnet20", {"data.path": str(archive), "data.val_split": 100,
                                           "schedule.iterations": 4, "run.eval_every": 4, "optim.batch_size": 32})
    result = train(cfg, tmp_path / "run")
    assert result["iteration"] == 4 and math.isfinite(result["train_loss"])
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["preprocessing"]["mean"].shape == (3, 32, 32)  # the paper's per-pixel mean


def test_eval_matches_class_folders_by_name(tmp_path, capsys):
    root = tmp_path / "folder"
    make_image_folder(root / "train", classes=3, per_class=6, size=32)
    cfg = load_config(None, {"data.path": str(root), "data.val_split": 3, "model.name": "resnet20",
                             "schedule.iterations": 2, "run.eval_every": 2, "optim.batch_size": 8,
                             "data.cache_dir": ""})
    train(cfg, tmp_path / "run")
    classes = load_checkpoint(tmp_path / "run")["classes"]
    # A test folder holding only the last class, which must keep its label (not become class 0).
    only = root / "test_only" / classes[-1]
    only.mkdir(parents=True)
    for p in (root / "train" / classes[-1]).iterdir():
        (only / p.name).write_bytes(p.read_bytes())
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(root / "test_only"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6
    (root / "other" / "zebra").mkdir(parents=True)
    (root / "other" / "zebra" / "a.png").write_bytes((only / p.name).read_bytes())
    assert main(["eval", str(tmp_path / "run"), "--data", str(root / "other")]) == 2
    assert "zebra" in capsys.readouterr().err


def test_eval_val_split_scores_the_images_the_run_held_out(tmp_path, capsys):
    root = make_image_folder(tmp_path / "folder", classes=3, per_class=10, size=32)
    cfg = load_config(None, {"data.path": str(root), "data.val_split": 9, "data.split_seed": 5, "model.name": "resnet20",
                             "schedule.iterations": 4, "run.eval_every": 4, "optim.batch_size": 8,
                             "data.cache_dir": "", "run.precision": "fp32"})
    result = train(cfg, tmp_path / "run")
    capsys.readouterr()
    args = ["eval", str(tmp_path / "run"), "--data", str(root), "--json", "--val-split", "9"]
    assert main([*args, "--split-seed", "5"]) == 0
    held_out = json.loads(capsys.readouterr().out)
    assert held_out["images"] == 9
    assert held_out["loss"] == pytest.approx(result["val_loss"], rel=1e-4)  # the very images, not 9 like them
    assert main(args) == 0  # another seed, other images
    assert json.loads(capsys.readouterr().out)["loss"] != pytest.approx(result["val_loss"], rel=1e-4)


def test_ema_follows_the_weights_sgd_steps():
    """After each step: average <- decay x average + (1 - decay) x weights (the first step's weights as they are)."""
    s = resnets.training.loop.set_up(tiny(**{"optim.ema_decay": 0.5, "run.precision": "fp32"}))
    s.mean, s.std = normalization_stats(s.train_set, "pixel_mean")
    s.step_model = s.model
    state = TrainState(s.model, s.optimizer, average=s.average)
    expected = None
    for i, (images, labels) in zip(range(3), s.loader.epoch(0)):
        resnets.training.loop.step(s, state, images, labels, epoch=0)
        weights = [p.detach().clone() for p in s.model.parameters()]
        expected = weights if expected is None else [0.5 * e + 0.5 * w for e, w in zip(expected, weights)]
    averaged = list(s.average.module.parameters())
    assert all(torch.allclose(a, e, atol=1e-7) for a, e in zip(averaged, expected))
    assert not all(torch.equal(a, w) for a, w in zip(averaged, weights))


def test_ema_run_evaluates_saves_and_resumes_the_average(tmp_path, capsys):
    cfg = tiny(**{"optim.ema_decay": 0.9, "schedule.iterations": 8, "run.eval_every": 4, "run.precision": "fp32"})
    last = train(cfg, tmp_path / "straight")
    ckpt = load_checkpoint(tmp_path / "straight")
    assert ckpt["n_averaged"] == 8 and any(not torch.equal(ckpt["model"][k], ckpt["sgd_model"][k]) for k in ckpt["model"])
    # What eval, predict and export load ("model") is the network the run evaluated: the average, its BN recomputed.
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "straight"), "--data", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(last["val_loss"], rel=1e-4)
    # Interrupted after its first evaluation and resumed: the same averaged and SGD weights, bit for bit.
    train(cfg, tmp_path / "resumed")
    RunDir(tmp_path / "resumed").checkpoint_file(8).unlink()
    train(cfg, tmp_path / "resumed", resume=True)
    again = load_checkpoint(tmp_path / "resumed")
    for key in ("model", "sgd_model"):
        assert all(torch.equal(ckpt[key][k], again[key][k]) for k in ckpt[key]), key


def test_cutout_sets_a_square_to_the_mean_clipped_at_the_border():
    x = torch.ones(3, 2, 8, 8)
    where = torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.99, 0.6]])  # centres (4, 4), (0, 0), (7, 4)
    out = cutout(x, 4, where)
    expected = torch.ones(3, 8, 8)
    expected[0, 2:6, 2:6] = 0  # the whole square
    expected[1, 0:2, 0:2] = 0  # its lower right quarter: the rest lies beyond the top left corner
    expected[2, 5:8, 2:6] = 0  # three of its rows
    assert torch.equal(out, expected[:, None].expand(3, 2, 8, 8))


@pytest.mark.parametrize("side", [0, 3])
def test_a_training_step_with_data_cutout_feeds_the_network_squares_of_the_mean(side):
    """The images reaching the first convolution have the loader's cutout squares at 0 (channel normalisation: no
    other pixel is exactly the mean), and none without it."""
    s = resnets.training.loop.set_up(tiny(**{"data.cutout": side, "data.normalize": "channel"}))
    s.mean, s.std = normalization_stats(s.train_set, "channel")
    seen = []
    first = next(m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    s.step_model = s.model
    state = TrainState(s.model, s.optimizer, iteration=5)
    images, labels = next(s.loader.epoch(0, start=5))
    resnets.training.loop.step(s, state, images, labels, epoch=0)
    zeros = (seen[0] == 0).all(1).sum((1, 2))  # per image: pixels 0 in every channel
    squares = (cutout(torch.ones(len(labels), 1, 8, 8), side, s.loader.uniform(0, 5, 2)) == 0).sum((1, 2, 3))
    assert torch.equal(zeros, squares) and (zeros.sum() > 0) == (side > 0)


@pytest.mark.parametrize("decay_bn_and_bias", [True, False])
def test_decay_bn_and_bias_says_which_weights_decay(decay_bn_and_bias):
    """With no gradient, an SGD step (no momentum) is the weight decay alone: w <- w (1 - lr wd) where it applies."""
    cfg = tiny(**{"optim.decay_bn_and_bias": decay_bn_and_bias, "optim.momentum": 0.0, "optim.weight_decay": 0.1,
                  "optim.lr": 0.5})
    s = resnets.training.loop.set_up(cfg)
    before = {name: p.detach().clone() for name, p in s.model.named_parameters()}
    for p in s.model.parameters():
        p.grad = torch.zeros_like(p)
    s.optimizer.step()
    one_d = [name for name, p in s.model.named_parameters() if p.dim() == 1]
    assert len(one_d) == 2 * 19 + 1  # the 19 BNs' scales and shifts, the classifier's bias
    for name, p in s.model.named_parameters():
        decays = decay_bn_and_bias or name not in one_d
        assert torch.allclose(p, before[name] * (1 - 0.05 if decays else 1)), name


def test_flip_protocol_averages_each_image_with_its_mirror_image(tmp_path, capsys):
    train(tiny(**{"schedule.iterations": 8}), tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", "digits", "--protocol", "center,flip", "--json"]) == 0
    center, flip = map(json.loads, capsys.readouterr().out.splitlines())
    assert (center["protocol"], flip["protocol"], center["images"], flip["images"]) == ("center", "flip", 360, 360)
    # By hand: the mean of the softmax of the image and of its left-right mirror image, each normalised as the
    # training flips are (the per-pixel mean of the recipe is not mirrored).
    model, info = load_model(tmp_path / "run", torch.device("cpu"))
    pre, (_, test) = info["preprocessing"], load_digits()
    prepared = [(images.float() / 255 - pre.mean) / pre.std for images in (test.images, test.images.flip(-1))]
    with torch.no_grad():
        p = sum(model.eval()(x).softmax(1) for x in prepared) / 2
    assert flip["top1_error"] == pytest.approx((p.argmax(1) != test.labels).double().mean().item())
    assert flip["loss"] == pytest.approx(F.nll_loss(p.log(), test.labels).item(), rel=1e-4)
    assert flip["loss"] != pytest.approx(center["loss"], rel=1e-4)  # the mirror images were scored too


@pytest.mark.parametrize("args, message", [
    (["train", "model.name=resnet21"], "unknown model"),
    (["train", "optim.lr=abc"], "must be float"),
    (["train", "--recipe", "cifar10/resnet20"], "no data"),
    (["train", "data.path=/does/not/exist"], "does not exist"),
    (["train", "--resume", "/does/not/exist"], "not a run directory"),
    (["eval", "/no/such.pt", "--data", "digits"], "does not exist"),
])
def test_bad_commands_are_one_line_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_tensorboard_logs_the_same_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny(**{"run.tensorboard": True}), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    logged = events.Scalars("val_top1_error")
    assert [e.step for e in logged] == [8, 16, 24]
    assert logged[-1].value == pytest.approx(result["val_top1_error"])


def test_streamed_folder_trains_exactly_like_the_in_memory_one(tmp_path):
    """Workers only decode; augmentation is the same batched, seeded code: identical weights either way."""
    root = tmp_path / "folder"
    make_image_folder(root, classes=3, per_class=12, size=32)
    base = {"data.path": str(root), "data.val_split": 6, "data.cache_dir": "", "optim.batch_size": 8,
            "schedule.iterations": 6, "run.eval_every": 3, "data.workers": 2}
    memory = train(load_config("cifar10/resnet20", {**base, "data.loader": "memory"}), tmp_path / "memory")
    stream = train(load_config("cifar10/resnet20", {**base, "data.loader": "stream"}), tmp_path / "stream")
    a, b = load_checkpoint(tmp_path / "memory"), load_checkpoint(tmp_path / "stream")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert memory["val_top1_error"] == stream["val_top1_error"]


def test_importing_the_trainer_leaves_matplotlib_alone(tmp_path):
    """No global backend switch or pyplot state on import (a user's notebook keeps its own), yet curves are drawn."""
    code = ("import sys, pathlib, resnets.training.loop as loop\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "m = [{'iteration': i, 'train_error': 0.5 / i, 'val_top1_error': 0.6 / i} for i in (1, 2)]\n"
            f"loop.plot_curves(m, pathlib.Path({str(tmp_path / 'c.png')!r}))\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


FAULTS_PER_STEP = """
import resource, sys, torch, torch.nn.functional as F
from resnets import create_model, runtime
if not runtime.keep_freed_memory():
    sys.exit(3)
model = create_model("resnet20")
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
def step():
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults[3:])[2])  # the median step after 3 that find the heap still growing
"""


def test_kept_memory_ends_the_page_faults_of_every_step():
    """run.keep_memory (on by default): glibc's malloc keeps the blocks a step frees for the next step instead of
    giving them back to the kernel and faulting them in again, page by page (docs/SPEED.md). In a fresh process,
    whose allocator nothing else has tuned yet."""
    kept = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    if kept.returncode == 3:
        pytest.skip("the C library is not glibc: there is nothing to keep")
    assert kept.returncode == 0, kept.stderr
    assert int(kept.stdout) < 50  # glibc's defaults: 2,000-24,000 per step of this network here


def test_an_instruction_set_cap_below_bf16_means_fp32(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (with ATEN_CPU_CAPABILITY=avx2) makes a newer CPU compute as an AVX2-only one
    does: bf16 is emulated there, so auto must pick fp32 and say why, whatever /proc/cpuinfo lists."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not runtime.native_bf16_cpu() and not runtime.use_bf16("auto", cpu)
    assert runtime.precision_reason("auto", cpu) == "oneDNN capped at AVX2"
    assert "capped at AVX2" in runtime.describe(cpu)
    assert runtime.use_bf16("bf16", cpu)  # forcing it still forces it
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert runtime.native_bf16_cpu() == native and "capped" not in runtime.describe(cpu)
