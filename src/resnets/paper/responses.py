"""Layer responses (the paper's Figure 7): how strongly each 3x3 layer of a trained network responds.

A layer's response is the output of its BN, before the ReLU and before the addition of the shortcut. For
each channel we take the standard deviation over images and positions, and report the mean over channels.
The paper's observation: residual branches respond less than plain layers, closer to zero, as the
reformulation assumes; and deeper ResNets respond less per layer.
"""

from functools import partial
from pathlib import Path

import torch

from ..data import BatchLoader, load_train_val, normalize
from ..errors import UserError
from ..rundir import RunDir, iteration_of
from ..serving.weights import load_model
from ..terminal import shown


def three_by_three_bns(model) -> list[torch.nn.Module]:
    """The BN after every 3x3 convolution, in the network's order (the stem's first when it is 3x3)."""
    if model.config.preact:
        raise UserError("layer responses are defined for post-activation nets (BN after each conv)")
    return [bn for conv, bn in model.conv_bn_pairs() if conv.kernel_size == (3, 3)]


@torch.no_grad()
def layer_responses(model, ds, mean, std, batch_size: int = 500) -> list[float]:
    """Mean over channels of each 3x3 layer's per-channel response std on `ds` (model in eval mode)."""
    model.eval()
    bns = three_by_three_bns(model)
    # Per layer: number of values per channel, and per-channel sums of x and x^2 (float64: 5k images x 1k
    # positions would lose digits in float32).
    moments = [[0, 0.0, 0.0] for _ in bns]

    def record(i, module, inputs, output):
        x = output.double().transpose(0, 1).flatten(1)  # (C, N*H*W)
        moments[i][0] += x.shape[1]
        moments[i][1] += x.sum(1)
        moments[i][2] += x.square().sum(1)

    handles = [bn.register_forward_hook(partial(record, i)) for i, bn in enumerate(bns)]
    try:
        for images, _ in BatchLoader(ds, batch_size, shuffle=False).epoch(0):
            model(normalize(images, mean, std))
    finally:
        for handle in handles:
            handle.remove()
    stds = []
    for n, total, total_sq in moments:
        variance = (total_sq / n - (total / n).square()).clamp_min(0)
        stds.append(float(variance.sqrt().mean()))
    return stds


def run_responses(run_dir: Path, images: int) -> dict:
    """{"network", "run", "stds"} for the newest checkpoint of a run, on its own held-out images."""
    run = RunDir(run_dir)
    cfg = run.config()
    newest = run.latest()
    model, info = load_model(newest)
    _, val = load_train_val(cfg.data)
    val = val.subset(torch.arange(min(images, len(val))))
    stds = layer_responses(model, val, info["preprocessing"].mean, info["preprocessing"].std)
    return {"network": cfg.model.name, "run": str(run), "iteration": iteration_of(newest), "images": len(val),
            "stds": stds}


def markdown(results: list[dict]) -> str:
    lines = ["| network | run | 3x3 layers | mean response std | median | largest |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        s = sorted(r["stds"])
        lines.append(f"| {r['network']} | {shown(r['run'])} | {len(s)} | {sum(s) / len(s):.3f} | "
                     f"{s[len(s) // 2]:.3f} | "
                     f"{s[-1]:.3f} |")
    return "\n".join(lines) + "\n"
