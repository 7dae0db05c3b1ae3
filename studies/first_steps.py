#!/usr/bin/env python
"""The first steps of a CIFAR ResNet at the paper's lr 0.1: ours against an independent implementation.

Issue: ResNet-56's training loss jumps from 2.9 to about 10 in its first ten steps at lr 0.1 (no warm-up),
and the paper trains it at 0.1 from the first step. Is that our code or the recipe? This script answers in
two parts, on the engine's own batches (paper augmentation, per-pixel mean), in fp32 NCHW:

1. Same init, same batches: a reference CIFAR ResNet written here from the paper's Section 4.2 (nothing
   shared with resnets.models but the weights copied into it) takes the same SGD steps as ours. Prints the
   step at which the two losses first differ by more than --tolerance (relative), and the largest weight
   difference after the last step.
2. Own init: the reference with its own initialisation (PyTorch's defaults for the classifier, He normal
   fan_in for the convolutions, as akamaster/pytorch_resnet_cifar10 does) and akamaster's zero padding
   (the new channels on both sides): its losses over the same steps, so the spike can be seen not to be ours.

    python studies/first_steps.py --data /tmp/cifar10jpg/train --network resnet56 --steps 30
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from resnets import create_model
from resnets.config import load_config
from resnets.data import BatchLoader, load_train_val, normalization_stats, normalize


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the input (option A: subsampled, zero channels added), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, pad_both_sides: bool):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        extra = cout - cin
        self.channel_pad = (extra // 2, extra - extra // 2) if pad_both_sides else (0, extra)
        self.stride = stride

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, *self.channel_pad))
        return F.relu(out + shortcut)


class Reference(nn.Module):
    """The paper's 6n+2-layer CIFAR net: 3x3 conv (16), 3 stages of n blocks (16, 32, 64), average pool, fc."""

    def __init__(self, n: int, pad_both_sides: bool):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(Block(cin, width, 2 if stage and not i else 1, pad_both_sides))
                cin = width
        self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(64, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)  # fan_in, as akamaster's

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def copy_weights(ours: nn.Module, reference: nn.Module) -> None:
    """Both define their tensors in the same order (stem, each block's two conv-BN pairs, fc)."""
    theirs, mine = ours.state_dict(), reference.state_dict()
    assert [t.shape for t in theirs.values()] == [t.shape for t in mine.values()], "layouts differ"
    reference.load_state_dict(dict(zip(mine, theirs.values())))


def train_steps(model: nn.Module, batches: list, lr: float) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    losses = []
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 folder or archive (data.path)")
    p.add_argument("--network", default="resnet56", help="a CIFAR ResNet preset (resnet20 ... resnet110)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--tolerance", type=float, default=1e-3, help="relative loss difference counted as differing")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(f"cifar10/{args.network}", {"data.path": args.data, "data.val_split": 5000})
    train_set, _ = load_train_val(cfg.data)
    mean, std = normalization_stats(train_set, cfg.data.normalize)
    loader = BatchLoader(train_set, 128, shuffle=True, pad=4, flip=True, seed=0, drop_last=True)
    batches = [(normalize(x, mean, std), y) for (x, y), _ in zip(loader.epoch(0), range(args.steps))]
    n = (int(args.network.removeprefix("resnet")) - 2) // 6

    start = time.perf_counter()
    ours = create_model(args.network)
    reference = Reference(n, pad_both_sides=False)
    copy_weights(ours, reference)
    ours_losses, reference_losses = train_steps(ours, batches, args.lr), train_steps(reference, batches, args.lr)
    differ = next((i for i, (a, b) in enumerate(zip(ours_losses, reference_losses), 1)
                   if abs(a - b) > args.tolerance * abs(b)), None)
    weight_diff = max((a - b).abs().max().item() for a, b in zip(ours.state_dict().values(),
                                                                 reference.state_dict().values()) if a.is_floating_point())
    torch.manual_seed(0)
    own_init = train_steps(Reference(n, pad_both_sides=True), batches, args.lr)

    print(f"{args.network}, lr {args.lr}, batch 128, fp32, {args.steps} steps on {args.data}\n")
    print("| step | ours | reference, our init | reference, own init |\n|---:|---:|---:|---:|")
    for i, row in enumerate(zip(ours_losses, reference_losses, own_init), 1):
        print(f"| {i} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    print(f"\nsame init: losses {'first differ at step ' + str(differ) if differ else 'agree at every step'} "
          f"(relative tolerance {args.tolerance}); largest weight difference after step {args.steps}: "
          f"{weight_diff:.2e}")
    print(f"largest loss: ours {max(ours_losses):.2f}, reference with its own init {max(own_init):.2f}; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
