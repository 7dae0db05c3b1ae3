"""Learning-rate schedules as pure functions of the iteration (and, for "plateau", of the evaluations so far,
which every checkpoint holds), so resuming needs nothing but the checkpoint.

ScheduleSection is the config's [schedule] section; SCHEDULES is the table of kinds (schedule.kind takes its keys):
a new kind is one function of (schedule section, iteration, evaluations before it) giving the multiplier of the lr
after warm-up, and one entry. Both live here, below config.py, which takes schedule.kind's choices from the table.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace


@dataclass
class ScheduleSection:
    kind: str = "step"  # a key of SCHEDULES (below): step (the paper's CIFAR), plateau (its ImageNet), ...
    # "epoch": iterations, milestones, warmup_iterations and run.eval_every count epochs (of the N x batch_size
    # images steps that N processes take), so that one recipe keeps its epochs on any number of processes.
    unit: str = "iteration"
    iterations: int = 64_000
    milestones: list[int] = field(default_factory=lambda: [32_000, 48_000])  # step: lr /= 10 at each
    gamma: float = 0.1
    warmup_iterations: int = 0
    # "constant": lr * warmup_factor during warm-up, then the schedule (the paper's ResNet-110: 0.01 then 0.1);
    # "linear": ramp from lr * warmup_factor up to lr.
    warmup: str = "constant"
    # Of the one-process lr: N processes warm up from warmup_factor x lr to N x lr ("linear", 1.0: Goyal et al.'s
    # gradual warm-up, which is no warm-up at all on one process).
    warmup_factor: float = 0.1
    # plateau: lr *= gamma after `patience` evaluations in a row that do not lower the best validation top-1
    # error by more than min_delta (fraction, 0.001 = 0.1 points); the count then starts again.
    patience: int = 5
    min_delta: float = 0.001


def lr_factor(s: ScheduleSection, it: int, history: Sequence[dict] = (), scale: int = 1) -> float:
    """Multiplier of the base lr (scale x optim.lr) at iteration `it` (0-based).

    `history`: the evaluations so far (metrics dicts); "plateau" counts those made before iteration `it`.
    `scale`: each step takes scale x batch_size images (torchrun's processes); warm-up starts from warmup_factor x
    the lr of one batch_size.
    """
    if it < s.warmup_iterations:
        start = s.warmup_factor / scale
        if s.warmup == "constant":
            # The paper's ResNet-110: lr 0.01 until training error is below 80% (~400 iterations), then back to 0.1.
            return start
        return start + (1 - start) * it / s.warmup_iterations
    return SCHEDULES[s.kind](s, it, history)


def _step(s: ScheduleSection, it: int, history: Sequence[dict]) -> float:
    return s.gamma ** sum(it >= m for m in s.milestones)


def _plateau(s: ScheduleSection, it: int, history: Sequence[dict]) -> float:
    return s.gamma ** plateaus(s, [m["val_top1_error"] for m in history if m["iteration"] < it])


def _progress(s: ScheduleSection, it: int) -> float:
    """The fraction of the iterations after warm-up done before `it`."""
    return (it - s.warmup_iterations) / max(1, s.iterations - s.warmup_iterations)


def _cosine(s: ScheduleSection, it: int, history: Sequence[dict]) -> float:
    return 0.5 * (1 + math.cos(math.pi * _progress(s, it)))


def _onecycle(s: ScheduleSection, it: int, history: Sequence[dict]) -> float:
    return 1 - _progress(s, it)  # (linear warm-up) then linear decay to zero


SCHEDULES: dict[str, Callable[[ScheduleSection, int, Sequence[dict]], float]] = {
    "step": _step,  # lr x gamma at each of schedule.milestones (the paper's CIFAR: / 10 at 32k and 48k)
    "plateau": _plateau,  # lr x gamma each time the validation error plateaus (the paper's ImageNet)
    "cosine": _cosine,  # half a cosine from lr down to zero
    "onecycle": _onecycle,  # a straight line from lr down to zero
}


def plateaus(s: ScheduleSection, errors: list[float]) -> int:
    """How often the validation error has plateaued: `patience` evaluations in a row without beating the best
    by more than min_delta, the count starting again after each. The paper divides the lr by 10 "when the error
    plateaus" without saying how that was judged; this is our rule (ReduceLROnPlateau's, counted in evaluations).
    """
    best, stalled, drops = math.inf, 0, 0
    for error in errors:
        if error < best - s.min_delta:
            best, stalled = error, 0
        else:
            stalled += 1
            if stalled == s.patience:
                drops, stalled = drops + 1, 0
    return drops


def scheduled_steps(s: ScheduleSection, metrics: list[dict]) -> int | None:
    """A run's length in optimizer steps, which its checkpoints and metrics count, from its schedule and its
    metrics lines. With unit "epoch", an evaluation line gives the epoch's length (evaluations fall on whole
    epochs); None before the first one."""
    if s.unit == "iteration":
        return s.iterations
    return s.iterations * round(metrics[-1]["iteration"] / metrics[-1]["epoch"]) if metrics else None


def in_iterations(s: ScheduleSection, per_epoch: int) -> ScheduleSection:
    """`s` with every count in iterations: with unit "epoch", epochs times the iterations of one epoch."""
    if s.unit == "iteration":
        return s
    return replace(s, unit="iteration", iterations=s.iterations * per_epoch, milestones=[m * per_epoch for m in
                   s.milestones], warmup_iterations=s.warmup_iterations * per_epoch)
