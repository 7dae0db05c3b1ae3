"""Parameters, multiply-adds and stage shapes, counted from the live module (never from a formula)."""

from dataclasses import dataclass

import torch
from torch import nn

from . import ResNet, create_model
from .blocks import STEMS


@dataclass
class Summary:
    name: str
    input_size: int
    params: int
    macs: int  # multiply-adds of convolutions and the classifier, as the paper counts "FLOPs"
    shapes: list[tuple[str, tuple[int, ...]]]  # output shape (C, H, W) of the stem, each stage and the head

    def to_dict(self) -> dict:
        return {"name": self.name, "input_size": self.input_size, "params": self.params, "macs": self.macs,
                "shapes": {name: list(shape) for name, shape in self.shapes}}


def default_input_size(model: ResNet) -> int:
    return STEMS[model.config.stem].input_size


def summarize(model: ResNet, name: str = "", input_size: int | None = None) -> Summary:
    input_size = input_size or default_input_size(model)
    params = sum(p.numel() for p in model.parameters())
    macs = 0
    shapes = []

    def count(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    def record(label):
        return lambda module, inputs, output: shapes.append((label, tuple(output.shape[1:])))

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks.append(model.maxpool.register_forward_hook(record("stem")))
    hooks += [stage.register_forward_hook(record(name)) for name, stage in zip(model.stage_names, model.stages())]
    hooks.append(model.fc.register_forward_hook(record("fc")))
    # The meta device computes shapes only: counting ResNet-1202 or ResNet-152 at 640px costs nothing.
    meta_model = model.to_empty(device="meta") if _on_meta(model) else model
    try:
        with torch.no_grad():
            device = next(meta_model.parameters()).device
            meta_model.eval()(torch.zeros(1, model.config.in_channels, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return Summary(name, input_size, params, macs, shapes)


def _on_meta(model: nn.Module) -> bool:
    return next(model.parameters()).is_meta


def summarize_preset(name: str, input_size: int | None = None, **overrides) -> Summary:
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return summarize(model, name, input_size)


def describe(s: Summary) -> str:
    """One preset's counts, then each stage's output shape, a line each."""
    lines = [f"{s.name}: {s.params:,} parameters, {s.macs / 1e9:.3f} x10^9 multiply-adds at {s.input_size}x{s.input_size}"]
    return "\n".join(lines + [f"  {stage:<8} {' x '.join(map(str, shape))}" for stage, shape in s.shapes])


def markdown_table(summaries: list[Summary]) -> str:
    lines = ["| model | input | params (M) | multiply-adds (10^9) | output of last stage |",
             "|---|---|---:|---:|---|"]
    for s in summaries:
        last = dict(s.shapes)[s.shapes[-2][0]]
        lines.append(f"| {s.name} | {s.input_size}x{s.input_size} | {s.params / 1e6:.2f} | {s.macs / 1e9:.3f} "
                     f"| {'x'.join(map(str, last))} |")
    return "\n".join(lines)
