"""The residual block of He et al. (2015), in every variant the paper family needs.

One block class covers basic (two 3x3) and bottleneck (1x1, 3x3, 1x1) branches, post-activation
(the 2015 paper: conv -> BN -> ReLU, addition before the last ReLU) and pre-activation
(He et al. 2016, "Identity Mappings": BN -> ReLU -> conv, nothing after the addition), with or without
a shortcut. Layers are named conv1/bn1/conv2/... and the projection `downsample`, so post-activation
blocks have exactly torchvision's state_dict keys.

The descendants need only options of this block: ResNeXt's grouped 3x3 (`ConvSpec.groups`), Wide ResNet's
dropout between the convolutions (`dropout`) and stochastic depth (`drop_path`). Neither option adds a
parameter or a state_dict key.

Each choice of ResNetConfig that changes the layers is one table here, whose keys are the choices the config
accepts: BLOCK_TYPES (config.block), SHORTCUT_TYPES (config.shortcut), STEMS (config.stem). A new kind is one
entry; nothing outside reaches inside a block (BN folding and the layer responses use `conv_bn_pairs`).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of a residual branch."""

    kernel: int
    out_channels: int
    stride: int = 1
    groups: int = 1  # grouped convolution: ResNeXt's cardinality (Xie et al. 2017, Fig. 3c)


def _basic(c, width: int, stride: int) -> list[ConvSpec]:
    return [ConvSpec(3, width, stride), ConvSpec(3, width)]


def _bottleneck(c, width: int, stride: int) -> list[ConvSpec]:
    # The paper subsamples with the first 1x1 conv (that is what gives Table 1's FLOPs); torchvision and timm
    # ("ResNet v1.5") move the stride to the 3x3, which is slightly more accurate.
    s1, s3 = (stride, 1) if c.stride_in_1x1 else (1, stride)
    # Inner width as torchvision (and the ResNeXt code: D = floor(width * baseWidth / 64), times C) computes it:
    # `groups` paths of `width_per_group` channels per 64 of stage width. groups=1, width_per_group=64 is
    # He et al.'s bottleneck; width_per_group=128 is Wide ResNet-50-2's doubled inner width.
    inner = int(width * c.width_per_group / 64) * c.groups
    return [ConvSpec(1, inner, s1), ConvSpec(3, inner, s3, c.groups), ConvSpec(1, width * 4)]


@dataclass(frozen=True)
class BlockType:
    """A kind of residual branch."""

    # (ResNetConfig, stage width, stride) -> the branch's convolutions; the last one's channels are the block's
    # output (a bottleneck's is 4x the stage width: its "expansion").
    branch: Callable[..., list[ConvSpec]]
    grouped: bool = False  # takes config.groups and config.width_per_group (ResNeXt, Wide ResNet-50-2)


BLOCK_TYPES = {
    "basic": BlockType(_basic),  # two 3x3 (He et al. 2015, Fig. 5 left)
    "bottleneck": BlockType(_bottleneck, grouped=True),  # 1x1, 3x3, 1x1 (Fig. 5 right)
}


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


def _reshapes(in_ch: int, out_ch: int, stride: int) -> bool:
    return stride != 1 or in_ch != out_ch


def _zero_pad(in_ch: int, out_ch: int, stride: int, preact: bool) -> nn.Module | None:
    return ZeroPadShortcut(stride, out_ch - in_ch) if _reshapes(in_ch, out_ch, stride) else None


def _projection(in_ch: int, out_ch: int, stride: int, preact: bool) -> nn.Module:
    projection = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
    # Pre-activation projections act on the already normalised input, so they need no BN of their own.
    return projection if preact else nn.Sequential(projection, nn.BatchNorm2d(out_ch))


def _projection_on_change(in_ch: int, out_ch: int, stride: int, preact: bool) -> nn.Module | None:
    return _projection(in_ch, out_ch, stride, preact) if _reshapes(in_ch, out_ch, stride) else None


def _no_shortcut(in_ch: int, out_ch: int, stride: int, preact: bool) -> None:
    return None


@dataclass(frozen=True)
class ShortcutType:
    """A kind of shortcut: the paper's options A, B and C (Sections 3.3 and 4.1), or none."""

    make: Callable[[int, int, int, bool], nn.Module | None]  # (in_ch, out_ch, stride, preact); None: identity
    residual: bool = True  # False: no shortcut and no addition at all, a plain net
    # In pre-activation blocks, its module acts on the normalised input (as projections do in the authors' code);
    # identity and zero-padding carry the raw input, which is the point of the design.
    projects: bool = False


SHORTCUT_TYPES = {
    "A": ShortcutType(_zero_pad),  # identity; zero-padding where the shape changes: no parameters
    "B": ShortcutType(_projection_on_change, projects=True),  # identity; a projection where the shape changes
    "C": ShortcutType(_projection, projects=True),  # a projection in every block
    "none": ShortcutType(_no_shortcut, residual=False),
}


@dataclass(frozen=True)
class Stem:
    """The layers before the first stage: a convolution (then BN and ReLU, but for pre-activation nets) and
    possibly a 3x3/2 max pool."""

    kernel: int
    stride: int
    pool: bool
    input_size: int  # the image side it is meant for: what summaries count at unless told otherwise


STEMS = {
    "imagenet": Stem(7, 2, pool=True, input_size=224),  # 7x7/2 conv, 3x3/2 max pool (He et al. 2015, Table 1)
    "cifar": Stem(3, 1, pool=False, input_size=32),  # one 3x3 conv (Section 4.2)
}


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, layers: list[ConvSpec], shortcut: str, preact: bool, dropout: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        kind = SHORTCUT_TYPES[shortcut]
        self.depth, self.preact, self.residual = len(layers), preact, kind.residual
        cin = in_ch
        for i, spec in enumerate(layers, 1):
            conv = nn.Conv2d(cin, spec.out_channels, spec.kernel, spec.stride, spec.kernel // 2, bias=False,
                             groups=spec.groups)
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", nn.BatchNorm2d(cin if preact else spec.out_channels))
            cin = spec.out_channels
        self.relu = nn.ReLU(inplace=True)
        stride = max(spec.stride for spec in layers)
        self.downsample = kind.make(in_ch, cin, stride, preact)
        self.project_activated = preact and kind.projects and self.downsample is not None
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

    def _conv_bn_names(self) -> list[tuple[str, str]]:
        # Post-activation: bn{i} normalises conv{i}'s output. Pre-activation (BN -> ReLU -> conv): bn{i+1} does;
        # bn1 normalises the block's input (the previous sum, which the identity shortcut carries unnormalised)
        # and the last conv's output goes to the addition as it is.
        if self.preact:
            return [(f"conv{i}", f"bn{i + 1}") for i in range(1, self.depth)]
        return [(f"conv{i}", f"bn{i}") for i in range(1, self.depth + 1)]

    def conv_bn_pairs(self) -> list[tuple[nn.Conv2d, nn.Module]]:
        """(conv, BN) for each convolution of the branch whose output a BN normalises directly, in order: what BN
        folding merges, and (post-activation) the layer responses of the paper's Figure 7."""
        return [(getattr(self, conv), getattr(self, bn)) for conv, bn in self._conv_bn_names()]

    def fold_batchnorm(self) -> None:
        """Fold each BN of conv_bn_pairs, and a projection's, into its convolution (in eval mode: the BN is then
        an affine map per channel). Folded BNs become nn.Identity, so forward passes are unchanged."""
        for conv, bn in self._conv_bn_names():
            # fuse_conv_bn_eval: w * gamma / sqrt(var + eps) and (b - mean) * gamma / sqrt(var + eps) + beta.
            setattr(self, conv, fuse_conv_bn_eval(getattr(self, conv), getattr(self, bn)))
            setattr(self, bn, nn.Identity())
        ds = self.downsample
        if isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[1], nn.BatchNorm2d):
            self.downsample = fuse_conv_bn_eval(ds[0], ds[1])
