"""benchmarks/conv_speed.py: each setting runs the convolutions on the backend it names (docs/SPEED.md)."""

import torch

from .benchmark_scripts import load_benchmark

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


def test_a_shape_is_timed_forward_and_backward():
    shape = ((2, 16, 8, 8), (16, 16, 3, 3), (1, 1), (1, 1), False)
    for setting in ("fp32/channels_last", "fp32/nchw/im2col"):
        forward, backward = conv_speed.time_shape(shape, setting, 1)
        assert forward > 0 and backward > 0
