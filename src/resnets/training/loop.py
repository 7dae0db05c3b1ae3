"""train(cfg, run_dir): the paper's training loop, readable top to bottom.

`train` sets up (the data, the network, the optimizer), starts or resumes the run's TrainState (rundir.py
owns the run directory and its checkpoints), then steps, evaluating and saving every run.eval_every iterations.
The learning rate is a pure function of the iteration (`lr_at`), set on the optimizer before every step.
`resume=True` continues a run from its newest checkpoint to the configured end; on CPU the result is
bit-identical to an uninterrupted run.

Under torchrun (`torchrun --nproc_per_node=N -m resnets train ...`) the same loop runs in every process on its
share of each step's N x batch_size images, DistributedDataParallel averaging the gradients; only rank 0 writes
the run directory and prints, and every rank reads the checkpoint when resuming. The run.procs processes that
`resnets train` starts itself (distributed.launch_here) share the recipe's batch_size images instead.
"""

import contextlib
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from tqdm import tqdm

from .. import distributed, files, runtime
from ..config import Config, ScheduleSection
from ..data import (
    BatchLoader,
    Dataset,
    cutout,
    default_workers,
    lighting,
    load_train_val,
    normalization_stats,
    normalize,
)
from ..errors import UserError
from ..models import ResNet
from ..plots import plot_curves
from ..preprocessing import Preprocessing
from ..rundir import RunDir, TrainState
from ..schedule import in_iterations, lr_factor
from ..serving.evaluate import evaluate
from ..terminal import shown
from . import finetune
from .optimizer import sgd

# optim.ema_decay: the averaged weights' BN statistics are measured on this many training batches before each
# evaluation (6,400 images at batch 128, a few percent of the work between two evaluations of the paper's recipe).
BN_BATCHES = 50


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train as `cfg` says, writing into `run_dir` (refused while another run writes there); returns the last
    evaluation's metrics."""
    run = RunDir(run_dir)
    if not distributed.lead():  # under torchrun only rank 0 writes, so only it holds the directory
        return _train(cfg, run, resume)
    with run.lock():
        return _train(cfg, run, resume)


def _train(cfg: Config, run: RunDir, resume: bool) -> dict:
    torch.manual_seed(cfg.run.seed)
    # model.init is read before the data, so that a wrong name fails at once; a resumed run has its own weights.
    init = finetune.read(cfg.model.init) if cfg.model.init and not resume else None
    if resume and run.is_run():
        run.check_config(cfg)  # before set_up, whose processes would wait for each other in vain
    s = set_up(cfg)
    state = TrainState(s.model, s.optimizer, average=s.average)
    if resume:
        start = state.resume(run, cfg, s.world, s.train_set.classes)
        if state.iteration >= s.schedule.iterations:  # nothing to train: no leg, no header
            if s.main:
                print(f"{shown(run)} is finished: iteration {state.iteration} of {s.schedule.iterations}; nothing to "
                      "resume")
            return state.history[-1] if state.history else {}
        if s.main:
            print(f"resuming {shown(run)} from iteration {state.iteration} ({start.name})" if start else
                  f"{shown(run)} holds no checkpoint yet; starting from iteration 0")
    elif run.checkpoints():
        raise UserError(f"{run} already holds a run; resume it with --resume or choose another --out")
    if state.preprocessing is None:  # a fresh start: model.init's weights (if any), the statistics to use
        state.preprocessing = _preprocessing(cfg, s, init)
    s.mean, s.std = state.preprocessing.mean.to(s.device), state.preprocessing.std.to(s.device)
    tensorboard = _tensorboard(run) if cfg.run.tensorboard and s.main else None
    if s.main:
        with _writes(run):
            if not resume or cfg.to_dict() != run.config().to_dict():  # a resumed run that moved (MOVABLE)
                run.write_config(cfg)
            run.write_metrics(state.history)  # drops lines past the checkpoint
            run.record_leg(state.iteration, s.machine)
        _announce(s, run)
    # DDP averages the gradients over the processes in backward (and starts from rank 0's weights).
    s.step_model = DistributedDataParallel(s.model) if s.world > 1 else s.model
    if cfg.run.compile:
        s.step_model = torch.compile(s.step_model, mode=_compile_mode(s.device, s.world))
    fit(s, run, state, tensorboard)
    if tensorboard:
        tensorboard.close()
    return state.history[-1] if state.history else {}


@dataclass
class Setup:
    """What a run trains with, built from its config; none of it is saved (the TrainState is)."""

    cfg: Config
    device: torch.device
    bf16: bool
    world: int
    batch_scale: int  # each step takes the recipe's batch_size x this images, at lr x this (torchrun's processes)
    main: bool  # the one process that writes files and prints
    train_set: Dataset
    val_set: Dataset
    workers: int
    model: ResNet
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]  # each parameter group's lr at schedule factor 1
    loader: BatchLoader
    schedule: ScheduleSection  # counted in iterations
    eval_every: int  # iterations
    machine: str  # what the run runs on, for its first lines and legs.jsonl
    average: AveragedModel | None  # optim.ema_decay's moving average of the weights
    step_model: torch.nn.Module | None = None  # the model as stepped: under DDP and torch.compile when asked
    mean: torch.Tensor | None = None  # the normalisation, on the device
    std: torch.Tensor | None = None


def set_up(cfg: Config) -> Setup:
    """The device, the data, the network and its optimizer, as the config says."""
    kept = cfg.run.keep_memory and runtime.keep_freed_memory()
    # The data and the batch first: a mistake there stops every process alike, before they wait for each other.
    train_set, val_set = load_train_val(cfg.data)
    share = batch_share(cfg, distributed.planned_world())
    device = distributed.setup(runtime.pick_device(cfg.run.device))  # under torchrun: this process's GPU, or the CPU
    rank, world = distributed.rank(), distributed.world_size()
    batch_scale = world // share
    bf16 = runtime.use_bf16(cfg.run.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one batch shape all run long: time cuDNN's algorithms once for it
    workers = default_workers(cfg.data.workers)
    model = ResNet(cfg.model_config(len(train_set.classes), train_set.image_shape[0])).to(device)
    model.freeze(cfg.model.freeze)
    if cfg.run.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # N processes take N times the images per step at N times the lr (the linear scaling rule; OptimSection);
    # run.procs processes share the batch.
    optimizer = sgd(model, cfg.optim, cfg.optim.lr * batch_scale, device)
    loader = BatchLoader(train_set, cfg.optim.batch_size // share, shuffle=True, pad=cfg.data.pad, flip=cfg.data.flip,
                         scale=cfg.data.scale if cfg.data.crop else None, seed=cfg.run.seed, drop_last=True,
                         workers=workers, rank=rank, world=world, device=device)
    if len(loader) == 0:
        raise UserError(f"a step of {batch_scale * cfg.optim.batch_size} images (optim.batch_size "
                        f"{cfg.optim.batch_size}{f' x {batch_scale} processes' if batch_scale > 1 else ''}) exceeds the "
                        f"{len(train_set)} training images")
    machine = (f"{runtime.describe(device)}: {'bf16 autocast' if bf16 else 'fp32'} "
               f"({runtime.precision_reason(cfg.run.precision, device)}), "
               f"{'channels_last' if cfg.run.channels_last else 'NCHW'}, "
               f"{torch.get_num_threads() if device.type == 'cpu' else 1} thread(s) x {world} process(es)"
               f"{', freed memory kept' if kept else ''}")
    average = None
    if cfg.optim.ema_decay:  # a copy of the network whose weights follow the moving average
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay))
    return Setup(cfg, device, bf16, world, batch_scale, rank == 0, train_set, val_set, workers, model, optimizer,
                 [g["lr"] for g in optimizer.param_groups], loader, in_iterations(cfg.schedule, len(loader)),
                 cfg.run.eval_every * (len(loader) if cfg.schedule.unit == "epoch" else 1), machine, average)


def batch_share(cfg: Config, world: int) -> int:
    """How many of the `world` processes split each step's batch_size images: run.procs (those `resnets train`
    started itself), or 1 under torchrun, whose processes each take batch_size images."""
    share = max(1, cfg.run.procs)
    if share > 1 and share != world:
        raise UserError(f"run.procs={share} but {world} process(es) run: `resnets train` starts run.procs processes "
                        f"itself; under torchrun leave run.procs at 0")
    if cfg.optim.batch_size % share:
        raise UserError(f"optim.batch_size={cfg.optim.batch_size} does not split into run.procs={share} equal shares")
    return share


def _preprocessing(cfg: Config, s: Setup, init) -> Preprocessing:
    """What predict/export need to feed the network a new image: shorter side resized to `resize`, centre crop of
    `input_size`, channels, then (x / 255 - mean) / std, with model.init's statistics or the data's."""
    stats = finetune.start(cfg, s.model, s.train_set, init) if cfg.model.init else None
    mean, std = stats if stats is not None else _normalization(s.train_set, cfg.data.normalize, s.workers)
    in_channels, size, _ = s.train_set.image_shape
    return Preprocessing(mean, std, input_size=size, resize=(cfg.data.resize or size) if cfg.data.crop else size,
                         in_channels=in_channels)


def _announce(s: Setup, run: RunDir) -> None:
    cfg, world = s.cfg, s.world
    # A streamed folder's files are counted before they are read: the unreadable ones among them are found later.
    images, streamed = ("image files", "; streamed: files that cannot be read are skipped as they are met") \
        if s.train_set.streamed else ("images", "")
    # schedule.unit = "epoch" makes schedule.iterations count epochs: say so, beside the iterations they make.
    epochs = f"{cfg.schedule.iterations} epochs (schedule.unit=epoch) = " if cfg.schedule.unit == "epoch" else ""
    print(f"training {cfg.model.name} on {len(s.train_set)} {images} ({len(s.train_set.classes)} classes), "
          f"validating on {len(s.val_set)}{streamed}; {epochs}{s.schedule.iterations} iterations of "
          f"{cfg.optim.batch_size * s.batch_scale}"
          f"{f' ({world} processes x {s.loader.batch_size})' if world > 1 else ''}"
          f"; run directory {shown(run)}\n{s.machine}")
    if s.model.frozen_stages:
        print(finetune.frozen(s.model))


def lr_at(s: Setup, iteration: int, history: list[dict]) -> list[float]:
    """Each parameter group's lr for step `iteration` (0-based): its lr at factor 1 times the schedule's factor.
    `history` (the evaluations so far) matters to the plateau schedule alone."""
    factor = lr_factor(s.schedule, iteration, history, s.batch_scale)
    return [base_lr * factor for base_lr in s.base_lrs]


def fit(s: Setup, run: RunDir, state: TrainState, tensorboard) -> None:
    """Step from state.iteration to the schedule's end, evaluating and saving every eval_every iterations."""
    total, per_epoch = s.schedule.iterations, len(s.loader)
    s.model.train()
    meter = Meter()
    while state.iteration < total:
        epoch, start = divmod(state.iteration, per_epoch)
        bar = tqdm(s.loader.epoch(epoch, start), initial=start, total=per_epoch, desc=f"epoch {epoch + 1}",
                   leave=False, disable=None if s.main else True, unit="batch")
        for images, labels in bar:
            loss, logits, labels = step(s, state, images, labels, epoch)
            meter.add(loss.detach(), logits, labels)
            if state.iteration % 10 == 0:
                # Reading the loss waits for the device, so only every 10 steps: a diverged run stops within
                # 10 steps, long before the next evaluation could save its weights.
                _check_finite("training", meter.loss(), state.iteration, run, bar)
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss.item():.3f}", err=f"{meter.error():.1%}",
                                    img_s=f"{meter.rate():.0f}",
                                    eta=_duration((total - state.iteration) * len(labels) / meter.rate()))
            if state.iteration % s.eval_every == 0 or state.iteration == total:
                evaluate_and_save(s, run, state, meter, bar, tensorboard)
                meter = Meter()
            if state.iteration == total:
                break
        bar.close()


def step(s: Setup, state: TrainState, images: torch.Tensor, labels: torch.Tensor, epoch: int):
    """One SGD step on a batch at the lr of state.iteration; returns (loss, logits, labels) on the device."""
    cfg = s.cfg
    x = normalize(images.to(s.device, non_blocking=True), s.mean, s.std)
    if cfg.data.lighting:  # AlexNet's colour noise, drawn like the other augmentations
        x = lighting(x, cfg.data.lighting * s.loader.noise(epoch, state.iteration % len(s.loader), 3), s.std)
    if cfg.data.cutout:
        x = cutout(x, cfg.data.cutout, s.loader.uniform(epoch, state.iteration % len(s.loader), 2))
    if cfg.run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = labels.to(s.device, non_blocking=True)
    for group, lr in zip(s.optimizer.param_groups, lr_at(s, state.iteration, state.history)):
        group["lr"] = lr
    with runtime.autocast(s.device, s.bf16):
        logits = s.step_model(x).float()
    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.optim.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    if s.average:
        s.average.update_parameters(s.model)
    state.iteration += 1
    return loss, logits, labels


def evaluate_and_save(s: Setup, run: RunDir, state: TrainState, meter: "Meter", bar, tensorboard) -> None:
    """Score the held-out images, append the metrics line and (rank 0) write it, the checkpoint and the curves."""
    iteration = state.iteration
    meter.reduce()
    _check_finite("training", meter.loss(), iteration, run, bar)
    distributed.broadcast_buffers(s.model)  # evaluate and save rank 0's BN statistics everywhere
    if s.average:
        _recompute_bn(s)
    val = evaluate(state.served(), s.val_set, s.mean, s.std, s.device, s.bf16, workers=s.workers)
    _check_finite("validation", val["loss"], iteration, run, bar)  # weights broken by the last step
    history = state.history
    history.append({
        "iteration": iteration, "epoch": round(iteration / len(s.loader), 3), "lr": lr_at(s, iteration - 1, history)[-1],
        "train_loss": meter.loss(), "train_error": meter.error(), "val_loss": val["loss"],
        "val_top1_error": val["top1_error"], "val_top5_error": val["top5_error"], "val_images": val["images"],
        "images_per_s": round(meter.rate(), 1),
        "wall_s": round((history[-1]["wall_s"] if history else 0) + meter.elapsed(), 2),
    })
    if not s.main:
        return
    bar.write(_format(history[-1], s.schedule.iterations))
    with _writes(run):
        run.write_metrics(history)
        _log_tensorboard(tensorboard, history[-1])
        state.save(run, s.cfg, s.train_set.classes, s.world)
        plot_curves(history, run.curves_file, title=f"{s.cfg.model.name}")


def _recompute_bn(s: Setup) -> None:
    """BN statistics of the averaged weights' own: the running statistics the training steps kept are those of the
    weights of the moment, not of their average (Izmailov et al. 2018, SWA). Measured in fp32 on the first
    BN_BATCHES batches of the first epoch (augmented as in training: the statistics the weights trained under),
    then rank 0's taken everywhere, as for the training weights."""
    batches = itertools.islice(s.loader.epoch(0), BN_BATCHES)
    update_bn((_inputs(s, images) for images, _ in batches), s.average.module)
    distributed.broadcast_buffers(s.average.module)


def _inputs(s: Setup, images: torch.Tensor) -> torch.Tensor:
    x = normalize(images.to(s.device, non_blocking=True), s.mean, s.std)
    return x.contiguous(memory_format=torch.channels_last) if s.cfg.run.channels_last else x


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


def _check_finite(kind: str, loss: float, iteration: int, run: RunDir, bar) -> None:
    """Stop a diverged run before it saves a checkpoint of broken weights."""
    if not math.isfinite(loss):
        bar.close()
        kept = run.checkpoints()
        raise UserError(f"the {kind} loss became {loss} by iteration {iteration}; stopped without saving (the newest "
                        f"checkpoint, {kept[-1].name if kept else 'none yet'}, is from before): lower optim.lr or "
                        "warm up (schedule.warmup_iterations) and train again")


@contextlib.contextmanager
def _writes(run: RunDir):
    """A write into the run directory that the machine refused (files.WriteFailure, or an OSError of TensorBoard's
    own writer) as one line that says how to go on: resume, or run again if nothing worth resuming was written."""
    try:
        yield
    except (files.WriteFailure, OSError) as e:
        path, error = (e.path, e.error) if isinstance(e, files.WriteFailure) else (e.filename or run.path, e)
        then = f"resume with `resnets train --resume {run}`" if run.is_run() else "run again"
        raise files.WriteFailure(path, error, then) from e


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("run.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(run.path / "tensorboard")


def _log_tensorboard(tensorboard, metrics: dict) -> None:
    if tensorboard:
        for key, value in metrics.items():
            tensorboard.add_scalar(key, value, metrics["iteration"])
        tensorboard.flush()


def _format(m: dict, total: int) -> str:
    return (f"iter {m['iteration']:>6}/{total} epoch {m['epoch']:7.2f} lr {m['lr']:.4g} | train loss "
              f"{m['train_loss']:.4f} err {m['train_error']:6.2%} | val loss {m['val_loss']:.4f} top-1 err "
            f"{m['val_top1_error']:6.2%} top-5 err {m['val_top5_error']:6.2%} | {m['images_per_s']:.0f} img/s")


def _duration(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def _normalization(train_set, mode: str, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) for `normalize`: rank 0 estimates them (on 2,000 images spread over the folder when it is
    streamed, decoded by the workers) and sends them to the other ranks, which would only repeat its work."""
    stats = normalization_stats(train_set.sample(2000, workers), mode) if distributed.rank() == 0 else None
    return distributed.broadcast_object(stats)
