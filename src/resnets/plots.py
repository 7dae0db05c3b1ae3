"""Training curves in the style of the paper's Figures 4 and 6."""

from pathlib import Path

# Figures made directly, not through pyplot: pyplot keeps global state and would pick (or need) a display
# backend for the whole process; a Figure of its own draws to a file with Agg, whatever the user's settings.
from matplotlib.figure import Figure

from . import files


def plot_curves(metrics: list[dict], path: Path, title: str = "") -> None:
    """Training error dashed, validation error bold, against iterations; written atomically."""
    its = [m["iteration"] for m in metrics]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(its, [100 * m["train_error"] for m in metrics], "--", color="C0", label="train")
    ax.plot(its, [100 * m["val_top1_error"] for m in metrics], "-", color="C0", linewidth=2.2, label="validation")
    ax.set(xlabel="iteration", ylabel="error (%)", title=title, ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """Through the one atomic writer (files.replacing): a reader never sees half a picture."""
    fig.tight_layout()
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:])  # the temp file's name ends in .tmp


def plot_comparison(groups: dict[str, list[tuple[str, list[dict]]]], path: Path, title: str = "",
                    evaluated: str = "validation") -> None:
    """One panel per group (e.g. plain | resnet) as in Figure 6: one colour per run, training error dashed,
    validation error (on what `evaluated` names: test, held-out) bold, against iterations; the panels share the
    error axis."""
    fig = Figure(figsize=(5.5 * len(groups), 4))
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)
    for ax, (group, runs) in zip(axes[0], groups.items()):
        for i, (name, metrics) in enumerate(runs):
            its = [m["iteration"] for m in metrics]
            ax.plot(its, [100 * m["train_error"] for m in metrics], "--", color=f"C{i}", linewidth=1)
            ax.plot(its, [100 * m["val_top1_error"] for m in metrics], "-", color=f"C{i}", linewidth=2.2, label=name)
        ax.set(xlabel="iteration", title=group)
        ax.grid(alpha=0.3)
        ax.legend(title=f"bold: {evaluated}, dashed: training", title_fontsize="small", fontsize="small")
    # Once every panel is drawn: set earlier, the top would stay at the first panels' highest error.
    axes[0][0].set_ylim(bottom=0)
    axes[0][0].set_ylabel("error (%)")
    fig.suptitle(title)
    _save(fig, path)


def plot_responses(results: list[dict], path: Path) -> None:
    """Figure 7: each 3x3 layer's response std, in the network's order (left) and sorted (right)."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2, sharey=True)
    for i, r in enumerate(results):
        style = {"color": f"C{i}", "label": r["network"], "linestyle": "--" if r["network"].startswith("plain") else "-"}
        left.plot(range(1, len(r["stds"]) + 1), r["stds"], **style)
        right.plot(range(1, len(r["stds"]) + 1), sorted(r["stds"], reverse=True), **style)
    left.set(xlabel="layer index (original)", ylabel="std of response")
    right.set(xlabel="layer index (sorted by magnitude)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize="small")
    _save(fig, path)


def plot_time_to_accuracy(curves: list[dict], path: Path, target: float) -> None:
    """Error against millions of training images shown (left) and hours of training (right), one curve per run
    (dicts with "run", "images_m", "hours", "errors"), the target error as a dotted line."""
    fig = Figure(figsize=(11, 4))
    by_images, by_time = fig.subplots(1, 2, sharey=True)
    for i, c in enumerate(curves):
        style = {"color": f"C{i}", "linewidth": 1.8, "marker": ".", "label": c["run"]}
        by_images.plot(c["images_m"], c["errors"], **style)
        by_time.plot(c["hours"], c["errors"], **style)
    for ax, label in ((by_images, "training images shown (millions)"), (by_time, "training time (hours)")):
        ax.axhline(target, color="k", linestyle=":", linewidth=1)
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    by_images.set(ylabel="error (%)", ylim=(0, min(100, 3 * max(target, 1))))
    by_time.legend(fontsize="small", title=f"dotted: {target:.2f}%", title_fontsize="small")
    _save(fig, path)
