#!/usr/bin/env python
"""Inference speed on this CPU: torchvision's resnet50 in eager fp32 against each `resnets.serving.inference` mode.

Cells: resnet50 at 224x224, batch 1 and batch 16; resnet20 at 32x32, batch 256.
(a) baseline: for resnet50, torchvision's own `resnet50()` in eager fp32 NCHW under torch.inference_mode with
    the default threads -- what a user would pick instead. torchvision has no CIFAR ResNet, so for resnet20 the
    baseline is our own resnet20 in eager fp32 NCHW (the same as our "fp32" mode).
(b) ours: `resnets.serving.inference.prepare(model, mode)` for each mode. Our resnet50 is built as torchvision builds it
    (stride on the 3x3, "v1.5": the same FLOPs) and carries torchvision's weights, so both run the same network.

Weights: no trained resnet50 weights can be had here, so resnet50 has random weights (torchvision's
initialisation, seed 0) whose BatchNorm statistics are re-estimated on 64 upscaled CIFAR-10 training images, so
that activations are normalised as in a trained net; agreement is measured on held-out CIFAR-10 images upscaled
to 224 (a random head has near-ties, so it understates a trained network's agreement). resnet20 uses
--resnet20-checkpoint (a run or .pt trained with the engine on the shared CIFAR-10 images) or else random
weights, said in the output.
Agreement = share of held-out images whose top-1 class equals our fp32 eager model's.

Timing: torch.inference_mode, warm-up (including compilation) timed separately and excluded; the predictors
are timed in turns, one short slice each per round, so that load from other processes falls on all of them
alike. A predictor's images/s is all its images over all its time (the harmonic mean of its rounds): this
machine's speed swings by 2x within seconds, and short slices that land in fast or slow moments average out
over the rounds the same way the baseline's long slices do. Prints a markdown table and, last, one JSON line
of speed ratios against the baseline.

    python benchmarks/infer_speed.py [--resnet20-checkpoint runs/cifar-resnet20]
"""

import argparse
import json
import os
import platform
import tarfile
import time
from pathlib import Path
from statistics import harmonic_mean

import torch
import torch.nn.functional as F
import torchvision

import resnets
from resnets.data import load_folder, normalization_stats, normalize, split_validation
from resnets.rundir import load_checkpoint
from resnets.serving.inference import MODES, prepare

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg-train.tar.gz"
EXTRACT_TO = Path("/tmp/cifar10jpg")
CACHE = Path("~/.cache/resnets").expanduser()
HELD_OUT, SPLIT_SEED = 5000, 0  # the engine's default 45k/5k split, so a checkpoint trained with it never saw these
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BASELINE = "baseline"


def say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------------------ data


def cifar(path: str | None):
    """(train, held-out) CIFAR-10 images: --data, else the shared archive extracted once to /tmp/cifar10jpg."""
    root = Path(path).expanduser() if path else EXTRACT_TO
    if not path and not (root / "train").is_dir():
        say(f"extracting {ARCHIVE} into {root}")
        partial = root.with_name(root.name + ".partial")
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(partial, filter="data")
        partial.rename(root)  # only a complete extraction gets the real name
    root = root / "train" if (root / "train").is_dir() else root
    train, held_out = split_validation(load_folder(root, cache_dir=CACHE), HELD_OUT, SPLIT_SEED)
    # The split keeps folder order (class by class): shuffle once, so that the first n images span every class.
    return train, held_out.subset(torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0)))


def upscale(images_uint8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 32x32 images -> ImageNet-normalised float images of size x size (bilinear)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = normalize(images_uint8, mean, std)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def batched(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """x in batches of exactly `batch` (the last padded with copies of x[0]): compiled predictors see one shape."""
    out = list(x.split(batch))
    if len(out[-1]) < batch:
        out[-1] = torch.cat([out[-1], x[:1].expand(batch - len(out[-1]), *x.shape[1:])])
    return out


def predict(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    """(N, classes) logits of fn over x, in batches of `batch`."""
    return torch.cat([fn(b) for b in batched(x, batch)])[: len(x)].float()


# ---------------------------------------------------------------------------------------------- models


def resnet50_pair(bn_images: torch.Tensor) -> tuple[torch.nn.Module, resnets.ResNet]:
    """(torchvision resnet50, our resnet50 with the same weights): random weights, BN statistics re-estimated."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    # Random weights with BN's initial statistics (mean 0, var 1) let activations grow block after block; one
    # pass of cumulative BN statistics over real images normalises them as training would have.
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    tv.train()
    with torch.no_grad():
        for x in bn_images.split(16):
            tv(x)
    tv.eval()
    ours = resnets.create_model("resnet50", stride_in_1x1=False)  # torchvision's layout: the same FLOPs
    ours.load_state_dict(tv.state_dict())
    return tv, ours.eval()


def resnet20(path: str | None, train_ds) -> tuple[resnets.ResNet, torch.Tensor, torch.Tensor, str]:
    """(model, mean, std, description): a checkpoint's, or random weights with per-channel statistics."""
    if path:
        model, info = resnets.load_model(path)
        ckpt = load_checkpoint(path)  # its iteration and evaluations, for the description
        last = ckpt["history"][-1] if ckpt.get("history") else {}
        val = f", its own held-out top-1 error {last['val_top1_error']:.2%}" if "val_top1_error" in last else ""
        pre = info["preprocessing"]
        return model, pre.mean, pre.std, f"checkpoint {path} (iteration {ckpt['iteration']}{val})"
    torch.manual_seed(0)
    mean, std = normalization_stats(train_ds, "channel")
    return resnets.create_model("resnet20").eval(), mean, std, "random weights (no --resnet20-checkpoint)"


# ---------------------------------------------------------------------------------------------- timing


def cpu_clock() -> tuple[float, float, float]:
    """(wall s, CPU s the whole machine was busy, CPU s this process used)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    own = os.times()
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return time.perf_counter(), busy, own.user + own.system


def others_share(before: tuple, after: tuple) -> float:
    """Share of the machine's CPU time other processes took in between (they slow every predictor)."""
    wall, busy, own = (b - a for a, b in zip(before, after))
    return max(0.0, busy - own) / (wall * os.cpu_count())


def warm_up(fn, x: torch.Tensor, calls: int = 2) -> float:
    """Seconds of the first call (compilation for compiled modes); then `calls` more, untimed."""
    start = time.perf_counter()
    fn(x)
    first = time.perf_counter() - start
    for _ in range(calls):
        fn(x)
    return first


def measure(fns: dict, x: torch.Tensor, rounds: int, calls: int) -> dict[str, list[float]]:
    """images/s of each predictor per round; each round runs every predictor `calls` times in turn."""
    rates = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn(x)
            rates[name].append(calls * len(x) / (time.perf_counter() - start))
    return rates


# ----------------------------------------------------------------------------------------------- cells


def run_cell(name, model, baseline, batch, size, images, labels, calibration, reference, args) -> dict:
    """One (network, batch) cell: warm-up s, images/s, and top-1 agreement with `reference` per predictor."""
    say(f"== {name}, batch {batch}, {size}x{size}")
    fns, setup = {}, {}
    if baseline is not None:
        fns[BASELINE] = baseline
    for mode in args.modes:
        start = time.perf_counter()
        fns[mode] = prepare(model, mode, calibration=calibration if mode == "int8" else None)
        setup[mode] = time.perf_counter() - start
    x = images[:batch] if len(images) >= batch else batched(images, batch)[0]
    warm = {}
    for key, fn in fns.items():
        warm[key] = setup.get(key, 0.0) + warm_up(fn, x)
        say(f"   {key}: warm-up {warm[key]:.1f} s")
    rounds, calls = args.rounds, max(2, args.images_per_slice // batch)
    measure(fns, x, 1, calls)  # one untimed round: measured, the first round after compiling runs slow
    clock = cpu_clock()
    rates = measure(fns, x, rounds, calls)
    others = others_share(clock, cpu_clock())
    say("   images/s per round: " + "; ".join(f"{k} {[round(r, 1) for r in v]}" for k, v in rates.items()))
    n = min(len(images), args.agreement_images[name] if batch > 1 else args.agreement_images_batch1)
    ref_top1 = reference[:n].argmax(1)
    agree, accuracy, logit_diff = {}, {}, {}
    for key, fn in fns.items():
        if key == BASELINE:
            continue  # resnet50: same weights as our fp32, checked once on a batch; resnet20: it is our fp32
        logits = reference[:n] if key == "fp32" else predict(fn, images[:n], batch)
        top1 = logits.argmax(1)
        agree[key] = (top1 == ref_top1).float().mean().item()
        accuracy[key] = (top1 == labels[:n]).float().mean().item()
        logit_diff[key] = (logits - reference[:n]).abs().max().item()
        say(f"   {key}: top-1 agreement {agree[key]:.2%} on {n} images, max |logit diff| {logit_diff[key]:.3g}")
    return {"warm": warm, "rates": rates, "others": others, "agree": agree, "accuracy": accuracy,
            "logit_diff": logit_diff, "n": n, "rounds": rounds, "calls": calls}


# ---------------------------------------------------------------------------------------------- report


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        info = f.read()
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = ", ".join(f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if f in flags)
    return (f"{cpu}, {os.cpu_count()} logical CPUs ({isa}); torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), torchvision {torchvision.__version__}, Python "
            f"{platform.python_version()}")


def table(results: dict, args) -> str:
    lines = [("| network | batch | predictor | images/s (all rounds; range of rounds) | vs baseline | warm-up s | "
              "top-1 agreement with fp32 | top-1 accuracy | CPU taken by others |"),
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (name, batch), r in results.items():
        base = harmonic_mean(r["rates"][BASELINE])
        for key, rates in r["rates"].items():
            label = {BASELINE: "(a) torchvision resnet50, eager fp32 NCHW" if name == "resnet50" else
                     "(a) our resnet20, eager fp32 NCHW"}.get(key, f"(b) `{key}`")
            agree = f"{r['agree'][key]:.2%} of {r['n']}" if key in r["agree"] else "(same network as fp32)"
            acc = f"{r['accuracy'][key]:.2%}" if key in r["accuracy"] and name == "resnet20" else "-"
            lines.append(f"| {name} | {batch} | {label} | {harmonic_mean(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) | "
                         f"{harmonic_mean(rates) / base:.2f}x | {r['warm'][key]:.1f} | {agree} | {acc} | {r['others']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="CIFAR-10 jpg folder root/<class>/<image> (default: the shared archive)")
    p.add_argument("--resnet20-checkpoint", help="a run directory or .pt of resnet20 trained on CIFAR-10")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--cells", nargs="+", default=["resnet50:1", "resnet50:16", "resnet20:256"],
                   help="network:batch pairs to run")
    p.add_argument("--rounds", type=int, default=12, help="timed rounds")
    p.add_argument("--images-per-slice", type=int, default=32,
                   help="images per predictor per round (at least two calls)")
    p.add_argument("--resnet50-images", type=int, default=512, help="held-out images for resnet50 agreement")
    p.add_argument("--resnet20-images", type=int, default=HELD_OUT, help="held-out images for resnet20 agreement")
    p.add_argument("--agreement-images-batch1", type=int, default=64,
                   help="held-out images for the agreement of batch-1 predictors")
    args = p.parse_args()
    args.agreement_images = {"resnet50": args.resnet50_images, "resnet20": args.resnet20_images}
    wall = time.perf_counter()
    torch.manual_seed(0)
    say(f"machine: {machine()}")
    train_ds, held_out = cifar(args.data)
    say(f"data: {len(train_ds)} train / {len(held_out)} held-out CIFAR-10 images (split seed {SPLIT_SEED})")

    results, notes = {}, []
    cells = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cells]
    if any(name == "resnet50" for name, _ in cells):
        order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(1))
        bn_images = upscale(train_ds.images[order[:64]], 224)
        tv, ours = resnet50_pair(bn_images)
        n = max(args.resnet50_images, args.agreement_images_batch1)
        images, labels = upscale(held_out.images[:n], 224), held_out.labels[:n]
        calibration = upscale(train_ds.images[order[:128]], 224).split(16)  # training images, never evaluated
        say(f"resnet50: computing fp32 reference logits on {n} held-out images")
        reference = predict(prepare(ours, "fp32"), images, 16)
        with torch.inference_mode():
            same = (tv(images[:16]) - reference[:16]).abs().max().item()
        classes = reference.argmax(1).unique().numel()
        top2 = reference.topk(2, 1).values
        notes.append(f"resnet50: random weights (torchvision's initialisation, seed 0; no trained weights can be "
                     f"had here) with BN statistics re-estimated on 64 upscaled CIFAR-10 training images; agreement "
                     f"on held-out CIFAR-10 images upscaled to 224. A random 1000-class head has near-ties: fp32 "
                     f"predicts {classes} distinct classes on them and the median top-1 margin is "
                     f"{(top2[:, 0] - top2[:, 1]).median():.3g} logits, so these agreements understate a trained "
                     f"network's. Our fp32 vs torchvision on 16 of them: max |logit diff| {same:.2g}. int8 "
                     f"calibrated on 128 training images (8 batches of 16).")

        def baseline(x):
            with torch.inference_mode():
                return tv(x)

        for name, batch in cells:
            if name == "resnet50":
                results[name, batch] = run_cell(name, ours, baseline, batch, 224, images, labels, calibration,
                                                reference, args)
    if any(name == "resnet20" for name, _ in cells):
        model, mean, std, source = resnet20(args.resnet20_checkpoint, train_ds)
        images = normalize(held_out.images[: args.resnet20_images], mean, std)
        labels = held_out.labels[: args.resnet20_images]
        calib_idx = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(1))[:1024]
        calibration = normalize(train_ds.images[calib_idx], mean, std).split(256)
        reference = predict(prepare(model, "fp32"), images, 256)
        notes.append(f"resnet20: {source}; the baseline is our own resnet20 in eager fp32 NCHW (torchvision has "
                     f"no CIFAR ResNet); agreement and accuracy on held-out CIFAR-10 images (JPEG q75); int8 "
                     f"calibrated on 1024 training images (4 batches of 256).")
        fp32 = prepare(model, "fp32")
        for name, batch in cells:
            if name == "resnet20":
                results[name, batch] = run_cell(name, model, fp32, batch, 32, images, labels, calibration,
                                                reference, args)

    lines = ["", table(results, args), "",
             (f"images/s: all images over all time in {args.rounds} rounds in which each predictor in turn runs "
              f"calls of {args.images_per_slice} images in all (at least two calls); warm-up (compilation included) "
              "excluded and shown apart. 'CPU taken by others': share of the machine's CPU time used by other "
              "processes, or stolen by the hypervisor, while the cell was timed."), *notes,
             f"Machine: {machine()}.", f"Wall time: {time.perf_counter() - wall:.0f} s.", ""]
    say("\n".join(lines))
    out = {}
    for (name, batch), res in results.items():
        base = harmonic_mean(res["rates"][BASELINE])
        for key, rates in res["rates"].items():
            if key != BASELINE:
                out[f"{name}_b{batch}_{key}"] = round(harmonic_mean(rates) / base, 2)
        for key, agree in res["agree"].items():
            if batch > 1:
                out[f"{name}_b{batch}_{key}_top1_agreement"] = round(agree, 4)
                if name == "resnet20":
                    out[f"{name}_b{batch}_{key}_top1_accuracy"] = round(res["accuracy"][key], 4)
        out[f"{name}_b{batch}_baseline_images_per_s"] = round(base, 1)
    say(json.dumps(out))


if __name__ == "__main__":
    main()
