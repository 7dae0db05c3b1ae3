"""benchmarks/conv_speed.py: each setting runs the convolutions on the backend it names (docs/SPEED.md)."""

from types import SimpleNamespace

import pytest
import torch

from .fastpaths import layout
from .scripts import load_benchmark

conv_speed = load_benchmark("conv_speed")


def test_im2col_turns_onednn_off_for_the_timing_only(monkeypatch):
    seen = []

    def timed(fn, repeats):
        fn()
        seen.append(torch.backends.mkldnn.enabled)
        return 1.0

    monkeypatch.setattr(conv_speed, "ms", timed)
    shape = ((2, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1), False)
    assert conv_speed.time_shape(shape, "fp32/nchw/im2col", 1) == (1.0, 1.0)
    conv_speed.time_shape(shape, "fp32/channels_last", 1)
    assert seen == [False, False, True, True]  # forward and backward of each
    assert torch.backends.mkldnn.enabled  # restored


@pytest.mark.parametrize("stem", [False, True])
@pytest.mark.parametrize("setting, layout_wanted", [("fp32/channels_last", (torch.float32, True)),
                                                    ("fp32/nchw/im2col", (torch.float32, False)),
                                                    ("bf16/channels_last", (torch.bfloat16, True))])
def test_a_shape_is_timed_forward_and_backward_as_a_step_runs_it(monkeypatch, setting, layout_wanted, stem):
    """What is timed: the convolution of the shape in the setting's precision and layout, then its backward for
    the weights and (not for the stem, whose input needs none) the input; the times returned in that order."""
    results = []

    def timed(fn, repeats):
        results.append(fn())
        return float(len(results))

    monkeypatch.setattr(conv_speed, "ms", timed)
    shape = ((2, 16, 8, 8), (32, 16, 3, 3), (2, 2), (1, 1), stem)
    assert conv_speed.time_shape(shape, setting, 1) == (1.0, 2.0)
    out, (grad_input, grad_weight, grad_bias) = results
    assert out.shape == (2, 32, 4, 4) and layout(out) == layout_wanted
    assert grad_weight.shape == (32, 16, 3, 3) and grad_bias is None
    assert grad_input is None if stem else grad_input.shape == (2, 16, 8, 8)


def test_ms_is_the_median_of_the_timed_calls_after_two_untimed_ones(monkeypatch):
    calls, clock = [], iter([0.0, 0.001, 1.0, 1.003, 2.0, 2.002])  # calls of 1, 3 and 2 ms
    monkeypatch.setattr(conv_speed, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert conv_speed.ms(lambda: calls.append(1), 3) == pytest.approx(2.0)
    assert len(calls) == 5
