#!/usr/bin/env python
"""The paper's CIFAR-10 recipe in a plain PyTorch script that shares no training code with resnets.

Issue 15's gap study: every run of the engine (CPU and GPU, bf16 and fp32, per-pixel and per-channel means) ends
about 3.4 points above the paper's ResNet-20. Is that the images or the engine? This script trains the same
recipe with nothing of the engine but the choice of the held-out images (resnets' split, so the two are scored on
the same 5,000): Pillow decodes the files, the augmentation and the loop are written here, the network is
first_steps.py's Reference (written from the paper's Section 4.2, akamaster's He fan-in initialisation and zero
channels on both sides), fp32, channels_last, per-channel normalisation. If it ends near 9%, the gap is the engine's.

    python studies/reference_cifar.py --data /work/data/train --out /work/runs/gap/reference-resnet20

It checkpoints every --eval-every iterations (atomically) and continues from the newest checkpoint in --out when
run again. Each batch's order and augmentation come from generators seeded by (--seed, epoch) and (--seed,
iteration), so a resumed run takes the same steps as an uninterrupted one. metrics.jsonl gets one line per
evaluation.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from first_steps import Reference
from PIL import Image

from resnets.data import ArrayDataset, scan_folder, split_validation

BATCH, LR, MOMENTUM, WEIGHT_DECAY = 128, 0.1, 0.9, 1e-4


def load_images(paths: list[Path]) -> torch.Tensor:
    """(N, 3, 32, 32) uint8, decoded by Pillow."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2)


def load_split(root: Path, val_split: int, split_seed: int):
    """((train images, labels), (held-out images, labels)): the held-out images are those of the engine's
    data.val_split and data.split_seed (its split of resnets' file order); labels follow the class folders' names
    in sorted order."""
    paths, _, _ = scan_folder(root)
    classes = sorted({p.parent.name for p in paths})
    labels = torch.tensor([classes.index(p.parent.name) for p in paths])
    ids = torch.arange(len(paths))
    parts = split_validation(ArrayDataset(ids, ids, []), val_split, split_seed)
    return [(load_images([paths[i] for i in part.labels]), labels[part.labels]) for part in parts]


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's: 4 zero pixels padded on each side, a random 32x32 crop, a horizontal flip half the time."""
    padded = F.pad(images, (4, 4, 4, 4))
    out = []
    for image in padded:
        i, j = torch.randint(0, 9, (2,), generator=generator).tolist()
        crop = image[:, i:i + 32, j:j + 32]
        out.append(crop.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else crop)
    return torch.stack(out)


def to_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def error(model, images, labels, mean, std) -> float:
    model.eval()
    wrong = sum((model(to_input(x, mean, std)).argmax(1) != y).sum().item()
                for x, y in zip(images.split(500), labels.split(500)))
    model.train()
    return 100 * wrong / len(labels)


def save(path: Path, state: dict) -> None:
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a checkpoint is whole or absent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="root/<class>/<image> folder of CIFAR-10 images")
    p.add_argument("--out", required=True, type=Path, help="run folder (created; resumed when it has a checkpoint)")
    p.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110")
    p.add_argument("--iterations", type=int, default=64000)
    p.add_argument("--milestones", type=int, nargs="*", default=[32000, 48000], help="lr / 10 at each")
    p.add_argument("--val-split", type=int, default=5000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="initialisation, order and augmentation")
    p.add_argument("--split-seed", type=int, default=0, help="which images are held out (the engine's data.split_seed)")
    args = p.parse_args()
    if args.depth < 8 or (args.depth - 2) % 6:
        p.error(f"--depth must be 6n+2 (20, 32, 44, 56, 110), not {args.depth}")

    (train_x, train_y), (val_x, val_y) = load_split(args.data, args.val_split, args.split_seed)
    mean = (train_x.float() / 255).mean((0, 2, 3)).view(3, 1, 1)
    std = (train_x.float() / 255).std((0, 2, 3)).view(3, 1, 1)
    torch.manual_seed(args.seed)
    # channels_last: the same arithmetic, 1.1-1.25x the images/s of NCHW on a 2-core AMD EPYC (Zen 3, avx2).
    model = Reference((args.depth - 2) // 6, pad_both_sides=True).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint, start = args.out / "checkpoint.pt", 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["iteration"]
        metrics = args.out / "metrics.jsonl"  # lines written after the checkpoint are written again
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        kept = [line for line in lines if json.loads(line)["iteration"] <= start]
        metrics.write_text("".join(line + "\n" for line in kept))
        print(f"resuming from iteration {start}", flush=True)
    print(f"resnet{args.depth} (Reference), {len(train_y)} training / {len(val_y)} held-out images, "
          f"{torch.get_num_threads()} threads, fp32", flush=True)

    steps_per_epoch = len(train_y) // BATCH
    model.train()
    losses, wrong, t0 = [], 0, time.perf_counter()
    for iteration in range(start, args.iterations):
        epoch, k = divmod(iteration, steps_per_epoch)
        if k == 0 or iteration == start:  # a new epoch, or the one a resumed run is in
            order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
        index = order[k * BATCH:(k + 1) * BATCH]
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + iteration)
        x, y = to_input(augment(train_x[index], generator), mean, std), train_y[index]
        lr = LR * 0.1 ** sum(iteration >= m for m in args.milestones)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        wrong += (logits.argmax(1) != y).sum().item()
        done = iteration + 1
        if done % args.eval_every == 0 or done == args.iterations:
            rate = len(losses) * BATCH / (time.perf_counter() - t0)
            line = {"iteration": done, "lr": lr, "train_loss": sum(losses) / len(losses),
                    "train_error": 100 * wrong / (len(losses) * BATCH),
                    "val_error": error(model, val_x, val_y, mean, std), "images_per_s": rate}
            save(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": done})
            with open(args.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"iter {done:6d}/{args.iterations} lr {lr:g} | train loss {line['train_loss']:.4f} "
                  f"err {line['train_error']:5.2f}% | held-out err {line['val_error']:5.2f}% | {rate:.0f} img/s",
                  flush=True)
            losses, wrong, t0 = [], 0, time.perf_counter()


if __name__ == "__main__":
    main()
