"""Every inference mode against fp32 eager: BN folding exactly, bf16 / compiled / int8 within stated tolerances,
each fast mode first shown to be running as it says (bf16 channels_last weights, a compiled module and its graphs).

The fp32 reference is a ResNet-20 trained briefly on the embedded digits (seconds), evaluated on the 360 test
digits. Compilation is slow on a small CPU, so each compiled mode compiles once, for one input shape.
"""

import pytest
import torch
from torch import nn

from resnets import UserError, create_model, load_model, runtime
from resnets.data import load_digits
from resnets.serving.inference import MODES, fold_batchnorm, prepare, quantize_int8
from resnets.training.loop import train

from .fastpaths import compiled_graphs, conv_weights, is_compiled, watch_convs
from .test_train import tiny


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(trained model, normalised test images, test labels, normalised training images) on the digits."""
    run = tmp_path_factory.mktemp("digits") / "run"
    # 60 steps: about 95% test accuracy, enough for predictions with real margins (24 steps leave ~70%).
    train(tiny(**{"schedule.iterations": 60, "schedule.milestones": [40], "run.eval_every": 60}), run)
    model, info = load_model(run)
    pre = info["preprocessing"]
    train_set, test_set = load_digits()
    return model, pre.normalize(test_set.images), test_set.labels, pre.normalize(train_set.images)


@pytest.fixture(scope="module")
def reference(digits):
    model, x, _, _ = digits
    return prepare(model, "fp32")(x)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding them is not a near-identity."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


# Every shortcut option, block type and BN placement the blocks support: (preset, overrides, BNs left unfolded).
FOLD_CASES = {
    "option A (zero-pad)": ("resnet20", {}, 0),
    "option B (projection on shape change)": ("resnet20", {"shortcut": "B"}, 0),
    "option C (projection everywhere)": ("resnet20", {"shortcut": "C"}, 0),
    "plain (no shortcut)": ("plain20", {}, 0),
    "bottleneck, ImageNet stem": ("resnet50", {"depths": (1, 1, 1, 1)}, 0),
    "ResNeXt grouped 3x3": ("resnext29_8x64d", {"depths": (1, 1, 1)}, 0),
    # Pre-activation: each block's bn1 acts on the sum the identity shortcut also carries (and the final BN on
    # the last sum), so those stay; bn2.. follow a conv directly and are folded into it.
    "pre-activation basic, option A": ("preact_resnet110", {"depths": (1, 1, 1)}, 3 + 1),
    "pre-activation bottleneck, option B": ("preact_resnet164", {"depths": (1, 1, 1)}, 3 + 1),
    "Wide ResNet (pre-activation, dropout)": ("wrn16_4", {"depths": (1, 1, 1)}, 3 + 1),
}


@pytest.mark.parametrize("case", FOLD_CASES)
def test_fold_batchnorm_matches_every_variant(case):
    name, overrides, unfolded = FOLD_CASES[case]
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, **overrides))
    size = 64 if model.config.stem == "imagenet" else 32
    x = torch.randn(4, 3, size, size)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    # Folding only reassociates float32 arithmetic: relative to the logits' size, 1e-5 (measured ~1e-6).
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == unfolded
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > unfolded  # the original is untouched


def test_folded_matches_fp32_on_trained_digits(digits, reference):
    model, x, _, _ = digits
    folded = prepare(model, "folded")(x)
    assert (folded - reference).abs().max() <= 1e-4  # absolute, on logits of size ~10
    assert agreement(folded, reference) == 1.0


@pytest.mark.skipif(not runtime.native_bf16_cpu(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_matches_fp32_on_trained_digits(digits, reference):
    model, x, _, _ = digits
    served = prepare(model, "bf16")
    assert conv_weights(served.module) == {(torch.bfloat16, True)}  # cast once, channels_last
    convs = watch_convs(served.module)
    bf16 = served(x)
    assert convs == {(False, torch.bfloat16, True)}
    # bf16 keeps 8 bits of mantissa: logits within 5% of their largest magnitude, top-1 the same on >= 99%.
    assert (bf16 - reference).abs().max() <= 0.05 * reference.abs().max() and not torch.equal(bf16, reference)
    assert agreement(bf16, reference) >= 0.99


@pytest.mark.skipif(not runtime.native_bf16_cpu(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_compiled_matches_fp32_on_trained_digits(digits, reference):
    model, x, _, _ = digits
    torch._dynamo.reset()  # afresh, as in a new process: after another batch size it compiles for any, less exactly
    compiled = prepare(model, "compiled")
    assert is_compiled(compiled.module) and conv_weights(compiled.module) == {(torch.bfloat16, True)}
    out, graphs = compiled_graphs(lambda: compiled(x))  # compiles for this shape (the whole test set, 360 images)
    assert graphs >= 1
    assert (out - reference).abs().max() <= 0.05 * reference.abs().max() and not torch.equal(out, reference)
    assert agreement(out, reference) >= 0.99
    again, graphs = compiled_graphs(lambda: compiled(x))
    assert graphs == 0 and torch.equal(again, out)  # the compiled graph is reused, and deterministic


def test_int8_matches_fp32_on_trained_digits(digits, reference):
    pytest.importorskip("torchao", reason="int8 needs the optional torchao dependency: pip install 'resnets[int8]'")
    model, x, labels, train_images = digits
    calibration = train_images[:512].split(128)  # 4 batches of training images, never the test images
    out = prepare(model, "int8", calibration)(x)
    # Measured: 99-100% agreement and the same accuracy to within a test image or two; 95% and 2 points leave
    # room for the drift of a retrained model.
    assert agreement(out, reference) >= 0.95
    accuracy = lambda logits: (logits.argmax(1) == labels).float().mean().item()
    assert abs(accuracy(out) - accuracy(reference)) <= 0.02


def test_int8_keeps_the_classifier_in_fp32():
    pytest.importorskip("torchao", reason="int8 needs the optional torchao dependency: pip install 'resnets[int8]'")
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    graph = quantize_int8(model, [torch.randn(8, 1, 8, 8)])
    dequantize_weight = torch.ops.quantized_decomposed.dequantize_per_channel.default
    quantized_weights = [n for n in graph.graph.nodes if n.target == dequantize_weight]
    assert len(quantized_weights) == 19  # the stem and the 18 convolutions of the blocks; not fc


def test_prepare_rejects_bad_requests():
    model = create_model("resnet20")
    with pytest.raises(UserError, match="unknown inference mode 'fast'"):
        prepare(model, "fast")
    with pytest.raises(UserError, match="needs calibration"):
        prepare(model, "int8")
    assert tuple(MODES) == ("fp32", "folded", "bf16", "compiled", "int8")
