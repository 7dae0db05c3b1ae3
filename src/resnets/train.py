"""train(cfg, run_dir): the paper's training loop, readable top to bottom.

A run directory holds config.toml (the resolved config), metrics.jsonl (one line per evaluation),
iter-NNNNNNN.pt checkpoints (the newest few) and curves.png. `resume=True` continues a run from its
newest checkpoint to the configured end; on CPU the result is bit-identical to an uninterrupted run,
because every random choice is a function of (seed, epoch, batch) and the checkpoint holds the rest.

Under torchrun (`torchrun --nproc_per_node=N -m resnets train ...`) the same loop runs in every process on its
share of each step's N x batch_size images, DistributedDataParallel averaging the gradients; only rank 0 writes
the run directory and prints, and every rank reads the checkpoint when resuming.
"""

import json
import math
import time
from pathlib import Path

import tomli_w
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import checkpoint, distributed
from .config import Config
from .data import BatchLoader, default_workers, lighting, load_train_val, normalization_stats, normalize
from .errors import UserError
from .evaluate import autocast, evaluate
from .models import ResNet
from .plots import plot_curves
from .schedule import in_iterations, lr_factor


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"run.device={name} but no CUDA device is available; use run.device=cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware does bf16 natively: AMX / AVX512-BF16 CPUs and recent GPUs."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    """Train as `cfg` says, writing into `run_dir`; returns the last evaluation's metrics."""
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.run.seed)
    device = distributed.setup(pick_device(cfg.run.device))  # under torchrun: this process's GPU, or the CPU
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0  # the one process that writes files and prints
    bf16 = use_bf16(cfg.run.precision, device)

    train_set, val_set = load_train_val(cfg.data)
    workers = default_workers(cfg.data.workers)
    # Streamed folders estimate the statistics on 2,000 images spread over the folder.
    mean, std = normalization_stats(train_set.sample(2000), cfg.data.normalize)
    mean, std = mean.to(device), std.to(device)
    in_channels, size, _ = train_set.image_shape
    model = ResNet(cfg.model_config(len(train_set.classes), in_channels)).to(device)
    if cfg.run.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # The paper decays every weight (Caffe's default), BN included; so do we. N processes take N times the
    # images per step at N times the lr (the linear scaling rule; OptimSection).
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr * world, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)
    loader = BatchLoader(train_set, cfg.optim.batch_size, shuffle=True, pad=cfg.data.pad, flip=cfg.data.flip,
                         scale=cfg.data.scale if cfg.data.crop else None, seed=cfg.run.seed, drop_last=True,
                         workers=workers, rank=rank, world=world)
    if len(loader) == 0:
        raise UserError(f"{world} x batch_size {cfg.optim.batch_size} exceeds the {len(train_set)} training images")
    schedule = in_iterations(cfg.schedule, len(loader))
    eval_every = cfg.run.eval_every * (len(loader) if cfg.schedule.unit == "epoch" else 1)
    # Everything predict/export need to feed the network a new image: shorter side resized to `resize`,
    # centre crop of `input_size`, channels, then (x / 255 - mean) / std.
    preprocessing = {"mean": mean.cpu(), "std": std.cpu(), "input_size": size,
                     "resize": (cfg.data.resize or size) if cfg.data.crop else size, "in_channels": in_channels}

    iteration, history = 0, []
    # The plateau schedule reads `history` as evaluations are appended to it (and as _restore replaces it).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(schedule, it, history, world))
    if resume:
        iteration, history = _restore(run_dir, cfg, model, optimizer, scheduler, world)
    elif checkpoint.checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a run; resume it with --resume or choose another --out")
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(tomli_w.dumps(cfg.to_dict()))
    tensorboard = _tensorboard(run_dir) if cfg.run.tensorboard and main else None
    metrics_file = run_dir / "metrics.jsonl"
    if main:
        metrics_file.write_text("".join(json.dumps(m) + "\n" for m in history))  # drops lines past the checkpoint
    # DDP averages the gradients over the processes in backward (and starts from rank 0's weights).
    step_model = DistributedDataParallel(model) if world > 1 else model
    step_model = torch.compile(step_model) if cfg.run.compile else step_model

    total = schedule.iterations
    if main:
        print(f"training {cfg.model.name} on {len(train_set)} images ({len(train_set.classes)} classes), validating "
              f"on {len(val_set)}; {total} iterations of {cfg.optim.batch_size}"
              f"{f' x {world} processes' if world > 1 else ''} on {device}{' in bf16' if bf16 else ''}; run "
              f"directory {run_dir}")
    model.train()
    meter = Meter()
    while iteration < total:
        epoch, start = divmod(iteration, len(loader))
        bar = tqdm(loader.epoch(epoch, start), initial=start, total=len(loader), desc=f"epoch {epoch + 1}",
                   leave=False, disable=None if main else True, unit="batch")
        for images, labels in bar:
            x = normalize(images.to(device, non_blocking=True), mean, std)
            if cfg.data.lighting:  # AlexNet's colour noise, drawn like the other augmentations
                x = lighting(x, cfg.data.lighting * loader.noise(epoch, iteration % len(loader), 3), std)
            if cfg.run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, bf16):
                logits = step_model(x).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.optim.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            iteration += 1
            meter.add(loss.detach(), logits, labels)
            if iteration % 10 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.3f}", err=f"{meter.error():.1%}", img_s=f"{meter.rate():.0f}",
                                eta=_duration((total - iteration) * len(labels) / meter.rate()))

            if iteration % eval_every == 0 or iteration == total:
                meter.reduce()
                if not math.isfinite(meter.loss()):
                    bar.close()
                    raise UserError(f"the training loss became {meter.loss()} before iteration {iteration}; lower "
                                    f"optim.lr (the last good checkpoint is kept in {run_dir})")
                distributed.broadcast_buffers(model)  # evaluate and save rank 0's BN statistics everywhere
                val = evaluate(model, val_set, mean, std, device, bf16, workers=workers)
                history.append({
                    "iteration": iteration, "epoch": round(iteration / len(loader), 3),
                    "lr": cfg.optim.lr * world * lr_factor(schedule, iteration - 1, history, world),
                    "train_loss": meter.loss(), "train_error": meter.error(), "val_loss": val["loss"],
                    "val_top1_error": val["top1_error"], "val_top5_error": val["top5_error"],
                    "images_per_s": round(meter.rate(), 1),
                    "wall_s": round((history[-1]["wall_s"] if history else 0) + meter.elapsed(), 2),
                })
                if main:
                    bar.write(_format(history[-1], total))
                    _write_metrics(history[-1], metrics_file, tensorboard)
                    _save(run_dir, cfg, model, optimizer, scheduler, history, train_set.classes, preprocessing, world)
                    plot_curves(history, run_dir / "curves.png", title=f"{cfg.model.name}")
                meter = Meter()
            if iteration == total:
                break
        bar.close()
    if tensorboard:
        tensorboard.close()
    return history[-1] if history else {}


class Meter:
    """Training loss, error and images/s since the last evaluation; sums stay on the device until read."""

    def __init__(self):
        self.start, self.seen, self.loss_sum, self.errors = time.perf_counter(), 0, 0.0, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.seen += len(labels)
        self.loss_sum += loss * len(labels)
        self.errors += (logits.argmax(1) != labels).sum()

    def loss(self) -> float:
        return float(self.loss_sum / self.seen)

    def error(self) -> float:
        return float(self.errors / self.seen)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self) -> float:
        return self.seen / self.elapsed()

    def reduce(self) -> None:
        """Sums over all processes (so `rate` becomes the images/s of all of them); nothing with one process."""
        if distributed.world_size() > 1:
            sums = distributed.all_sum(torch.tensor([float(self.loss_sum), float(self.errors), self.seen],
                                                    dtype=torch.float64))
            self.loss_sum, self.errors, self.seen = sums.tolist()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("run.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(run_dir / "tensorboard")


def _write_metrics(m: dict, metrics_file: Path, tensorboard) -> None:
    with metrics_file.open("a") as f:
        f.write(json.dumps(m) + "\n")
    if tensorboard:
        for key, value in m.items():
            tensorboard.add_scalar(key, value, m["iteration"])
        tensorboard.flush()


def _format(m: dict, total: int) -> str:
    return (f"iter {m['iteration']:>6}/{total} epoch {m['epoch']:7.2f} lr {m['lr']:.4g} | train loss "
              f"{m['train_loss']:.4f} err {m['train_error']:6.2%} | val loss {m['val_loss']:.4f} top-1 err "
            f"{m['val_top1_error']:6.2%} top-5 err {m['val_top5_error']:6.2%} | {m['images_per_s']:.0f} img/s")


def _duration(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def _save(run_dir, cfg, model, optimizer, scheduler, history, classes, preprocessing, world) -> None:
    iteration = history[-1]["iteration"]
    state = {
        "format": checkpoint.FORMAT, "iteration": iteration, "config": cfg.to_dict(), "world_size": world,
        "model_config": model.config.to_dict(), "model": model.state_dict(), "classes": list(classes),
        "preprocessing": preprocessing, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(), "history": history,
        # Dropout and stochastic depth draw from the device's generator too.
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    checkpoint.save_atomic(state, run_dir / f"iter-{iteration:07d}.pt")
    for old in checkpoint.checkpoints(run_dir)[: -cfg.run.keep_checkpoints]:
        old.unlink()


def _restore(run_dir, cfg, model, optimizer, scheduler, world) -> tuple[int, list[dict]]:
    """Load the newest readable checkpoint (falling back past damaged ones) into the live objects."""
    found = checkpoint.checkpoints(run_dir)
    if not found:
        raise UserError(f"nothing to resume in {run_dir}: it holds no checkpoint")
    for path in reversed(found):
        try:
            state = checkpoint.load(path)
            break
        except UserError as e:
            print(f"warning: {e}; trying the previous checkpoint")
    else:
        raise UserError(f"no readable checkpoint in {run_dir}")
    if state["config"] != cfg.to_dict():
        raise UserError(f"{path} was written with a different config; resume with the run's own config.toml")
    if state.get("world_size", 1) != world:  # another world size would mean other batches and another lr
        raise UserError(f"{run_dir} was trained by {state.get('world_size', 1)} processes; resume it with as many "
                        f"(torchrun --nnodes x --nproc_per_node), not {world}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if distributed.rank() == 0:
        print(f"resuming {run_dir} from iteration {state['iteration']} ({path.name})")
    return state["iteration"], state["history"]
