"""train(cfg, run_dir): the paper's training loop, readable top to bottom.

A run directory holds config.toml (the resolved config), metrics.jsonl (one line per evaluation),
iter-NNNNNNN.pt checkpoints (the newest few) and curves.png. `resume=True` continues a run from its
newest checkpoint to the configured end; on CPU the result is bit-identical to an uninterrupted run,
because every random choice is a function of (seed, epoch, batch) and the checkpoint holds the rest.
Every file is replaced atomically and one run at a time holds the directory (checkpoint.run_lock), so a run
killed at any moment resumes with nothing lost (docs/RELIABILITY.md).

Under torchrun (`torchrun --nproc_per_node=N -m resnets train ...`) the same loop runs in every process on its
share of each step's N x batch_size images, DistributedDataParallel averaging the gradients; only rank 0 writes
the run directory and prints, and every rank reads the checkpoint when resuming.
"""

import contextlib
import json
import math
import os
import time
from pathlib import Path

import tomli_w
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed, files, runtime
from ..config import Config, from_dict, load_config
from ..data import BatchLoader, default_workers, lighting, load_train_val, normalization_stats, normalize
from ..errors import UserError, first_line
from ..models import ResNet
from ..plots import plot_curves
from ..serving.evaluate import evaluate
from ..serving.preprocessing import Preprocessing
from ..terminal import shown
from . import checkpoint, finetune
from .schedule import in_iterations, lr_factor


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    """Train as `cfg` says, writing into `run_dir` (refused while another run writes there); returns the last
    evaluation's metrics."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes, so only it holds the directory
        return _train(cfg, Path(run_dir), resume)
    with checkpoint.run_lock(run_dir) as locked:
        return _train(cfg, locked, resume)


def _train(cfg: Config, run_dir: Path, resume: bool) -> dict:
    torch.manual_seed(cfg.run.seed)
    device = distributed.setup(runtime.pick_device(cfg.run.device))  # under torchrun: this process's GPU, or the CPU
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0  # the one process that writes files and prints
    bf16 = runtime.use_bf16(cfg.run.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one batch shape all run long: time cuDNN's algorithms once for it

    # model.init is read before the data, so that a wrong name fails at once; a resumed run has its own weights.
    init = finetune.read(cfg.model.init) if cfg.model.init and not resume else None
    train_set, val_set = load_train_val(cfg.data)
    workers = default_workers(cfg.data.workers)
    in_channels, size, _ = train_set.image_shape
    model = ResNet(cfg.model_config(len(train_set.classes), in_channels)).to(device)
    model.freeze(cfg.model.freeze)
    if cfg.run.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # The paper decays every weight (Caffe's default), BN included; so do we. N processes take N times the
    # images per step at N times the lr (the linear scaling rule; OptimSection). On a GPU the update is one fused
    # pass over all the weights (the default, foreach, makes several). Fine-tuning may train the backbone slower.
    groups = finetune.param_groups(model, cfg.optim.backbone_lr_factor, cfg.optim.lr * world)
    optimizer = torch.optim.SGD(groups, lr=cfg.optim.lr * world, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay,
                                fused=True if device.type == "cuda" else None)
    loader = BatchLoader(train_set, cfg.optim.batch_size, shuffle=True, pad=cfg.data.pad, flip=cfg.data.flip,
                         scale=cfg.data.scale if cfg.data.crop else None, seed=cfg.run.seed, drop_last=True,
                         workers=workers, rank=rank, world=world, device=device)
    if len(loader) == 0:
        raise UserError(f"{world} x batch_size {cfg.optim.batch_size} exceeds the {len(train_set)} training images")
    schedule = in_iterations(cfg.schedule, len(loader))
    eval_every = cfg.run.eval_every * (len(loader) if cfg.schedule.unit == "epoch" else 1)

    iteration, history, preprocessing = 0, [], None
    # The plateau schedule reads `history` as evaluations are appended to it (and as _restore replaces it).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(schedule, it, history, world))
    if resume:
        iteration, history, preprocessing = _restore(run_dir, cfg, model, optimizer, scheduler, world)
    elif checkpoint.checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a run; resume it with --resume or choose another --out")
    if preprocessing is None:  # a fresh start: model.init's weights (if any), the statistics to normalise with
        stats = finetune.start(cfg, model, train_set, init) if cfg.model.init else None
        mean, std = stats if stats is not None else _normalization(train_set, cfg.data.normalize, workers)
        # Everything predict/export need to feed the network a new image: shorter side resized to `resize`,
        # centre crop of `input_size`, channels, then (x / 255 - mean) / std.
        preprocessing = Preprocessing(mean, std, input_size=size,
                                      resize=(cfg.data.resize or size) if cfg.data.crop else size, in_channels=in_channels)
    mean, std = preprocessing.mean.to(device), preprocessing.std.to(device)
    machine = (f"{runtime.describe(device)}: {'bf16 autocast' if bf16 else 'fp32'} "
               f"({runtime.precision_reason(cfg.run.precision, device)}), {'channels_last' if cfg.run.channels_last else 'NCHW'}"
               f", {torch.get_num_threads() if device.type == 'cpu' else 1} thread(s) x {world} process(es)")
    tensorboard = _tensorboard(run_dir) if cfg.run.tensorboard and main else None
    metrics_file = run_dir / "metrics.jsonl"
    if main:
        with _writes(run_dir):
            if not resume:
                files.write_text(run_dir / "config.toml", tomli_w.dumps(cfg.to_dict()))
            _write_metrics(history, metrics_file, None)  # drops lines past the checkpoint
            _record_leg(run_dir, iteration, machine)
    # DDP averages the gradients over the processes in backward (and starts from rank 0's weights).
    step_model = DistributedDataParallel(model) if world > 1 else model
    step_model = torch.compile(step_model, mode=_compile_mode(device, world)) if cfg.run.compile else step_model

    total = schedule.iterations
    if main:
        print(f"training {cfg.model.name} on {len(train_set)} images ({len(train_set.classes)} classes), validating "
              f"on {len(val_set)}; {total} iterations of {cfg.optim.batch_size}"
              f"{f' x {world} processes' if world > 1 else ''}; run directory {run_dir}\n{machine}")
        if model.frozen_stages:
            print(finetune.frozen(model))
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
            with runtime.autocast(device, bf16):
                logits = step_model(x).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.optim.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            iteration += 1
            meter.add(loss.detach(), logits, labels)
            if iteration % 10 == 0:
                # Reading the loss waits for the device, so only every 10 steps: a diverged run stops within
                # 10 steps, long before the next evaluation could save its weights.
                _check_finite("training", meter.loss(), iteration, run_dir, bar)
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}", err=f"{meter.error():.1%}",
                                    img_s=f"{meter.rate():.0f}",
                                    eta=_duration((total - iteration) * len(labels) / meter.rate()))

            if iteration % eval_every == 0 or iteration == total:
                meter.reduce()
                _check_finite("training", meter.loss(), iteration, run_dir, bar)
                distributed.broadcast_buffers(model)  # evaluate and save rank 0's BN statistics everywhere
                val = evaluate(model, val_set, mean, std, device, bf16, workers=workers)
                _check_finite("validation", val["loss"], iteration, run_dir, bar)  # weights broken by the last step
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
                    with _writes(run_dir):
                        _write_metrics(history, metrics_file, tensorboard)
                        _save(run_dir, cfg, model, optimizer, scheduler, history, train_set.classes, preprocessing,
                              world)
                        plot_curves(history, run_dir / "curves.png", title=f"{cfg.model.name}")
                meter = Meter()
            if iteration == total:
                break
        bar.close()
    if tensorboard:
        tensorboard.close()
    return history[-1] if history else {}


def _compile_mode(device: torch.device, world: int) -> str | None:
    """torch.compile's mode for training. A convolution of the CIFAR networks at batch 128 is 0.3 GMAC over 4 MB
    of bf16 activations, microseconds on a current GPU, so a step is bound by launching its operations one by
    one (counted: 1,793 aten calls in a bf16 forward and backward of ResNet-110, 353 for ResNet-20); CUDA graphs
    ("reduce-overhead") launch a whole forward or backward at once. Not under DDP, whose hooks run inside the
    backward."""
    return "reduce-overhead" if device.type == "cuda" and world == 1 else None


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


def _check_finite(kind: str, loss: float, iteration: int, run_dir: Path, bar) -> None:
    """Stop a diverged run before it saves a checkpoint of broken weights."""
    if not math.isfinite(loss):
        bar.close()
        kept = checkpoint.checkpoints(run_dir)
        raise UserError(f"the {kind} loss became {loss} by iteration {iteration}; stopped without saving (the newest "
                        f"checkpoint, {kept[-1].name if kept else 'none yet'}, is from before): lower optim.lr or "
                        "warm up (schedule.warmup_iterations) and train again")


@contextlib.contextmanager
def _writes(run_dir: Path):
    """A write into the run directory that the machine refused (files.WriteFailure, or an OSError of TensorBoard's
    own writer) as one line that says how to go on: resume, or run again if nothing worth resuming was written."""
    try:
        yield
    except (files.WriteFailure, OSError) as e:
        path, error = (e.path, e.error) if isinstance(e, files.WriteFailure) else (e.filename or run_dir, e)
        then = f"resume with `resnets train --resume {run_dir}`" if (run_dir / "config.toml").is_file() else "run again"
        raise files.WriteFailure(path, error, then) from e


def _record_leg(run_dir: Path, iteration: int, machine: str) -> None:
    """legs.jsonl gains a line for this process's leg of the run: where it starts and on what machine. Legs that
    started at or after this one's iteration saved nothing (their work is redone now) and are dropped."""
    path = run_dir / checkpoint.LEGS
    legs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    legs = [leg for leg in legs if leg["from_iteration"] < iteration]
    legs.append({"from_iteration": iteration, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine})
    files.write_text(path, "".join(json.dumps(leg) + "\n" for leg in legs))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("run.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(run_dir / "tensorboard")


def _write_metrics(history: list[dict], metrics_file: Path, tensorboard) -> None:
    """metrics.jsonl rewritten whole and atomically (never half a line, whenever the run is killed); the newest
    line to TensorBoard."""
    files.write_text(metrics_file, "".join(json.dumps(m) + "\n" for m in history))
    if tensorboard:
        for key, value in history[-1].items():
            tensorboard.add_scalar(key, value, history[-1]["iteration"])
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
        "preprocessing": preprocessing.to_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(), "history": history,
        # Dropout and stochastic depth draw from the device's generator too.
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    checkpoint.save_atomic(state, run_dir / f"iter-{iteration:07d}.pt")
    for old in checkpoint.checkpoints(run_dir)[: -cfg.run.keep_checkpoints]:
        old.unlink()


def _normalization(train_set, mode: str, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) for `normalize`: rank 0 estimates them (on 2,000 images spread over the folder when it is
    streamed, decoded by the workers) and sends them to the other ranks, which would only repeat its work."""
    stats = normalization_stats(train_set.sample(2000, workers), mode) if distributed.rank() == 0 else None
    return distributed.broadcast_object(stats)


def _restore(run_dir, cfg, model, optimizer, scheduler, world) -> tuple[int, list[dict], Preprocessing | None]:
    """Load the newest usable checkpoint into the live objects, falling back past damaged or foreign ones;
    returns its (iteration, history, preprocessing)."""
    _check_same_config(run_dir, cfg)
    found = checkpoint.checkpoints(run_dir)
    if not found:  # stopped before its first checkpoint: the same run, from the start
        print(f"{run_dir} holds no checkpoint yet; starting from iteration 0")
        return 0, [], None
    problems = []
    for path in reversed(found):
        try:
            state = checkpoint.load(path)
            iteration, history = _load_state(path, state, cfg, model, optimizer, scheduler, world)
            break
        except UserError as e:
            print(f"warning: {shown(e)}; trying the previous checkpoint")
            problems.append(str(e))
    else:
        raise UserError(f"no usable checkpoint in {run_dir}; the newest: {problems[0]}")
    if distributed.rank() == 0:
        print(f"resuming {run_dir} from iteration {iteration} ({path.name})")
    stored = state.get("preprocessing")  # the mean and std it was trained with, not a new estimate
    return iteration, history, Preprocessing.from_dict(stored) if stored else None


def _check_same_config(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume under another config than the run's own: its checkpoints are the state of that one."""
    if not (run_dir / "config.toml").is_file():
        return
    theirs, ours = load_config(run_dir / "config.toml").to_dict(), cfg.to_dict()
    changed = [f"{s}.{k}={theirs[s].get(k)!r} (now {v!r})" for s in ours for k, v in ours[s].items()
               if theirs[s].get(k) != v]
    if changed:
        raise UserError(f"{run_dir} was started with a different config ({', '.join(changed[:3])}); resume with the "
                        "run's own config.toml, or start a new run with --out")


def _load_state(path: Path, state: dict, cfg: Config, model, optimizer, scheduler, world) -> tuple[int, list[dict]]:
    """A checkpoint's state into the live objects, and its (iteration, history); UserError if it is another
    run's or another network's."""
    # Through from_dict: keys added since the checkpoint was written take the defaults it trained with.
    if from_dict(state.get("config") or {}).to_dict() != cfg.to_dict():
        raise UserError(f"{path} was written with a different config")
    theirs = state.get("model_config") or {}
    if theirs.get("num_classes") != model.config.num_classes:
        raise UserError(f"{path} is for {theirs.get('num_classes')} classes but the data has "
                        f"{model.config.num_classes}")
    if theirs != model.config.to_dict():
        raise UserError(f"{path} holds another network than the config builds")
    if state.get("world_size", 1) != world:  # another world size would mean other batches and another lr
        raise UserError(f"{path} was trained by {state.get('world_size', 1)} processes; resume it with as many "
                        f"(torchrun --nnodes x --nproc_per_node), not {world}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state["iteration"], state["history"]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} does not fit the network ({first_line(e)})") from None
