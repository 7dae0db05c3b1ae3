"""Every network of the paper family as a row of data: name -> ResNetConfig."""

from .resnet import ResNetConfig

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)


def imagenet(block: str, depths: tuple[int, ...], **overrides) -> ResNetConfig:
    """Table 1 of the paper: 7x7 stem, four stages, option B shortcuts, 1000 classes."""
    return ResNetConfig(block=block, depths=depths, widths=IMAGENET_WIDTHS, stem="imagenet", stem_width=64,
                        **{"shortcut": "B", "num_classes": 1000, **overrides})


def cifar(n: int, block: str = "basic", **overrides) -> ResNetConfig:
    """Section 4.2: 3x3 stem with 16 filters, three stages of n blocks on 32/16/8 maps, option A, 10 classes."""
    return ResNetConfig(block=block, depths=(n, n, n), widths=CIFAR_WIDTHS, stem="cifar", stem_width=16,
                        **{"shortcut": "A", "num_classes": 10, **overrides})


IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),  # He et al. 2016 (pre-activation only)
}
CIFAR_N = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}  # depth = 6n + 2

PRESETS: dict[str, ResNetConfig] = {
    **{f"resnet{d}": imagenet(*IMAGENET_DEPTHS[d]) for d in (18, 34, 50, 101, 152)},
    **{f"plain{d}": imagenet(*IMAGENET_DEPTHS[d], shortcut="none") for d in (18, 34)},
    **{f"resnet{d}": cifar(n) for d, n in CIFAR_N.items()},
    **{f"plain{d}": cifar(n, shortcut="none") for d, n in CIFAR_N.items() if d != 1202},
    # Pre-activation nets of He et al. 2016. The bottleneck ones (9n+2 layers) need projections for their
    # 16 -> 64 channel first block, as in the authors' code, so they use option B.
    "preact_resnet110": cifar(18, preact=True),
    "preact_resnet164": cifar(18, block="bottleneck", preact=True, shortcut="B"),
    "preact_resnet1001": cifar(111, block="bottleneck", preact=True, shortcut="B"),
    **{f"preact_resnet{d}": imagenet(*IMAGENET_DEPTHS[d], preact=True) for d in (18, 34, 50, 101, 152, 200)},
}
