#!/usr/bin/env python
"""What int8 mode should leave in fp32: resnet50's int8 speed and a trained ResNet-20's agreement, per choice.

For each choice of layers kept in fp32 (the classifier, as `resnets.serving.inference.KEEP_FLOAT` does; the stem and
the classifier; nothing):
- resnet50 at 224x224, batch 16, random weights as in infer_speed.py: int8 images/s against torchvision's
  resnet50 in eager fp32, all predictors timed in turns (infer_speed.measure), all images over all time;
- a ResNet-20 trained on CIFAR-10 (--resnet20-checkpoint): top-1 agreement with its fp32 predictions and
  accuracy on the 5,000 held-out images, for int8 calibrated on each of several samples of 1,024 training
  images (--seeds), since the calibration sample alone moves agreement by a few tenths of a percent.

    python studies/int8_float_layers.py --resnet20-checkpoint runs/resnet20 [--data cifar10/train]
"""

import argparse
import sys
from pathlib import Path
from statistics import harmonic_mean

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the instrument whose timing it reuses
import infer_speed as bench

from resnets.data import normalize
from resnets.serving.inference import prepare

CHOICES = {"classifier": ("fc",), "stem and classifier": ("conv1", "fc"), "nothing": ()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="CIFAR-10 jpg folder root/<class>/<image> (default: the shared archive)")
    p.add_argument("--resnet20-checkpoint", required=True, help="a run directory or .pt of resnet20 on CIFAR-10")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="calibration samples")
    p.add_argument("--rounds", type=int, default=12, help="timed rounds for resnet50")
    args = p.parse_args()
    torch.manual_seed(0)
    bench.say(f"machine: {bench.machine()}")
    train_ds, held_out = bench.cifar(args.data)

    order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(1))
    tv, ours = bench.resnet50_pair(bench.upscale(train_ds.images[order[:64]], 224))
    calibration = bench.upscale(train_ds.images[order[:128]], 224).split(16)
    x = bench.upscale(held_out.images[:16], 224)

    def baseline(x):
        with torch.inference_mode():
            return tv(x)

    fns = {bench.BASELINE: baseline}
    fns |= {name: prepare(ours, "int8", calibration, keep) for name, keep in CHOICES.items()}
    for name, fn in fns.items():
        bench.say(f"resnet50 {name}: warm-up {bench.warm_up(fn, x):.1f} s")
    bench.measure(fns, x, 1, 2)  # untimed: the first round after compiling runs slow
    rates = {name: harmonic_mean(r) for name, r in bench.measure(fns, x, args.rounds, 2).items()}

    model, mean, std, source = bench.resnet20(args.resnet20_checkpoint, train_ds)
    images, labels = normalize(held_out.images, mean, std), held_out.labels
    reference = bench.predict(prepare(model, "fp32"), images, 256).argmax(1)
    agree = {name: [] for name in CHOICES}
    accuracy = {name: [] for name in CHOICES}
    for seed in args.seeds:
        sample = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed))[:1024]
        calib = normalize(train_ds.images[sample], mean, std).split(256)
        for name, keep in CHOICES.items():
            top1 = bench.predict(prepare(model, "int8", calib, keep), images, 256).argmax(1)
            agree[name].append((top1 == reference).float().mean().item())
            accuracy[name].append((top1 == labels).float().mean().item())
            bench.say(f"resnet20 {name}, calibration seed {seed}: agreement {agree[name][-1]:.2%}")

    base = rates[bench.BASELINE]
    bench.say(f"\nresnet20: {source}; fp32 accuracy {(reference == labels).float().mean():.2%} on "
              f"{len(labels)} held-out images; calibration seeds {args.seeds}\n")
    bench.say("| kept in fp32 | resnet50 b16 int8 images/s | vs torchvision eager fp32 | resnet20 top-1 agreement "
              "with fp32 (min-max over seeds) | resnet20 top-1 accuracy (min-max) |\n|---|---:|---:|---:|---:|")
    for name in CHOICES:
        bench.say(f"| {name} | {rates[name]:.1f} | {rates[name] / base:.2f}x | {min(agree[name]):.2%}-"
                  f"{max(agree[name]):.2%} | {min(accuracy[name]):.2%}-{max(accuracy[name]):.2%} |")
    bench.say(f"\ntorchvision resnet50 eager fp32, batch 16: {base:.1f} images/s. Machine: {bench.machine()}.")


if __name__ == "__main__":
    main()
