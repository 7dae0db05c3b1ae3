"""Learning-rate schedules as pure functions of the iteration, so resuming needs nothing but the iteration."""

import math

from .config import ScheduleSection


def lr_factor(s: ScheduleSection, it: int) -> float:
    """Multiplier of the base lr at iteration `it` (0-based)."""
    if it < s.warmup_iterations:
        if s.warmup == "constant":
            # The paper's ResNet-110: lr 0.01 until training error is below 80% (~400 iterations), then back to 0.1.
            return s.warmup_factor
        return s.warmup_factor + (1 - s.warmup_factor) * it / s.warmup_iterations
    if s.kind == "step":
        return s.gamma ** sum(it >= m for m in s.milestones)
    progress = (it - s.warmup_iterations) / max(1, s.iterations - s.warmup_iterations)
    if s.kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - progress  # onecycle: (linear warm-up) then linear decay to zero
