#!/usr/bin/env python
"""Training speed on this CPU: the usual reference-script baseline against variants of the resnets engine.

(a) baseline: what a user of pytorch/examples or the torchvision references gets -- torchvision ImageFolder,
    per-image PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) in a
    DataLoader with 2 workers, the model in eager fp32 NCHW, a plain SGD loop.
(b) the engine: `resnets train` running the packaged paper recipe (cifar10/<net>) as a user runs it, in its own
    process, with only the length and the 45k/5k split set -- plus any --variant: config overrides, environment
    settings (threads, allocator), N processes under torchrun (the paper's "mini-batch size of 128 on two
    GPUs": each process takes 128/N images at lr 0.1/N, so the total is the recipe's), or another install's
    Python (--engine-python: the engine as of an older commit).

Both train the same network (`resnets.create_model`) on the same 45k CIFAR-10 images, batch 128. A cell is a
whole run of --iterations steps, timed as a user's run is: from the first step to the last (start-up included,
decoding the images and the one evaluation at the end not); --rounds rounds, each running every pipeline once
in turn, so that load from other processes falls on all of them alike. Prints a markdown table (median and
range of the rounds, ratio against the baseline and against the engine's defaults, the share of the CPU other
processes took) and, last, one JSON line. --accuracy-iterations trains the baseline and the default engine on
a short schedule and sets their held-out errors side by side.

    python benchmarks/train_speed.py --data /tmp/cifar10jpg/train --variant "fp32=run.precision=fp32"
"""

import argparse
import json
import os
import shlex
import subprocess
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
from resnets import runtime
from resnets.data import ArrayDataset, scan_folder, split_validation
from resnets.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg-train.tar.gz"
EXTRACT_TO = Path("~/.cache/resnets/cifar10-jpg").expanduser()
NETWORKS = ("resnet20", "resnet56")
BATCH, VAL_IMAGES = 128, 5000
# The per-channel CIFAR-10 statistics the reference scripts hard-code.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEFAULTS = "ours"  # the label of the engine with its defaults


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


def baseline_train(name: str, root: Path, train_idx: list[int], iterations: int,
                   milestones: list[int] = ()) -> tuple[torch.nn.Module, float]:
    """(model, images/s of the whole run, the workers' start-up included as a user's run includes it)."""
    torch.manual_seed(0)
    model = resnets.create_model(name, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.1)
    loader = baseline_loader(root, train_idx, train=True)
    model.train()
    start, done = time.perf_counter(), 0
    while done < iterations:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            if done == iterations:
                break
    rate = iterations * BATCH / (time.perf_counter() - start)
    del loader  # shuts the persistent workers down before the next measurement
    return model, rate


@torch.no_grad()
def baseline_error(model: torch.nn.Module, root: Path, val_idx: list[int]) -> float:
    model.eval()
    wrong = total = 0
    for x, y in baseline_loader(root, val_idx, train=False):
        wrong += (model(x).argmax(1) != y).sum().item()
        total += len(y)
    return wrong / total


# ---------------------------------------------------------------------------------------------- engine


def parse_variant(text: str) -> dict:
    """"LABEL=TOKENS": KEY=VALUE config overrides, env:NAME=VALUE, procs:N (torchrun, N processes)."""
    label, sep, tokens = text.partition("=")
    if not sep or not label:
        raise SystemExit(f"--variant wants LABEL=TOKENS, got {text!r}")
    variant = {"label": label, "overrides": [], "env": {}, "procs": 1, "python": sys.executable}
    for token in shlex.split(tokens):
        if token.startswith("env:"):
            key, _, value = token[4:].partition("=")
            variant["env"][key] = value
        elif token.startswith("procs:"):
            variant["procs"] = int(token[6:])
        else:
            variant["overrides"].append(token)
    return variant


def engine_command(variant: dict, name: str, root: Path, iterations: int, milestones: list[int] | None,
                   run_dir: Path) -> list[str]:
    n = variant["procs"]
    settings = [f"data.path={root}", f"data.val_split={VAL_IMAGES}", f"schedule.iterations={iterations}",
                f"run.eval_every={iterations}"]
    if milestones is not None:
        settings.append(f"schedule.milestones={','.join(map(str, milestones))}")
    if n > 1:  # each of N processes takes 128 / N images at lr 0.1 / N (the engine multiplies the lr by N)
        settings += [f"optim.batch_size={BATCH // n}", f"optim.lr={0.1 / n}"]
    python = variant["python"]
    launcher = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else [python]
    return [*launcher, "-m", "resnets", "train", "--recipe", f"cifar10/{name}", *settings, *variant["overrides"],
            "--out", str(run_dir)]


def engine_run(variant: dict, name: str, root: Path, iterations: int, milestones: list[int] | None = None) -> dict:
    """The last metrics line of one `resnets train` run (images_per_s: the whole run, evaluation excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = engine_command(variant, name, root, iterations, milestones, run_dir)
        env = {**os.environ, **({"OMP_NUM_THREADS": str(max(1, os.cpu_count() // variant["procs"]))}
                                if variant["procs"] > 1 else {}), **variant["env"]}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{variant['label']} failed: {shlex.join(command)}\n{done.stderr[-2000:]}")
        return RunDir(run_dir).metrics()[-1]


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


def table(networks, labels, speed: dict, others: dict, error: dict, accuracy_iterations: int) -> str:
    n = accuracy_iterations
    lines = [(f"| network | pipeline | images/s (median, range) | vs baseline | vs {DEFAULTS} | CPU taken by others | "
              f"held-out top-1 error{f' after {n} it.' if n else ''} |"), "|---|---|---:|---:|---:|---:|---:|"]
    for name in networks:
        for label in labels:
            rates = speed[name, label]
            err = f"{error[name, label]:.2%}" if (name, label) in error else "-"
            lines.append(f"| {name} | {label} | {median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) | "
                         f"{median(rates) / median(speed[name, 'baseline']):.2f}x | "
                         f"{median(rates) / median(speed[name, DEFAULTS]):.2f}x | {median(others[name, label]):.0%} | "
                         f"{err} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="CIFAR-10 jpg folder root/<class>/<image> (default: the shared archive, extracted)")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS))
    p.add_argument("--iterations", type=int, default=200, help="steps per run (one cell of one round)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every pipeline once")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=TOKENS",
                   help="an engine variant: KEY=VALUE overrides, env:NAME=VALUE, procs:N; repeatable")
    p.add_argument("--engine-python", metavar="PYTHON",
                   help="also time the engine of another install (e.g. a venv holding an older commit)")
    p.add_argument("--accuracy-iterations", type=int, default=0,
                   help="length of a short schedule the baseline and the default engine both train on the first "
                        "network, to compare held-out errors (0: skip)")
    args = p.parse_args()
    variants = [parse_variant(f"{DEFAULTS}=")] + [parse_variant(v) for v in args.variant]
    if args.engine_python:
        variants.append({**parse_variant("engine of --engine-python="), "python": args.engine_python})
    labels = ["baseline"] + [v["label"] for v in variants]
    root = find_data(args.data)
    wall = time.perf_counter()
    train_idx, val_idx = split_indices(root, 0)
    say(f"data: {root} ({len(train_idx)} train / {len(val_idx)} held-out images)\nmachine: {runtime.describe()}")
    for v in variants:
        say(f"{v['label']}: {shlex.join(engine_command(v, '<net>', root, args.iterations, None, Path('<tmp>')))}")
    engine_run(variants[0], args.networks[0], root, 1)  # decodes the images into the cache once, untimed

    speed, others, error = {}, {}, {}  # (network, pipeline) -> images/s per round, others' CPU share, error
    for r in range(args.rounds):
        for name in args.networks:
            for label, v in zip(labels, [None, *variants]):
                clock = cpu_clock()
                rate = (baseline_train(name, root, train_idx, args.iterations)[1] if v is None
                        else engine_run(v, name, root, args.iterations)["images_per_s"])
                speed.setdefault((name, label), []).append(rate)
                others.setdefault((name, label), []).append(others_share(clock, cpu_clock()))
                say(f"round {r + 1}/{args.rounds} {name} {label}: {rate:.0f} images/s "
                    f"(others took {others[name, label][-1]:.0%} of the CPU)")

    n = args.accuracy_iterations
    if n:
        name, milestones = args.networks[0], [n // 2, n * 3 // 4]
        say(f"== accuracy: {name}, {n} iterations, lr 0.1 divided by 10 at {milestones}")
        model, _ = baseline_train(name, root, train_idx, n, milestones)
        error[name, "baseline"] = baseline_error(model, root, val_idx)
        error[name, DEFAULTS] = engine_run(variants[0], name, root, n, milestones)["val_top1_error"]

    say("\n".join(["", table(args.networks, labels, speed, others, error, n), "",
                   (f"images/s: batch {BATCH}, 32x32, whole runs of {args.iterations} steps (start-up included; "
                    f"decoding and evaluation not), median (range) of {args.rounds} rounds. 'CPU taken by others': "
                    "median share of the machine's CPU time that other processes used during a run. The baseline's "
                    "2 DataLoader workers share the cores with its training process, as they do for anyone running "
                    "the reference scripts here."),
                   f"Machine: {runtime.describe()}; torch {torch.__version__}, Python {sys.version.split()[0]}.",
                   f"Wall time: {time.perf_counter() - wall:.0f} s.", ""]))
    result = {f"{name} {label}": round(median(speed[name, label]), 1) for name in args.networks for label in labels}
    result |= {f"{name} {label} error": round(v, 4) for (name, label), v in error.items()}
    say(json.dumps(result))


if __name__ == "__main__":
    main()
