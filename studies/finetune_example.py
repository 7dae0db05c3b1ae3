#!/usr/bin/env python
"""The README's fine-tuning example: is a trained CIFAR-10 ResNet-20 a better start than random weights for a small
folder of another task, on the same short schedule?

Two small tasks, 300 training and 500 held-out images each, built here from images at hand (no download):

- upside_down: photos the right way up or upside down (rotated 180 degrees), from the CIFAR-10 training images that
  the CIFAR-10 recipe holds out (data.val_split=5000, split_seed 0), which the network did not train on: the same
  image source, a question it was never asked.
- digits: scikit-learn's bundled 8x8 handwritten digits upscaled to 32x32 RGB: another image source, classes the
  network never saw.

Each task is trained twice with the recipe finetune/resnet20 (30 epochs, cosine with warm-up) and the same seed:

- finetuned: model.init = the CIFAR-10 network; a new classifier for the task's classes, and the trained layers at
  half the classifier's lr (the recipe's optim.backbone_lr_factor);
- scratch: random weights, every layer at the classifier's lr (backbone_lr_factor=1), as a random start needs.

Writes the folders and the four runs under --runs (finished runs are reused, interrupted ones resumed), and the
comparison, a markdown table and one picture with every arm's curves, under --docs:

    python studies/finetune_example.py --cifar /work/data/train    # from resnet20:cifar10 (--init: another)
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnets import files, runtime
from resnets.config import load_config
from resnets.data import split_validation
from resnets.data.folders import StreamedFolder
from resnets.paper.experiments import Run, execute
from resnets.plots import plot_comparison

RECIPE = "finetune/resnet20"


def upside_down(root: Path, args) -> Path:
    """root/{train,val}/{upright,upside_down}/*.png: CIFAR-10 images of the held-out split of the network's training
    run (data.val_split=args.cifar_held_out, split_seed 0), which it did not train on, every other one turned 180
    degrees; args.train + args.held_out of them drawn with a fixed seed."""
    _, held_out = split_validation(StreamedFolder(args.cifar), args.cifar_held_out, seed=0)
    chosen = np.random.default_rng(0).choice(len(held_out), args.train + args.held_out, replace=False)
    for n, i in enumerate(chosen):
        split, turned = ("train" if n < args.train else "val"), n % 2 == 1
        folder = root / split / ("upside_down" if turned else "upright")
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(os.fsdecode(held_out.paths[i])) as image:
            (image.rotate(180) if turned else image).convert("RGB").save(folder / f"{i:04d}.png")
    return root


def digits(root: Path, args) -> Path:
    """root/{train,val}/<digit>/*.png: scikit-learn's digits, 0..16 scaled to 0..255, resized bicubically from 8x8
    to 32x32 and stored as RGB; a tenth of args.train and of args.held_out per digit, drawn with a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.default_rng(0)
    train, held_out = args.train // 10, args.held_out // 10
    for label in range(10):
        index = rng.permutation(np.flatnonzero(bunch.target == label))
        for split, part in (("train", index[:train]), ("val", index[train: train + held_out])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                pixels = np.rint(bunch.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels).resize((32, 32), Image.BICUBIC).convert("RGB").save(folder / f"{i:04d}.png")
    return root


# Each task: how its folder is built, and its own overrides (a mirrored digit is another symbol; a mirrored photo
# is as upright as it was).
TASKS = {"upside_down": (upside_down, {}), "digits": (digits, {"data.flip": False})}


def arms(task: str, init: str, folder: Path, overrides: dict) -> list[Run]:
    common = {"data.path": str(folder), "data.cache_dir": "", **TASKS[task][1], **overrides}
    return [Run(f"{task}-finetuned", task, load_config(RECIPE, {**common, "model.init": init})),
            Run(f"{task}-scratch", task, load_config(RECIPE, {**common, "optim.backbone_lr_factor": 1.0}))]


def markdown(runs: list[Run], args, command: str) -> str:
    machine = f"{runtime.describe(torch.device('cpu'))}, {torch.get_num_threads()} thread(s)"
    intro = (f"Made by `{command}` on {machine}. Recipe {RECIPE}; each task {args.train} training and "
             f"{args.held_out} held-out images (studies/finetune_example.py says how they are made); the same seed for every run. "
             "Errors in %, held-out top-1; training error over the steps since the evaluation before.")
    lines = [f"# Fine-tuning example: from {args.init} vs from scratch", "", intro, "",
             "| task | arm | init | iterations | training error | held-out error (end) | held-out error (best) |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        last, best = run.metrics[-1], min(m["val_top1_error"] for m in run.metrics)
        lines.append(f"| {run.group} | {run.name.split('-')[-1]} | {run.cfg.model.init or 'random'} | "
                     f"{last['iteration']} | {100 * last['train_error']:.1f} | {100 * last['val_top1_error']:.1f} | "
                     f"{100 * best:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # After the packaged networks exist: the default, resnet20:cifar10.
    parser.add_argument("--init", default="resnet20:cifar10", help="the CIFAR-10 network (model.init)")
    parser.add_argument("--cifar", required=True, help="the CIFAR-10 training images as root/<class>/<image>")
    parser.add_argument("--cifar-held-out", type=int, default=5000,
                        help="data.val_split of the network's training run: the upside_down task draws from those")
    parser.add_argument("--train", type=int, default=300, help="training images per task")
    parser.add_argument("--held-out", type=int, default=500, help="held-out images per task")
    parser.add_argument("--runs", default="runs/finetune_example", help="where the folders and the runs go")
    parser.add_argument("--docs", default="docs/results", help="where finetune_example.md and .png go")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides for every run")
    args = parser.parse_args(argv)
    runs_dir, docs = Path(args.runs), Path(args.docs)
    overrides = dict(o.split("=", 1) for o in args.overrides)
    runs = []
    for task, (build, _) in TASKS.items():
        folder = runs_dir / task / "images"
        if not folder.is_dir():
            build(folder, args)
        runs += arms(task, args.init, folder, overrides)
    execute(runs, runs_dir)
    panels = {task: [(f"{r.name.split('-')[-1]} ({r.cfg.model.init or 'random init'})", r.metrics)
                     for r in runs if r.group == task] for task in TASKS}
    plot_comparison(panels, docs / "finetune_example.png", title="ResNet-20 from CIFAR-10 weights vs from scratch")
    text = markdown(runs, args, " ".join(["python studies/finetune_example.py", *(argv or sys.argv[1:])]))
    files.write_text(docs / "finetune_example.md", text)
    print(text, end="")
    print(f"wrote {docs / 'finetune_example'}.md and .png")


if __name__ == "__main__":
    main()
