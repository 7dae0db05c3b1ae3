"""The residual block of He et al. (2015), in every variant the paper family needs.

One block class covers basic (two 3x3) and bottleneck (1x1, 3x3, 1x1) branches, post-activation
(the 2015 paper: conv -> BN -> ReLU, addition before the last ReLU) and pre-activation
(He et al. 2016, "Identity Mappings": BN -> ReLU -> conv, nothing after the addition), with or without
a shortcut. Layers are named conv1/bn1/conv2/... and the projection `downsample`, so post-activation
blocks have exactly torchvision's state_dict keys.

The descendants need only options of this block: ResNeXt's grouped 3x3 (`ConvSpec.groups`), Wide ResNet's
dropout between the convolutions (`dropout`) and stochastic depth (`drop_path`). Neither option adds a
parameter or a state_dict key.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of a residual branch."""

    kernel: int
    out_channels: int
    stride: int = 1
    groups: int = 1  # grouped convolution: ResNeXt's cardinality (Xie et al. 2017, Fig. 3c)


def branch_layers(block: str, width: int, stride: int, stride_in_1x1: bool, groups: int = 1,
                  width_per_group: int = 64) -> list[ConvSpec]:
    """The convolutions of one residual branch; `width` is the stage width (a bottleneck outputs 4x it)."""
    if block == "basic":
        return [ConvSpec(3, width, stride), ConvSpec(3, width)]
    # Bottleneck: the paper subsamples with the first 1x1 conv (that is what gives Table 1's FLOPs);
    # torchvision and timm ("ResNet v1.5") move the stride to the 3x3, which is slightly more accurate.
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    # Inner width as torchvision (and the ResNeXt code: D = floor(width * baseWidth / 64), times C) computes it:
    # `groups` paths of `width_per_group` channels per 64 of stage width. groups=1, width_per_group=64 is
    # He et al.'s bottleneck; width_per_group=128 is Wide ResNet-50-2's doubled inner width.
    inner = int(width * width_per_group / 64) * groups
    return [ConvSpec(1, inner, s1), ConvSpec(3, inner, s3, groups), ConvSpec(1, width * 4)]


def stochastic_depth(drop_prob: float) -> nn.Module:
    """Huang et al. 2016: drop the residual branch of each sample with probability `drop_prob` in training.

    torchvision's StochasticDepth, mode="row": one draw per sample (as timm's drop_path), and the kept branches
    are scaled by 1 / (1 - drop_prob) during training, so evaluation is exactly the plain network. Departures
    from Huang et al., flagged: their code draws one gate per block per mini-batch (which also skips the branch's
    compute), and scales the branch by its survival probability at test time instead of at training time; the
    two scalings are equivalent in expectation.
    """
    from torchvision.ops import StochasticDepth  # torchvision is slow to import; only nets that use it pay

    return StochasticDepth(drop_prob, mode="row")


class ZeroPadShortcut(nn.Module):
    """Option A: identity with stride-2 subsampling and zero channels appended; no parameters."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (N, C + extra, H/s, W/s)


def make_shortcut(option: str, in_ch: int, out_ch: int, stride: int, preact: bool) -> nn.Module | None:
    """The shortcut path of a block: None means identity (or no shortcut at all for option "none")."""
    shape_changes = stride != 1 or in_ch != out_ch
    if option == "none" or (option in ("A", "B") and not shape_changes):
        return None
    if option == "A":
        return ZeroPadShortcut(stride, out_ch - in_ch)
    projection = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
    # Pre-activation projections act on the already normalised input, so they need no BN of their own.
    return projection if preact else nn.Sequential(projection, nn.BatchNorm2d(out_ch))


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, layers: list[ConvSpec], shortcut: str, preact: bool, dropout: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.depth, self.preact, self.residual = len(layers), preact, shortcut != "none"
        cin = in_ch
        for i, spec in enumerate(layers, 1):
            conv = nn.Conv2d(cin, spec.out_channels, spec.kernel, spec.stride, spec.kernel // 2, bias=False,
                             groups=spec.groups)
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", nn.BatchNorm2d(cin if preact else spec.out_channels))
            cin = spec.out_channels
        self.relu = nn.ReLU(inplace=True)
        stride = max(spec.stride for spec in layers)
        self.downsample = make_shortcut(shortcut, in_ch, cin, stride, preact)
        # In pre-activation blocks a projection acts on the normalised input (as in the authors' code);
        # identity and zero-padding shortcuts carry the raw input, which is the point of the design.
        self.project_activated = preact and shortcut in ("B", "C") and self.downsample is not None
        self.out_channels = cin
        # Zagoruyko & Komodakis 2016: dropout after the ReLU that feeds every conv but the first.
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        # Applied to the branch output just before the addition; the shortcut is never dropped.
        self.drop_path = stochastic_depth(drop_path) if drop_path else nn.Identity()

    def layer(self, i: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
        # Looked up by name (not kept in a list) so torchvision's keys hold and layers can be swapped out.
        return getattr(self, f"conv{i}"), getattr(self, f"bn{i}")

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_preact(x) if self.preact else self._forward_postact(x)

    def _forward_postact(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.depth + 1):
            conv, bn = self.layer(i)
            out = bn(conv(out))
            if i < self.depth:
                out = self.dropout(self.relu(out))
        if self.residual:
            out = self.drop_path(out) + self.shortcut(x)
        return self.relu(out)

    def _forward_preact(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.layer(1)
        activated = self.relu(bn(x))
        shortcut = self.shortcut(activated if self.project_activated else x)
        out = conv(activated)
        for i in range(2, self.depth + 1):
            conv, bn = self.layer(i)
            out = conv(self.dropout(self.relu(bn(out))))
        return self.drop_path(out) + shortcut if self.residual else out

    def zero_init_last(self) -> None:
        """Make the residual branch output zero at initialisation (Goyal et al. 2017)."""
        conv, bn = self.layer(self.depth)
        # Post-activation branches end in a BN whose scale we zero; pre-activation branches end in a conv.
        nn.init.zeros_(conv.weight if self.preact else bn.weight)
