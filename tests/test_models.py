import json

import pytest
import torch
import torchvision

import resnets
from resnets import UserError, create_model, list_models
from resnets.cli import main
from resnets.models.summary import summarize_preset

PAPER_NAMES = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "plain20", "plain32", "plain44", "plain56", "plain110",
    "preact_resnet110", "preact_resnet164", "preact_resnet1001",
    "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101", "preact_resnet152",
]
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def test_registry_lists_every_preset_of_the_paper():
    assert set(PAPER_NAMES) <= set(list_models())
    assert list_models("plain*") == ["plain18", "plain20", "plain32", "plain34", "plain44", "plain56", "plain110"]


def small_input(model, batch=2):
    size = 64 if model.config.stem == "imagenet" else 32
    return torch.randn(batch, model.config.in_channels, size, size)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = small_input(model)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.conv1.weight.grad.abs().sum() > 0  # gradient reaches the stem through every stage


# Table 1 (multiply-adds at 224x224, x10^9) and Table 6 (parameters, x10^6) of the paper.
PAPER_MACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}
PAPER_PARAMS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                "resnet1202": 19.4}
# He et al. 2016 (Identity Mappings), Table 2 / Table 4.
PREACT_PARAMS = {"preact_resnet164": 1.7, "preact_resnet1001": 10.2}


@pytest.mark.parametrize("name", PAPER_MACS)
def test_table1_multiply_adds(name):
    assert summarize_preset(name).macs / 1e9 == pytest.approx(PAPER_MACS[name], abs=0.1)


@pytest.mark.parametrize("name", [*PAPER_PARAMS, *PREACT_PARAMS])
def test_table6_parameters(name):
    paper = {**PAPER_PARAMS, **PREACT_PARAMS}[name]
    # The paper rounds to two significant figures.
    assert summarize_preset(name).params / 1e6 == pytest.approx(paper, rel=0.02)


def test_torchvision_stride_placement_costs_more():
    # v1.5 moves the stride to the 3x3, so layer2-4's first 1x1 runs at full resolution: 4.1 vs 3.8 GMACs.
    assert summarize_preset("resnet50", stride_in_1x1=False).macs / 1e9 == pytest.approx(4.09, abs=0.02)


def test_shortcut_options_parameter_order():
    params = {opt: summarize_preset("resnet20", shortcut=opt).params for opt in "ABC"}
    assert params["A"] == summarize_preset("plain20").params
    assert params["A"] < params["B"] < params["C"]
    imagenet = {opt: summarize_preset("resnet34", shortcut=opt).params for opt in "ABC"}
    assert imagenet["A"] == summarize_preset("plain34").params < imagenet["B"] < imagenet["C"]


def test_cifar_feature_maps():
    shapes = dict(summarize_preset("resnet56").shapes)
    assert shapes["layer1"] == (16, 32, 32) and shapes["layer2"] == (32, 16, 16) and shapes["layer3"] == (64, 8, 8)


ZERO_INIT = ["resnet20", "resnet50", "preact_resnet110", "preact_resnet164", "preact_resnet18", "resnet18"]


@pytest.mark.parametrize("name", ZERO_INIT)
def test_zero_init_last_makes_blocks_shortcut_only(name):
    torch.manual_seed(0)
    model = create_model(name, zero_init_last=True).eval()
    seen = []

    def check(block, inputs, output):
        x = inputs[0]
        if block.preact:
            expected = block.shortcut(block.relu(block.bn1(x)) if block.project_activated else x)
        else:
            expected = torch.relu(block.shortcut(x))
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)
        seen.append(block)

    for block in model.blocks():
        block.register_forward_hook(check)
    model(small_input(model))
    assert len(seen) == len(model.blocks())


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_equivalence(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    ours = create_model(name, stride_in_1x1=False).eval()
    theirs = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5


def test_torchvision_keys_for_every_option_b_preset_with_paper_strides():
    for name in TORCHVISION:
        ours = create_model(name).state_dict()
        theirs = getattr(torchvision.models, name)().state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_from_torchvision_file(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=5).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    ours = resnets.from_torchvision("resnet18", tmp_path / "resnet18.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="do not fit resnet34"):
        resnets.from_torchvision("resnet34", tmp_path / "resnet18.pth")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UserError, match="did you mean .*resnet50"):
        create_model("resnet05")
    with pytest.raises(UserError, match="did you mean shortcut"):
        create_model("resnet20", shortcuts="B")
    with pytest.raises(UserError, match="shortcut='D'"):
        create_model("resnet20", shortcut="D")
    with pytest.raises(UserError, match="depths"):
        create_model("resnet20", depths=(3, 0, 3))


def test_cli_summary_json(capsys):
    assert main(["summary", "resnet50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs"] / 1e9 == pytest.approx(3.8, abs=0.1) and out["params"] == 25_557_032


def test_cli_unknown_model_is_one_line_exit_2(capsys):
    assert main(["summary", "resnet5000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model" in err
