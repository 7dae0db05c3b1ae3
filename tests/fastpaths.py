"""What a fast path leaves behind, for the tests that check it was taken rather than only that its results are close
to fp32 (which fp32 itself would be): the dtype and memory layout of what the convolutions output and hold, and
the graphs torch.compile compiled. Layouts are read from strides, not compared with torch.channels_last, which
tests/mutants.py swaps for contiguous_format to check that these tests notice."""

from collections.abc import Callable

import torch
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters


def layout(t: torch.Tensor) -> tuple[torch.dtype, bool]:
    """(dtype, channels_last) of an (N, C, H, W) tensor: channels_last when its strides are those of N, H, W, C in
    memory (all of them: a dimension of size 1 may be laid out either way, and its stride says which)."""
    _, c, h, w = t.shape
    return t.dtype, t.stride() == (h * w * c, 1, w * c, c)


def watch_convs(model: nn.Module) -> set:
    """A set that the forward passes of `model` from now on fill with (training, dtype, channels_last) of each
    convolution's output."""
    seen = set()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda conv, inputs, out: seen.add((conv.training, *layout(out))))
    return seen


def conv_weights(module: nn.Module) -> set:
    """(dtype, channels_last) of every convolution's weight in `module` (in the original of a compiled module)."""
    module = getattr(module, "_orig_mod", module)
    return {layout(m.weight) for m in module.modules() if isinstance(m, nn.Conv2d)}


def is_compiled(module) -> bool:
    """`module` is what torch.compile returns for a module, not the module itself."""
    return isinstance(module, OptimizedModule)


def compiled_graphs(run: Callable):
    """(run(), how many graphs torch.compile compiled while it ran): 0 when nothing was compiled."""
    counters.clear()
    result = run()
    return result, counters["stats"]["unique_graphs"]
