"""The one generic ResNet: a frozen config in, a network out."""

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

import torch
from torch import nn

from ..errors import UserError
from .blocks import ResidualBlock, branch_layers

BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("A", "B", "C", "none")
STEMS = ("imagenet", "cifar")
EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that defines a network; saved in every checkpoint so it can be rebuilt with no flags."""

    block: Literal["basic", "bottleneck"]
    depths: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # 3x3 width per stage; a bottleneck stage outputs 4x this
    stem: Literal["imagenet", "cifar"]  # 7x7/2 conv + 3x3/2 max pool, or one 3x3 conv
    stem_width: int
    shortcut: Literal["A", "B", "C", "none"] = "B"  # A zero-pad, B project on shape change, C always project
    preact: bool = False  # He et al. 2016 pre-activation blocks ("ResNet v2")
    stride_in_1x1: bool = True  # the paper's bottleneck; False gives torchvision's "v1.5"
    zero_init_last: bool = False  # zero the last BN (last conv if preact) of every residual branch
    num_classes: int = 1000
    in_channels: int = 3

    def __post_init__(self):
        choices = {"block": BLOCKS, "shortcut": SHORTCUTS, "stem": STEMS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        # Recipes and checkpoints hand us lists; the config is hashable and frozen, so keep tuples.
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "widths", tuple(self.widths))
        if len(self.depths) != len(self.widths) or not self.depths:
            raise UserError(f"depths {self.depths} and widths {self.widths} must be non-empty and of equal length")
        for name in ("stem_width", "num_classes", "in_channels", *("depths", "widths")):
            values = getattr(self, name)
            for v in values if isinstance(values, tuple) else (values,):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise UserError(f"{name} must hold positive integers, got {values!r}")
        for name in ("preact", "stride_in_1x1", "zero_init_last"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = c = config
        if c.stem == "imagenet":
            self.conv1 = nn.Conv2d(c.in_channels, c.stem_width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(c.in_channels, c.stem_width, 3, 1, 1, bias=False)
        # Pre-activation nets leave the stem unnormalised: the first block's BN -> ReLU does it (as timm's ResNetV2).
        self.bn1 = nn.Identity() if c.preact else nn.BatchNorm2d(c.stem_width)
        self.relu = nn.Identity() if c.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if c.stem == "imagenet" else nn.Identity()

        channels = c.stem_width
        self.stage_names = []
        for i, (depth, width) in enumerate(zip(c.depths, c.widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                block = ResidualBlock(
                    channels, branch_layers(c.block, width, stride, c.stride_in_1x1), c.shortcut, c.preact
                )
                blocks.append(block)
                channels = block.out_channels
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        # Pre-activation nets end with a BN -> ReLU of the last block's sum.
        self.norm = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) if c.preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, c.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015b
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.zero_init_last:
            for block in self.blocks():
                block.zero_init_last()

    def blocks(self) -> list[ResidualBlock]:
        return [block for name in self.stage_names for block in getattr(self, name)]

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier for fine-tuning on `num_classes` classes."""
        self.fc = nn.Linear(self.num_features, num_classes)
        self.config = replace(self.config, num_classes=num_classes)
