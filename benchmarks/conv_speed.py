#!/usr/bin/env python
"""How fast this CPU runs the convolutions of a training step, and the ceiling they put on images/s.

Records every convolution of one forward pass of the packaged recipe's network (cifar10/<network>, batch 128 by
default), then times each distinct shape alone as a training step runs it -- the forward, and the backward for the
weights and (except for the stem, whose input needs no gradient) the input -- in each --setting (precision/layout,
e.g. bf16/channels_last; a third part, /im2col, turns oneDNN off for PyTorch's own im2col and matrix-product
convolutions), on random data. Prints per shape the multiply-accumulates, ms and GMAC/s, and per setting the
convolutions' ms per step and the images/s a step could reach if everything else (batch norm, ReLU, the additions,
the loss, SGD, the data) took no time. studies/step_profile.py times the whole step on the same terms: the ratio
of the two is the share of the step that is convolution. For scale, each setting also times one large square matrix
product in its precision: about the most multiply-accumulates per second this CPU gives PyTorch with these threads.

    OMP_NUM_THREADS=2 python benchmarks/conv_speed.py --settings fp32/channels_last,bf16/channels_last
"""

import argparse
import time
from collections import Counter
from statistics import median

import torch
import torch.nn.functional as F

from resnets import runtime
from resnets.config import load_config
from resnets.models import ResNet

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def conv_shapes(network: str, batch: int) -> Counter:
    """{(input shape, weight shape, stride, padding, is_stem): how many times a forward pass runs it}."""
    cfg = load_config(f"cifar10/{network}", {})
    model = ResNet(cfg.model_config(10, 3))
    shapes = Counter()

    def record(conv, inputs, _output):
        is_stem = not inputs[0].requires_grad
        shapes[(tuple(inputs[0].shape), tuple(conv.weight.shape), conv.stride, conv.padding, is_stem)] += 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model(torch.randn(batch, 3, 32, 32))  # grad mode on: only the stem's input lacks requires_grad
    for hook in hooks:
        hook.remove()
    return shapes


def ms(fn, repeats: int) -> float:
    """Median wall milliseconds of fn() over repeats calls, after two untimed ones."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * median(times)


def time_shape(shape, setting: str, repeats: int) -> tuple[float, float]:
    """(forward ms, backward ms) of one convolution of this shape in this precision/layout[/im2col]."""
    (x_shape, w_shape, stride, padding, is_stem) = shape
    precision, layout, *backend = setting.split("/")
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(x_shape, dtype=DTYPES[precision]).contiguous(memory_format=memory_format)
    w = torch.randn(w_shape, dtype=DTYPES[precision]).contiguous(memory_format=memory_format)
    with torch.backends.mkldnn.flags(enabled=backend != ["im2col"]):
        out = F.conv2d(x, w, stride=stride, padding=padding)
        grad_out = torch.randn_like(out)
        backward_args = (grad_out, x, w, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
                         [not is_stem, True, False])  # grad of input (not for the stem), of weight, no bias
        forward = ms(lambda: F.conv2d(x, w, stride=stride, padding=padding), repeats)
        backward = ms(lambda: torch.ops.aten.convolution_backward(*backward_args), repeats)
    return forward, backward


def matmul_rate(precision: str, size: int = 2048, repeats: int = 5) -> float:
    """GMAC/s of a size x size x size matrix product in this precision (the reference the convolutions' GMAC/s
    can be read against)."""
    a, b = (torch.randn(size, size, dtype=DTYPES[precision]) for _ in range(2))
    return size**3 / ms(lambda: a @ b, repeats) / 1e6


def macs(shape) -> int:
    """Multiply-accumulates of the forward convolution."""
    (n, _, h, w), (c_out, c_in, k_h, k_w), stride, _, _ = shape
    return n * c_out * c_in * k_h * k_w * (h // stride[0]) * (w // stride[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet20", help="resnet20 (default), resnet56, ...")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--settings", default="fp32/channels_last,bf16/channels_last",
                        help="comma-separated precision/layout[/im2col]: fp32|bf16 / nchw|channels_last; /im2col "
                             "turns oneDNN off (PyTorch's own im2col + matrix-product convolutions)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per shape and direction")
    args = parser.parse_args()

    shapes = conv_shapes(args.network, args.batch)
    print(f"{runtime.describe(torch.device('cpu'))}; {torch.get_num_threads()} thread(s); {args.network}, batch "
          f"{args.batch}: {sum(shapes.values())} convolutions, {len(shapes)} distinct shapes")
    for setting in args.settings.split(","):
        if setting.startswith("bf16") and not runtime.native_bf16_cpu():
            print(f"note: {setting} runs emulated bf16 here (no avx512_bf16 / amx)")
        print(f"\n### {setting}\n\n| input | weight | stride | count | MMAC | forward ms | backward ms | GMAC/s |\n"
              "|---|---|---|---:|---:|---:|---:|---:|")
        total = 0.0
        for shape, count in shapes.items():
            forward, backward = time_shape(shape, setting, args.repeats)
            backward_macs = 1 if shape[4] else 2  # the stem computes only the weights' gradient
            rate = (1 + backward_macs) * macs(shape) / (forward + backward) / 1e6
            total += count * (forward + backward)
            print(f"| {'x'.join(map(str, shape[0]))} | {'x'.join(map(str, shape[1]))} | {shape[2][0]} | {count} | "
                  f"{macs(shape) / 1e6:.0f} | {forward:.2f} | {backward:.2f} | {rate:.0f} |")
        print(f"\nconvolutions: {total:.1f} ms per step; a step that did nothing else would run at "
              f"{args.batch / total * 1e3:.0f} images/s; a 2048 x 2048 x 2048 matrix product in "
              f"{setting.split('/')[0]}: {matmul_rate(setting.split('/')[0]):.0f} GMAC/s")


if __name__ == "__main__":
    main()
