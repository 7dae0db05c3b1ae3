#!/usr/bin/env python
"""Training speed on this CPU: the usual reference-script baseline against the resnets engine.

(a) baseline: what a user of pytorch/examples or the torchvision references gets -- torchvision ImageFolder,
    per-image PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) in a
    DataLoader with 2 workers, the model in eager fp32 NCHW, a plain SGD loop.
(b) ours: `resnets.train.train()` running the packaged paper recipe (cifar10/<net>) with its defaults, only
    the length and the 45k/5k split set: images decoded once into memory, batched augmentation in the main
    process, bf16 autocast where the CPU has it, channels_last.

Both train the same network (`resnets.create_model`) on the same 45k CIFAR-10 images, batch 128, and are
validated on the same 5k held-out images. Prints a markdown table and, last, one JSON line with the
speed-ups (ours / baseline) and held-out errors.

    python benchmarks/train_speed.py --data /tmp/cifar10jpg/train
"""

import argparse
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

import resnets
from resnets.config import list_recipes, load_config
from resnets.data import ArrayDataset, scan_folder, split_validation
from resnets.hardware import use_bf16
from resnets.train import train

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg-train.tar.gz"
EXTRACT_TO = Path("~/.cache/resnets/cifar10-jpg").expanduser()
NETWORKS = ("resnet20", "resnet56")
BATCH, VAL_IMAGES = 128, 5000
# The per-channel CIFAR-10 statistics the reference scripts hard-code.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def say(text: str) -> None:
    print(text, flush=True)  # progress lines must not wait behind the engine's own output when piped to tee


# ------------------------------------------------------------------------------------------------ data


def find_data(path: str | None) -> Path:
    """The root/<class>/<image> training folder: --data, else the shared archive extracted once into a cache."""
    if path:
        root = Path(path).expanduser()
    elif (EXTRACT_TO / "train").is_dir():
        root = EXTRACT_TO
    elif ARCHIVE.is_file():
        say(f"extracting {ARCHIVE} into {EXTRACT_TO} (once)")
        partial = EXTRACT_TO.with_name(EXTRACT_TO.name + ".partial")
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(partial, filter="data")
        partial.rename(EXTRACT_TO)  # only a complete extraction gets the real name
        root = EXTRACT_TO
    else:
        sys.exit(f"no data: pass --data PATH (a CIFAR-10 root/<class>/<image> jpg folder) or provide {ARCHIVE}")
    root = root / "train" if (root / "train").is_dir() else root
    if not root.is_dir():
        sys.exit(f"no data: {root} is not a folder of class folders of images")
    return root


def split_indices(root: Path, seed: int) -> tuple[list[int], list[int]]:
    """ImageFolder indices of the 45k train / 5k held-out images the engine uses for (data.val_split, seed).

    Runs resnets' own split_validation on a dataset of file numbers (in the order load_folder decodes), so
    the held-out images are exactly the engine's, then maps file paths to ImageFolder's order.
    """
    paths, _, _ = scan_folder(root)
    ids = torch.arange(len(paths))
    train_part, val_part = split_validation(ArrayDataset(ids, ids, []), VAL_IMAGES, seed)
    index_of = {str(Path(p)): i for i, (p, _) in enumerate(torchvision.datasets.ImageFolder(root).samples)}
    return [index_of[str(paths[i])] for i in train_part.labels], [index_of[str(paths[i])] for i in val_part.labels]


# -------------------------------------------------------------------------------------------- baseline


def baseline_loader(root: Path, indices: list[int], train: bool) -> DataLoader:
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    tf = transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ds = Subset(torchvision.datasets.ImageFolder(root, tf), indices)
    if train:
        return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
    return DataLoader(ds, batch_size=500, num_workers=2)


def baseline_train(name: str, root: Path, train_idx: list[int], iterations: int, warmup: int, chunk: int,
                   milestones: list[int] = ()) -> tuple[torch.nn.Module, list[float]]:
    """(model, images/s of each `chunk` iterations after the first `warmup`); the clock starts after the
    warm-up steps, so with warmup > 0 the workers' start-up and the first (slow) steps are excluded."""
    torch.manual_seed(0)
    model = resnets.create_model(name, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.1)
    loader = baseline_loader(root, train_idx, train=True)
    model.train()
    times = [time.perf_counter()]  # times[k]: when step k finished (times[0]: the start)
    while len(times) <= iterations:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            times.append(time.perf_counter())
            if len(times) > iterations:
                break
    del loader  # shuts the persistent workers down before the next measurement
    return model, [chunk * BATCH / (times[k + chunk] - times[k]) for k in range(warmup, iterations, chunk)]


@torch.no_grad()
def baseline_error(model: torch.nn.Module, root: Path, val_idx: list[int]) -> float:
    model.eval()
    wrong = total = 0
    for x, y in baseline_loader(root, val_idx, train=False):
        wrong += (model(x).argmax(1) != y).sum().item()
        total += len(y)
    return wrong / total


# ------------------------------------------------------------------------------------------------- ours


def engine_config(name: str, root: Path, iterations: int, eval_every: int, milestones: list[int] | None = None):
    """The packaged paper recipe as a user runs it; only the data, the run's length and the split are set."""
    recipe = f"cifar10/{name}"
    overrides = {"model.name": name, "data.path": str(root), "data.val_split": VAL_IMAGES,
                 "schedule.iterations": iterations, "run.eval_every": eval_every}
    if milestones is not None:
        overrides["schedule.milestones"] = milestones
    return load_config(recipe if recipe in list_recipes() else None, overrides)


def engine_train(cfg) -> list[dict]:
    """The metrics.jsonl lines of one engine run (one per evaluation; images_per_s excludes evaluation
    and the data loading before the first step)."""
    with tempfile.TemporaryDirectory() as run_dir:
        train(cfg, Path(run_dir))
        return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- report


def cpu_clock() -> tuple[float, float, float]:
    """(wall s, CPU s the whole machine was busy, CPU s this process and its reaped children used)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    own = os.times()
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait; steal counts
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system


def others_share(before: tuple, after: tuple) -> float:
    """Fraction of the machine's CPU time that other processes (or the hypervisor) took in between:
    the benchmark shares the machine, and whatever they take slows both pipelines down."""
    wall, busy, own = (b - a for a, b in zip(before, after))
    return max(0.0, busy - own) / (wall * os.cpu_count())


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    bf16 = use_bf16("auto", torch.device("cpu"))
    return (f"{cpu}, {os.cpu_count()} logical CPUs, bf16 hardware: {'yes' if bf16 else 'no'}; torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), torchvision {torchvision.__version__}, "
            f"Python {platform.python_version()}")


def table(args, speed: dict, others: dict, error: dict) -> str:
    n = args.accuracy_iterations
    lines = [(f"| network | pipeline | images/s (median, range) | vs baseline | CPU taken by others | "
             f"held-out top-1 error{f' after {n} it.' if n else ''} |"), "|---|---|---:|---:|---:|---:|"]
    for name in args.networks:
        for pipe, label in (("baseline", "(a) baseline: eager fp32 NCHW, per-image transforms, 2 workers"),
                            ("ours", "(b) ours: `resnets train`, paper recipe defaults")):
            rates = speed[name, pipe]
            err = f"{error[name, pipe]:.2%}" if (name, pipe) in error else "-"
            lines.append(f"| {name} | {label} | {median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) | "
                         f"{median(rates) / median(speed[name, 'baseline']):.2f}x | {others[name, pipe]:.0%} | {err} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="CIFAR-10 jpg folder root/<class>/<image> (default: the shared archive, extracted)")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS))
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first (a multiple of --chunk)")
    p.add_argument("--iterations", type=int, default=40, help="timed iterations per cell (a multiple of --chunk)")
    p.add_argument("--chunk", type=int, default=10, help="iterations per timing; the median chunk is reported")
    p.add_argument("--accuracy-iterations", type=int, default=1000,
                   help="length of the short schedule both train on the first network (0: skip)")
    args = p.parse_args()
    if args.warmup % args.chunk or args.iterations % args.chunk or args.warmup < args.chunk or not args.iterations:
        p.error("--warmup and --iterations must be positive multiples of --chunk")
    root = find_data(args.data)
    wall = time.perf_counter()
    split_seed = engine_config(args.networks[0], root, 1, 1).data.split_seed
    train_idx, val_idx = split_indices(root, split_seed)
    say(f"data: {root} ({len(train_idx)} train / {len(val_idx)} held-out images, split seed {split_seed})")

    speed, others, error = {}, {}, {}  # (network, pipeline) -> images/s per chunk, CPU share of others, error
    for name in args.networks:
        say(f"== {name}: baseline, {args.warmup} warm-up + {args.iterations} timed iterations")
        clock = cpu_clock()
        speed[name, "baseline"] = baseline_train(name, root, train_idx, args.warmup + args.iterations, args.warmup,
                                                 args.chunk)[1]
        others[name, "baseline"] = others_share(clock, cpu_clock())
        # eval_every = chunk: the engine reports images/s per interval between evaluations (evaluation not
        # counted), so its first warmup/chunk intervals are the warm-up and the rest are the timed chunks.
        cfg = engine_config(name, root, args.warmup + args.iterations, args.chunk)
        say(f"== {name}: ours (run.precision={cfg.run.precision}, channels_last={cfg.run.channels_last}, "
            f"compile={cfg.run.compile}), {args.warmup} warm-up + {args.iterations} timed iterations")
        clock = cpu_clock()
        speed[name, "ours"] = [m["images_per_s"] for m in engine_train(cfg)[args.warmup // args.chunk:]]
        others[name, "ours"] = others_share(clock, cpu_clock())
        say(f"   images/s per chunk: baseline {[round(r) for r in speed[name, 'baseline']]}, ours {speed[name, 'ours']}")

    n, long_run = args.accuracy_iterations, {}
    if n:
        name, milestones = args.networks[0], [n // 2, n * 3 // 4]
        say(f"== accuracy: {name}, {n} iterations, lr 0.1 divided by 10 at {milestones}, both pipelines")
        model, (long_run["baseline"],) = baseline_train(name, root, train_idx, n, 0, n, milestones)
        error[name, "baseline"] = baseline_error(model, root, val_idx)
        last = engine_train(engine_config(name, root, n, n, milestones))[-1]
        error[name, "ours"], long_run["ours"] = last["val_top1_error"], last["images_per_s"]

    lines = ["", table(args, speed, others, error), "",
             (f"images/s: batch {BATCH}, 32x32; {args.iterations} timed iterations after {args.warmup} warm-up ones, "
             f"timed in chunks of {args.chunk}: median (slowest-fastest chunk). Data loading before the first step "
             "and evaluation are not counted. 'CPU taken by others': share of the machine's CPU time used by other "
             "processes during that measurement (warm-up included).")]
    if long_run:
        lines.append(f"Whole {n}-iteration accuracy runs (start-up and epoch boundaries included): baseline "
                     f"{long_run['baseline']:.0f}, ours {long_run['ours']:.0f} images/s "
                     f"({long_run['ours'] / long_run['baseline']:.2f}x).")
    lines += [f"Machine: {machine()}.", ("The baseline's 2 DataLoader workers share the cores with its training "
              "process, as they do for anyone running the reference scripts here."),
              f"Wall time: {time.perf_counter() - wall:.0f} s.", ""]
    say("\n".join(lines))
    result = {name: round(median(speed[name, "ours"]) / median(speed[name, "baseline"]), 3) for name in args.networks}
    result |= {f"{name}_{pipe}_images_per_s": round(median(v), 1) for (name, pipe), v in speed.items()}
    result |= {f"{name}_{pipe}_val_top1_error": round(v, 4) for (name, pipe), v in error.items()}
    if n:
        result["accuracy_iterations"] = n
    say(json.dumps(result))


if __name__ == "__main__":
    main()
