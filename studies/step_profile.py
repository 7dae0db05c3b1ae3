#!/usr/bin/env python
"""Where the time of one training step of the resnets engine goes, on this CPU.

Runs the engine's own pieces -- BatchLoader (gather, pad + random crop, flip), normalize, the network under
autocast, cross-entropy, backward, SGD, the lr schedule -- as `resnets train` chains them for the packaged recipe
cifar10/<network> on the 45k shared CIFAR-10 images, and times each phase of every step (wall clock; on the CPU
every op has finished when it returns). Each --setting (precision/layout, e.g. bf16/channels_last) runs --steps
steps after --warmup untimed ones, once per round, the settings in turn, so load from other processes falls on
all of them alike. Prints a markdown table per setting: median ms per step and share of each phase, images/s,
the share of the CPU that other processes took, and with --ops the ten ops that took most self CPU time.

    python studies/step_profile.py --data /work/data/train --settings fp32/nchw,bf16/channels_last --rounds 3
"""

import argparse
import os
import time
from statistics import median

import torch
import torch.nn.functional as F

from resnets import runtime
from resnets.config import load_config
from resnets.data import BatchLoader, load_train_val, normalization_stats, normalize
from resnets.models import ResNet
from resnets.schedule import in_iterations, lr_factor

PHASES = ("batch: gather, crop, flip", "normalize, layout", "forward + loss", "backward", "SGD step", "schedule, rest")


def build(cfg, train_set, precision: str, layout: str, compiled: bool):
    """(model, optimizer, scheduler, loader, bf16) as resnets.training.loop builds them, from the same seed; the
    model under torch.compile (as run.compile=true wraps it) when compiled."""
    torch.manual_seed(cfg.run.seed)
    in_channels, _, _ = train_set.image_shape
    model = ResNet(cfg.model_config(len(train_set.classes), in_channels))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    loader = BatchLoader(train_set, cfg.optim.batch_size, shuffle=True, pad=cfg.data.pad, flip=cfg.data.flip,
                         seed=cfg.run.seed, drop_last=True)
    schedule = in_iterations(cfg.schedule, len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(schedule, it))
    bf16 = runtime.use_bf16(precision, torch.device("cpu"))
    model.train()
    return torch.compile(model) if compiled else model, optimizer, scheduler, loader, bf16


def profile(cfg, train_set, mean, std, setting: str, steps: int, warmup: int, ops: bool) -> dict:
    """{phase: seconds per step (median over the steps)} and the images/s of the timed steps."""
    precision, layout, *rest = setting.split("/")
    model, optimizer, scheduler, loader, bf16 = build(cfg, train_set, precision, layout, rest == ["compiled"])
    batches = loader.epoch(0)
    times = {phase: [] for phase in PHASES}
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if ops else None
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
            if profiler:
                profiler.start()
        t = [time.perf_counter()]
        images, labels = next(batches)
        t.append(time.perf_counter())
        x = normalize(images, mean, std)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        t.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss = F.cross_entropy(logits, labels)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        scheduler.step()
        loss.item()
        t.append(time.perf_counter())
        if step >= warmup:
            for phase, a, b in zip(PHASES, t, t[1:], strict=False):  # t has one more entry than PHASES
                times[phase].append(b - a)
    wall = time.perf_counter() - start
    table = None
    if profiler:
        profiler.stop()
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    return {"phases": {p: median(v) for p, v in times.items()}, "images_per_s": steps * cfg.optim.batch_size / wall,
            "ops": table}


def cpu_ticks() -> tuple[int, int, int]:
    """(all ticks of the machine, its busy ticks, this process's ticks) from /proc."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]  # user nice system idle iowait irq softirq
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return sum(fields), sum(fields) - fields[3] - fields[4], int(own[11]) + int(own[12])  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the CIFAR-10 root/<class>/<image> training folder")
    parser.add_argument("--network", default="resnet20", help="resnet20 (default), resnet56, ...")
    parser.add_argument("--settings", default="fp32/nchw,fp32/channels_last,bf16/channels_last",
                        help="comma-separated precision/layout[/compiled]: fp32|bf16 / nchw|channels_last, "
                             "/compiled under torch.compile (compiled in the warm-up steps, not timed)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default: the recipe's 128; 64 is one of the two default workers')")
    parser.add_argument("--ops", action="store_true",
                        help="also list the twenty ops of most self CPU time (the profiler slows the timed steps)")
    args = parser.parse_args()

    overrides = {"data.path": args.data, "data.val_split": 5000}
    if args.batch:
        overrides["optim.batch_size"] = args.batch
    cfg = load_config(f"cifar10/{args.network}", overrides)
    train_set, _ = load_train_val(cfg.data)
    mean, std = normalization_stats(train_set.sample(2000), cfg.data.normalize)  # as resnets.training.loop estimates them
    settings = args.settings.split(",")
    for setting in settings:
        precision = setting.split("/")[0]
        if precision == "bf16" and not runtime.native_bf16_cpu():
            print(f"note: {setting} runs emulated bf16 here (no avx512_bf16 / amx)")
    print(f"{runtime.describe(torch.device('cpu'))}; {torch.get_num_threads()} thread(s) "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); {args.network}, batch "
          f"{cfg.optim.batch_size}, {args.steps} timed steps x {args.rounds} round(s)")

    results = {s: [] for s in settings}
    ticks0 = cpu_ticks()
    for _ in range(args.rounds):
        for setting in settings:
            results[setting].append(profile(cfg, train_set, mean, std, setting, args.steps, args.warmup, args.ops))
    total, busy, own = (b - a for a, b in zip(ticks0, cpu_ticks(), strict=True))
    others = max(0, busy - own) / max(1, total)

    base = None
    for setting in settings:
        runs = results[setting]
        rate = median(r["images_per_s"] for r in runs)
        base = base or rate
        phases = {p: median(r["phases"][p] for r in runs) for p in PHASES}
        total = sum(phases.values())
        print(f"\n### {setting}: {rate:.0f} images/s ({rate / base:.2f}x the first setting)\n")
        print("| phase | ms/step | share |\n|---|---|---|")
        for p in PHASES:
            print(f"| {p} | {1000 * phases[p]:.1f} | {phases[p] / total:.0%} |")
        if runs[-1]["ops"]:
            print("\n```\n" + runs[-1]["ops"] + "```")
    print(f"\nother processes took {others:.0%} of the machine's CPU time during the measurement")


if __name__ == "__main__":
    main()
