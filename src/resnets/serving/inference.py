"""Fast CPU inference: BN folding, channels_last + bf16, torch.compile, and INT8 post-training quantization.

`prepare(model, mode)` turns a trained `ResNet` into a callable from normalised float (N, C, H, W) images to
fp32 logits. The modes, each a step beyond the one before:

    fp32      the model as trained, eager, NCHW: the reference every other mode is tested against.
    folded    every BatchNorm that directly follows a convolution folded into that convolution's weight and
              bias (exact up to float rounding: eval-mode BN is an affine map per channel).
    bf16      folded + channels_last, weights and inputs cast to bf16: oneDNN runs the convolutions on AMX /
              AVX512-BF16.
    compiled  bf16 + torch.compile with Inductor's freezing: weights become constants, so oneDNN weight
              reordering is done once and convolutions fuse with their ReLU and residual addition.
    int8      PT2E post-training quantization through torchao's X86InductorQuantizer (int8 activations per
              tensor, int8 weights per channel, calibrated on a few batches), then torch.compile with
              freezing, which lowers the quantized graph to oneDNN int8 kernels (AMX-INT8 / VNNI). The
              classifier stays in fp32 (see KEEP_FLOAT).

The compiled modes compile on the first call (tens of seconds to minutes on a small CPU); every new input
shape compiles again, so warm them up with the batch size they will serve. Preparing an int8 predictor runs
torch.export, which clears torch.compile's caches: predictors compiled before it compile again on their next
call, so in a process that serves several, prepare them all before the first call.

MODES is the table of modes (`prepare` and `resnets predict --mode` take their names from it).
"""

import contextlib
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import UserError
from ..models.resnet import ResNet
from ..runtime import use_bf16

# Inductor options for CPU inference. Freezing turns parameters into constants so the convolutions' weights
# are packed for oneDNN once, at compile time, instead of being reordered on every call. The size, scalar and
# alignment asserts are Inductor's checks of its own generated code: two Python calls per kernel on every call
# that a served model does without (the tests still check every mode's outputs against fp32).
COMPILE_OPTIONS = {"freezing": True, "size_asserts": False, "scalar_asserts": False, "alignment_asserts": False}
# Layers int8 mode leaves in fp32: the classifier, whose rounding moves the logits directly and which costs
# next to nothing. The stem convolution is quantized: kept in fp32, its output (the network's largest
# activation) stays fp32 through the max-pool, which costs resnet50 about a fifth of its int8 speed for an
# agreement gain the size of what the choice of calibration images moves (studies/int8_float_layers.py;
# its table is in docs/INFERENCE.md).
KEEP_FLOAT = ("fc",)


def fold_batchnorm(model: ResNet) -> ResNet:
    """A copy of `model` in eval mode with every BatchNorm that follows a convolution folded into it.

    Folded: the stem's BN, each BN that normalises a convolution's output in a block (ResidualBlock.conv_bn_pairs)
    and the BN of post-activation projections. Left alone, because no convolution directly precedes them: a
    pre-activation block's bn1 (it normalises the sum of the previous block, which the identity shortcut also
    carries unnormalised) and the final BN of pre-activation nets. Folded BNs become nn.Identity, so the forward
    passes are unchanged.
    """
    model = copy.deepcopy(model).eval()
    model.fold_batchnorm()
    return model


class Predictor:
    """A prepared network: call it with normalised float (N, C, H, W) images to get fp32 (N, classes) logits.

    Runs under torch.inference_mode. The eager modes convert the input here (to bf16 and channels_last when the
    mode asks); the compiled modes convert it inside the compiled graph, where Inductor fuses the conversion
    into one pass over the batch (for int8, into the quantization of the input). `module` is what actually
    runs (eager module, compiled module or compiled quantized graph).
    """

    def __init__(self, mode: str, module: Callable, bf16: bool = False, channels_last: bool = False,
                 compiled: bool = False):
        self.mode, self.module, self.bf16, self.channels_last = mode, module, bf16, channels_last
        self.compiled = compiled

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.compiled:
                # Compilation happens on the first call with each new input shape, so the options must be in
                # force around every call. torch.compile(options={"freezing": True}) is not enough in torch
                # 2.14: the patch misses the point where parameters are inlined as constants, leaving the
                # weights as graph inputs (measured: no freezing, and int8 fails on onednn.qconv_prepack).
                stack.enter_context(torch._inductor.config.patch(COMPILE_OPTIONS))
            x = _served_input(x, self.bf16, self.channels_last)
            return self.module(x).float()

    def __repr__(self) -> str:
        return f"Predictor(mode={self.mode!r}, compiled={self.compiled})"


def _served_input(x: torch.Tensor, bf16: bool, channels_last: bool) -> torch.Tensor:
    return x.to(dtype=torch.bfloat16 if bf16 else x.dtype,
                memory_format=torch.channels_last if channels_last else torch.preserve_format)


class _ConvertInput(nn.Module):
    """`module` behind the bf16 + channels_last conversion of its input, for torch.compile to fuse the two."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(_served_input(x, bf16=True, channels_last=True))


def _bf16_channels_last(model: nn.Module) -> nn.Module:
    # Weights cast to bf16 once, here, rather than by autocast in every call of the eager mode.
    return model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


def quantize_int8(model: ResNet, calibration: Iterable[torch.Tensor],
                  keep_float: Iterable[str] = KEEP_FLOAT) -> torch.fx.GraphModule:
    """Post-training static INT8 quantization (PT2E) of a ResNet with torchao's X86 Inductor quantizer.

    The model is exported, observers are inserted where the quantizer says (convolutions and linear layers:
    int8 per-channel symmetric weights, uint8 per-tensor affine activations), each calibration batch is run
    once to record activation ranges, and convert_pt2e replaces observers by quantize/dequantize pairs that
    Inductor (with freezing) pattern-matches into int8 oneDNN kernels. The batch dimension is exported as
    dynamic, so calibration batches and served batches may differ in size. The modules named in `keep_float`
    stay in fp32.
    """
    try:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as e:  # an optional extra: pip install resnets[int8]
        raise UserError(f"int8 inference needs torchao (pip install 'resnets[int8]'): {e}") from None
    batches = list(calibration)
    if not batches:
        raise UserError("int8 inference needs calibration images: a few batches of normalised inputs")
    model = copy.deepcopy(model).eval()
    example = batches[0][:2] if len(batches[0]) > 1 else torch.cat([batches[0]] * 2)
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=True).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    for name in keep_float:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in batches:
            prepared(x)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    return converted


def auto_mode(device: torch.device) -> str:
    """The fastest mode that needs neither compilation nor calibration and runs natively on `device`: bf16 where
    the hardware multiplies bf16 (AMX, AVX512-BF16, recent GPUs), folded fp32 elsewhere -- on an AVX2-only EPYC,
    emulated bf16 ran resnet50 five times slower than fp32 (issue 14: benchmarks/infer_speed.py --cells resnet50:16,
    1.5 images/s in bf16 against 7.7 in fp32)."""
    return "bf16" if use_bf16("auto", device) else "folded"


# What each mode runs, from (model, calibration, keep_float); the model itself is never changed.

def _as_trained(model: ResNet, calibration, keep_float) -> nn.Module:
    return copy.deepcopy(model).eval()


def _folded(model: ResNet, calibration, keep_float) -> nn.Module:
    return fold_batchnorm(model)


def _folded_bf16(model: ResNet, calibration, keep_float) -> nn.Module:
    return _bf16_channels_last(fold_batchnorm(model))


def _folded_bf16_converting(model: ResNet, calibration, keep_float) -> nn.Module:
    return _ConvertInput(_folded_bf16(model, calibration, keep_float))


@dataclass(frozen=True)
class InferenceMode:
    """A way to serve a network: a new one is a function giving the module to run and one entry in MODES."""

    module: Callable[[ResNet, list | None, Iterable[str]], Callable]  # (model, calibration, keep_float)
    bf16: bool = False  # the eager input conversion: to bf16 and channels_last (compiled modes convert inside)
    compiled: bool = False  # torch.compile'd with COMPILE_OPTIONS (on the first call of each input shape)
    calibrated: bool = False  # needs calibration batches: not for `resnets predict`, which has only the network


MODES = {
    "fp32": InferenceMode(_as_trained),
    "folded": InferenceMode(_folded),
    "bf16": InferenceMode(_folded_bf16, bf16=True),
    "compiled": InferenceMode(_folded_bf16_converting, compiled=True),
    # The graph starts by quantizing its fp32 NCHW input; Inductor writes the quantized batch in the
    # channels_last layout the int8 convolutions need, in the same pass.
    "int8": InferenceMode(quantize_int8, compiled=True, calibrated=True),
}
Mode = Literal[tuple(MODES)]


def uncalibrated_modes() -> list[str]:
    """The modes that need nothing but the network: those a prediction from image files alone can use."""
    return [name for name, mode in MODES.items() if not mode.calibrated]


def prepare(model: ResNet, mode: Mode = "fp32", calibration: Iterable[torch.Tensor] | None = None,
            keep_float: Iterable[str] = KEEP_FLOAT) -> Predictor:
    """`model` (left untouched) ready to serve in `mode`; see the module docstring for what each mode does.

    `calibration`: normalised float batches, needed (and only used) by mode "int8"; so is `keep_float`, the
    modules int8 leaves in fp32.
    """
    if mode not in MODES:
        raise UserError(f"unknown inference mode {mode!r}; use one of {', '.join(MODES)}")
    kind = MODES[mode]
    if kind.calibrated and calibration is None:
        raise UserError(f"mode {mode!r} needs calibration batches")
    module = kind.module(model, calibration, keep_float)
    return Predictor(mode, torch.compile(module) if kind.compiled else module, bf16=kind.bf16,
                     channels_last=kind.bf16, compiled=kind.compiled)
