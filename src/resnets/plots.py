"""Training curves in the style of the paper's Figures 4 and 6."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none wanted
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(metrics: list[dict], path: Path, title: str = "") -> None:
    """Training error dashed, validation error bold, against iterations; written atomically."""
    its = [m["iteration"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(its, [100 * m["train_error"] for m in metrics], "--", color="C0", label="train")
    ax.plot(its, [100 * m["val_top1_error"] for m in metrics], "-", color="C0", linewidth=2.2, label="validation")
    ax.set(xlabel="iteration", ylabel="error (%)", title=title, ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
