"""The one generic ResNet: a frozen config in, a network out."""

from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import UserError
from .blocks import BLOCK_TYPES, SHORTCUT_TYPES, STEMS, ResidualBlock


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that defines a network; saved in every checkpoint so it can be rebuilt with no flags."""

    # The choices of block, stem and shortcut are the keys of their tables in blocks.py.
    block: Literal[tuple(BLOCK_TYPES)]
    depths: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # 3x3 width per stage; a bottleneck stage outputs 4x this
    stem: Literal[tuple(STEMS)]  # 7x7/2 conv + 3x3/2 max pool, or one 3x3 conv
    stem_width: int
    shortcut: Literal[tuple(SHORTCUT_TYPES)] = "B"  # A zero-pad, B project on shape change, C always project
    preact: bool = False  # He et al. 2016 pre-activation blocks ("ResNet v2")
    stride_in_1x1: bool = True  # the paper's bottleneck; False gives torchvision's "v1.5"
    zero_init_last: bool = False  # zero the last BN (last conv if preact) of every residual branch
    num_classes: int = 1000
    in_channels: int = 3
    # Bottleneck 3x3 as `groups` paths of `width_per_group` channels per 64 of stage width (torchvision's names):
    # ResNeXt's cardinality and base width (Xie et al. 2017); width_per_group=128 is Wide ResNet-50-2.
    groups: int = 1
    width_per_group: int = 64
    dropout: float = 0.0  # Wide ResNet's dropout between the convolutions of each residual branch
    # Stochastic depth (Huang et al. 2016): block l of L drops its residual branch with probability
    # drop_path * l / L in training (their linear decay; 0.5 is their CIFAR setting); identity in evaluation.
    drop_path: float = 0.0

    def __post_init__(self):
        choices = {"block": BLOCK_TYPES, "shortcut": SHORTCUT_TYPES, "stem": STEMS}
        for name, allowed in choices.items():
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:  # a list: unhashable
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        # Recipes and checkpoints hand us lists; the config is hashable and frozen, so keep tuples.
        for name in ("depths", "widths"):
            if not isinstance(getattr(self, name), list | tuple):
                raise UserError(f"{name} must be a list of positive integers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.depths) != len(self.widths) or not self.depths:
            raise UserError(f"depths {self.depths} and widths {self.widths} must be non-empty and of equal length")
        for name in ("stem_width", "num_classes", "in_channels", "groups", "width_per_group", "depths", "widths"):
            values = getattr(self, name)
            for v in values if isinstance(values, tuple) else (values,):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise UserError(f"{name} must hold positive integers, got {values!r}")
        for name in ("preact", "stride_in_1x1", "zero_init_last"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("dropout", "drop_path"):
            p = getattr(self, name)
            if not isinstance(p, int | float) or isinstance(p, bool) or not 0 <= p < 1:
                raise UserError(f"{name} must be a probability in [0, 1), got {p!r}")
            object.__setattr__(self, name, float(p))
        grouped = BLOCK_TYPES[self.block].grouped
        if not grouped and (self.groups, self.width_per_group) != (1, 64):
            # As torchvision's BasicBlock; a Wide ResNet widens basic blocks through `widths`.
            grouping = ", ".join(name for name, kind in BLOCK_TYPES.items() if kind.grouped)
            raise UserError(f"groups and width_per_group apply to {grouping} blocks; widen {self.block} blocks "
                            "with widths")
        if grouped and min(self.widths) * self.width_per_group < 64:
            raise UserError(f"width_per_group={self.width_per_group} leaves no channel per group in a stage of "
                            f"width {min(self.widths)}")
        if self.drop_path and not SHORTCUT_TYPES[self.shortcut].residual:
            raise UserError("drop_path drops residual branches; a plain net (shortcut='none') has none")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = c = config
        stem = STEMS[c.stem]
        self.conv1 = nn.Conv2d(c.in_channels, c.stem_width, stem.kernel, stem.stride, stem.kernel // 2, bias=False)
        # Pre-activation nets leave the stem unnormalised: the first block's BN -> ReLU does it (as timm's ResNetV2).
        self.bn1 = nn.Identity() if c.preact else nn.BatchNorm2d(c.stem_width)
        self.relu = nn.Identity() if c.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem.pool else nn.Identity()

        channels = c.stem_width
        self.stage_names = []
        index, total = 0, sum(c.depths)
        for i, (depth, width) in enumerate(zip(c.depths, c.widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                index += 1
                layers = BLOCK_TYPES[c.block].branch(c, width, stride)
                # Huang et al.'s linear decay: survival 1 - drop_path * l / L, from ~1 at the stem to
                # 1 - drop_path at the last block (their p_L = 0.5 is drop_path = 0.5).
                block = ResidualBlock(channels, layers, c.shortcut, c.preact, dropout=c.dropout,
                                      drop_path=c.drop_path * index / total)
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
        self.frozen_stages = 0  # see freeze()
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

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits of forward_features' maps; with pre_logits, the pooled (B, num_features) features instead (timm's
        name): what `resnets embed` hands to other tools."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def freeze(self, stages: int) -> None:
        """Fix the stem and the first `stages` stages for fine-tuning (all of them: the final norm too, leaving the
        classifier alone to learn): their parameters stop taking gradients and their BN layers stay in eval mode
        whatever train() is asked, so their running statistics never change either."""
        if not 0 <= stages <= len(self.stage_names):
            raise UserError(f"cannot freeze {stages} stages of a network of {len(self.stage_names)}")
        self.frozen_stages = stages
        for module in self._frozen():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen(self) -> list[nn.Module]:
        if not self.frozen_stages:
            return []
        everything = self.frozen_stages == len(self.stage_names)
        return [self.conv1, self.bn1, *self.stages()[: self.frozen_stages], *([self.norm] if everything else [])]

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for module in self._frozen():
            module.eval()  # frozen BN normalises with its stored statistics and does not update them
        return self

    def conv_bn_pairs(self) -> list[tuple[nn.Conv2d, nn.Module]]:
        """(conv, BN) for each convolution whose output a BN normalises directly, in the network's order: the
        stem's (but for pre-activation nets), then each block's (ResidualBlock.conv_bn_pairs)."""
        stem = [(self.conv1, self.bn1)] if isinstance(self.bn1, nn.BatchNorm2d) else []
        return stem + [pair for block in self.blocks() for pair in block.conv_bn_pairs()]

    def fold_batchnorm(self) -> None:
        """Fold the BNs of conv_bn_pairs (and the projections') into their convolutions, in place; eval mode only.
        The final BN of pre-activation nets stays: no convolution precedes it."""
        if isinstance(self.bn1, nn.BatchNorm2d):
            self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1, self.bn1), nn.Identity()
        for block in self.blocks():
            block.fold_batchnorm()
