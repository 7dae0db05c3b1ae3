"""Wide ResNets, ResNeXts and stochastic depth: golden numbers, torchvision equivalence, dropped-branch statistics.

Forward/backward of every new preset runs in test_models.py, which is parametrized over the registry.
"""

import math

import pytest
import torch
import torchvision

from resnets import UserError, create_model, from_torchvision, list_models
from resnets.config import load_config
from resnets.models.summary import summarize_preset
from resnets.training.loop import train

WRN = ["wrn16_4", "wrn16_8", "wrn28_10", "wrn40_4"]
RESNEXT_CIFAR = ["resnext29_8x64d", "resnext29_16x64d"]
TORCHVISION = ["wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]


def test_registry_lists_the_descendants():
    assert {*WRN, *RESNEXT_CIFAR, *TORCHVISION} <= set(list_models())
    assert list_models("resnext29*") == ["resnext29_8x64d", "resnext29_16x64d"]  # numbers sort as numbers


# Parameters (x10^6) as the papers print them, rounded to 0.1M: the WRN paper's tables (Zagoruyko & Komodakis
# 2016; WRN-16-4 is in the dropout table) and ResNeXt's Table 7 (Xie et al. 2017).
PAPER_PARAMS = {"wrn16_4": 2.7, "wrn16_8": 11.0, "wrn28_10": 36.5, "wrn40_4": 8.9,
                "resnext29_8x64d": 34.4, "resnext29_16x64d": 68.1}


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_cifar_descendants_parameters(name):
    # abs 0.06M: the paper's rounding, plus 16x64d's 68.16M printed as 68.1M.
    assert summarize_preset(name).params / 1e6 == pytest.approx(PAPER_PARAMS[name], abs=0.06)


@pytest.mark.parametrize("name", TORCHVISION)
def test_imagenet_descendants_match_torchvision_metadata(name):
    # torchvision's published parameter count (exact) and GFLOPS (multiply-adds at 224x224, rounded to 10^6).
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    summary = summarize_preset(name)
    assert summary.params == meta["num_params"]
    assert summary.macs / 1e9 == pytest.approx(meta["_ops"], abs=1e-3)


def test_resnext50_matches_the_paper():
    # Xie et al. 2017, Table 1: ResNeXt-50 (32x4d), 25.0M parameters and 4.2 GFLOPs (multiply-adds).
    summary = summarize_preset("resnext50_32x4d")
    assert summary.params / 1e6 == pytest.approx(25.0, abs=0.05)
    assert summary.macs / 1e9 == pytest.approx(4.2, abs=0.05)


def test_resnext_3x3_is_grouped_and_wide_resnet_3x3_is_doubled():
    with torch.device("meta"):  # shapes only
        resnext, wide, resnext29 = (create_model(n) for n in ("resnext50_32x4d", "wide_resnet50_2", "resnext29_8x64d"))
    block = resnext.layer1[0]
    assert (block.conv2.groups, block.conv2.in_channels, block.conv3.out_channels) == (32, 128, 256)
    assert (block.conv1.stride, block.conv2.stride) == ((1, 1), (1, 1)) and resnext.layer2[0].conv2.stride == (2, 2)
    assert wide.layer4[0].conv2.out_channels == 1024  # 2 x 512
    assert resnext29.layer3[0].conv2.out_channels == 2048  # 8 paths x 64 channels, doubled twice


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_equivalence(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    with torch.device("meta"):
        ours = create_model(name)  # the preset as it is (stride on the 3x3), built without a random init ...
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)  # ... as every key and shape fits
    x = torch.randn(2, 3, 32, 32)  # small, but every stride still acts: layer4 sees 2x2 -> 1x1
    with torch.no_grad():
        assert (ours.eval()(x) - reference(x)).abs().max() <= 1e-5


def test_from_torchvision_loads_a_resnext(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnext50_32x4d(num_classes=5).eval()
    torch.save(reference.state_dict(), tmp_path / "resnext50.pth")
    ours = from_torchvision("resnext50_32x4d", tmp_path / "resnext50.pth").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="do not fit resnet50"):  # same keys, but grouped 3x3 shapes
        from_torchvision("resnet50", tmp_path / "resnext50.pth")


def test_cifar_descendants_shapes():
    shapes = dict(summarize_preset("wrn28_10").shapes)
    assert shapes["layer1"] == (160, 32, 32) and shapes["layer3"] == (640, 8, 8)
    shapes = dict(summarize_preset("resnext29_16x64d").shapes)
    assert shapes["layer1"] == (256, 32, 32) and shapes["layer3"] == (1024, 8, 8)


def test_stochastic_depth_drops_the_expected_fraction_of_branches():
    torch.manual_seed(0)
    model = create_model("resnet110", drop_path=0.5).train()
    blocks = model.blocks()
    # Huang et al.'s linear decay: block l of L = 54 drops with probability 0.5 * l / L, the last one 0.5.
    assert [b.drop_path.p for b in blocks] == pytest.approx([0.5 * i / 54 for i in range(1, 55)])
    dropped = torch.zeros(len(blocks))

    def count(index):
        def hook(module, inputs, output):
            branch = inputs[0].flatten(1)
            kept = output.flatten(1).ne(0).any(1)
            dropped[index] += (~kept).sum()
            # Survivors are scaled by 1 / survival, so the expected branch is the eval-mode one.
            torch.testing.assert_close(output.flatten(1)[kept], branch[kept] / (1 - module.p))
        return hook

    for i, block in enumerate(blocks):
        block.drop_path.register_forward_hook(count(i))
    n = 1024
    with torch.no_grad():
        model(torch.randn(n, 3, 2, 2))  # a 2x2 input keeps 1024 samples through 110 layers cheap
    expected = torch.tensor([b.drop_path.p for b in blocks]) * n
    sd = (expected * (1 - expected / n)).sqrt()
    assert ((dropped - expected).abs() <= 5 * sd + 1).all()  # every block, within 5 binomial sigmas
    total_sd = math.sqrt(float((sd**2).sum()))
    assert abs(dropped.sum() - expected.sum()) <= 4 * total_sd  # and all 54 together (~25% of branches dropped)


@pytest.mark.parametrize("name, options", [
    ("resnet110", {"drop_path": 0.5}),
    ("preact_resnet164", {"drop_path": 0.5}),
    ("wrn16_4", {"drop_path": 0.2, "dropout": 0.3}),
    ("resnext29_8x64d", {"drop_path": 0.1, "depths": (1, 1, 1)}),
])
def test_eval_mode_is_exactly_the_plain_network(name, options):
    torch.manual_seed(0)
    regularised = create_model(name, **options).eval()
    plain = create_model(name, **{k: v for k, v in options.items() if k == "depths"}).eval()
    plain.load_state_dict(regularised.state_dict())  # neither option adds a parameter or buffer
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(regularised(x), plain(x))
        regularised.train()
        plain.train()
        assert not torch.equal(regularised(x), plain(x))  # and in training they do act


def test_dropout_sits_between_the_convolutions():
    model = create_model("wrn16_4", dropout=0.3)
    block = model.layer2[0]
    assert isinstance(block.dropout, torch.nn.Dropout) and block.dropout.p == 0.3
    seen = []
    block.dropout.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    block.conv2.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape))
    model(torch.randn(2, 3, 32, 32))
    assert seen == [(2, 128, 16, 16)] * 2  # dropout output feeds conv2 (and only conv2: conv1 sees the input)


def test_options_are_checked():
    with pytest.raises(UserError, match="bottleneck"):
        create_model("resnet20", groups=4)
    with pytest.raises(UserError, match="plain net"):
        create_model("plain20", drop_path=0.2)
    with pytest.raises(UserError, match=r"drop_path must be a probability in \[0, 1\)"):
        create_model("resnet20", drop_path=1.0)
    with pytest.raises(UserError, match="dropout must be"):
        create_model("wrn16_4", dropout="0.3")
    with pytest.raises(UserError, match="no channel per group"):
        create_model("resnext29_8x64d", widths=(16, 32, 64), width_per_group=2)  # 16 * 2 / 64 < 1
    assert create_model("resnet20", drop_path=0).config.drop_path == 0.0  # TOML's 0 is accepted as 0.0


def test_existing_presets_are_unchanged_by_the_new_defaults():
    for name in ("resnet50", "resnet110", "preact_resnet164"):
        model = create_model(name)
        assert all(isinstance(b.dropout, torch.nn.Identity) and isinstance(b.drop_path, torch.nn.Identity)
                   for b in model.blocks())


def test_recipes_are_the_papers():
    wrn = load_config("cifar10/wrn28_10")
    assert wrn.model_config(10, 3).widths == (160, 320, 640) and wrn.optim.nesterov and wrn.optim.weight_decay == 5e-4
    assert (wrn.schedule.iterations, wrn.schedule.milestones, wrn.schedule.gamma) == (78125, [23438, 46875, 62500], 0.2)
    resnext = load_config("cifar10/resnext29_8x64d")
    assert resnext.model_config(10, 3).groups == 8 and resnext.optim.weight_decay == 5e-4
    assert (resnext.schedule.iterations, resnext.schedule.milestones) == (117188, [58594, 87891])
    sd = load_config("cifar10/resnet110_stochastic_depth")
    assert sd.model_config(10, 3).drop_path == 0.5 and sd.model.name == "resnet110" and sd.optim.nesterov
    assert (sd.schedule.iterations, sd.schedule.milestones) == (175781, [87891, 131836])
    for cfg, error in ((wrn, 4.0), (resnext, 3.65), (sd, 5.25)):
        assert cfg.paper.top1_error == error and cfg.paper.source
    assert load_config("cifar10/resnet110", ["drop_path=0.5"]).model_config(10, 3).drop_path == 0.5


def tiny(model: str, **options):
    """A few iterations on the embedded digits (8x8, 1 channel): seconds, not minutes."""
    overrides = {"model.name": model, "schedule.iterations": 4, "schedule.milestones": [3], "run.eval_every": 2,
                 "optim.batch_size": 32, **{f"model.{k}": v for k, v in options.items()}}
    return load_config("digits/resnet20", overrides)


@pytest.mark.parametrize("model, options", [
    ("wrn16_4", {"dropout": 0.3, "drop_path": 0.2}),
    # ResNeXt-29 at a tiny width: 4 groups of 16 channels per 64 (inner widths 16/32/64), one block a stage.
    ("resnext29_8x64d", {"depths": [1, 1, 1], "widths": [16, 32, 64], "stem_width": 16, "groups": 4,
                         "width_per_group": 16}),
])
def test_descendants_train(tmp_path, model, options):
    metrics = train(tiny(model, **options), tmp_path / model)
    lines = (tmp_path / model / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
