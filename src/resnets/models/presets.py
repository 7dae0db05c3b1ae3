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
    return ResNetConfig(**{"block": block, "depths": (n, n, n), "widths": CIFAR_WIDTHS, "stem": "cifar",
                           "stem_width": 16, "shortcut": "A", "num_classes": 10, **overrides})


def wide(depth: int, k: int) -> ResNetConfig:
    """WRN-depth-k (Zagoruyko & Komodakis 2016, Table 1): depth = 6n + 4, the CIFAR net k times wider.

    Pre-activation basic blocks, 16-filter 3x3 stem, widths 16k/32k/64k; projections (unnormalised 1x1 convs
    on the activated input, as in the authors' code) wherever the shape changes, which includes the first
    block (16 -> 16k channels). Dropout between the convolutions is the `dropout` option (0.3 in the paper).
    """
    n, rest = divmod(depth - 4, 6)
    assert rest == 0, f"WRN depth must be 6n + 4, got {depth}"
    return cifar(n, widths=tuple(k * w for w in CIFAR_WIDTHS), preact=True, shortcut="B")


def resnext_cifar(cardinality: int, base_width: int) -> ResNetConfig:
    """ResNeXt-29 (Xie et al. 2017, Section 5.3, and the authors' code): 3 stages of 3 bottleneck blocks.

    64-filter 3x3 stem, stage outputs 256/512/1024, `cardinality` paths of `base_width` channels in the first
    stage's 3x3 (doubling with each stage), option B, post-activation, stride on the 3x3 as in ResNeXt.
    """
    return cifar(3, block="bottleneck", widths=(64, 128, 256), stem_width=64, shortcut="B",
                 groups=cardinality, width_per_group=base_width, stride_in_1x1=False)


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
    # Wide ResNets (Zagoruyko & Komodakis 2016) on CIFAR.
    **{f"wrn{d}_{k}": wide(d, k) for d, k in ((16, 4), (16, 8), (28, 10), (40, 4))},
    # ResNeXt on CIFAR (Xie et al. 2017, Table 7): 29 layers, cardinality x bottleneck width of the first stage.
    "resnext29_8x64d": resnext_cifar(8, 64),
    "resnext29_16x64d": resnext_cifar(16, 64),
    # The ImageNet descendants, with torchvision's layout and weights. Both papers put the stride on the 3x3
    # (ResNeXt Sec. 4: "downsampling ... by stride-2 convolutions in the 3x3 layer of the first block in each
    # stage"; WRN-50-2 was trained with fb.resnet.torch, which does the same), so stride_in_1x1=False here,
    # unlike the He et al. presets. Wide ResNet-50-2 is ResNet-50 with a 3x3 twice as wide (the WRN paper's
    # ImageNet WRN-50-2-bottleneck).
    "wide_resnet50_2": imagenet(*IMAGENET_DEPTHS[50], width_per_group=128, stride_in_1x1=False),
    "wide_resnet101_2": imagenet(*IMAGENET_DEPTHS[101], width_per_group=128, stride_in_1x1=False),
    "resnext50_32x4d": imagenet(*IMAGENET_DEPTHS[50], groups=32, width_per_group=4, stride_in_1x1=False),
    "resnext101_32x8d": imagenet(*IMAGENET_DEPTHS[101], groups=32, width_per_group=8, stride_in_1x1=False),
    "resnext101_64x4d": imagenet(*IMAGENET_DEPTHS[101], groups=64, width_per_group=4, stride_in_1x1=False),
}
