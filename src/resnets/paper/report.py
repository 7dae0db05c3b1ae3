"""A reproduction report: each run's measured error beside the figure the paper reports for its recipe."""

from ..errors import UserError
from ..rundir import RunDir
from ..schedule import scheduled_steps
from ..terminal import shown


def evaluated_on(data) -> str:
    """What a run's validation error was measured on, from its DataSection: the data's test split, or the
    training images it held out."""
    return (f"{data.val_split} held-out training images (split_seed {data.split_seed})" if data.val_split
            else "test split")


def run_row(run: RunDir) -> dict:
    cfg, metrics = run.config(), run.metrics()
    if not metrics:
        raise UserError(f"{run} has no evaluations yet (metrics.jsonl is empty)")
    last, data = metrics[-1], cfg.data
    split = evaluated_on(data)
    paper = cfg.paper.top1_error or None
    ours = 100 * last["val_top1_error"]
    return {
        "run": str(run), "network": cfg.model.name, "options": cfg.model.options,
        "data": data.path, "evaluated_on": split, "iterations": last["iteration"],
        "scheduled_iterations": scheduled_steps(cfg.schedule, metrics), "top1_error": ours,
        "paper_top1_error": paper, "difference": ours - paper if paper else None, "paper_source": cfg.paper.source,
        "wall_s": last["wall_s"],
    }


def markdown(rows: list[dict]) -> str:
    lines = [("| run | network | iterations | evaluated on | top-1 error (%) | paper (%) | difference "
              "| training time |"),
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        options = "".join(f" {k}={v}" for k, v in r["options"].items())
        paper = f"{r['paper_top1_error']:.2f}" if r["paper_top1_error"] else "—"
        diff = f"{r['difference']:+.2f}" if r["difference"] is not None else "—"
        lines.append(f"| {shown(r['run'])} | {r['network']}{options} | {r['iterations']} of "
                     f"{r['scheduled_iterations']} | {r['evaluated_on']} | {r['top1_error']:.2f} | {paper} | {diff} | "
                     f"{r['wall_s'] / 60:.1f} min |")
    sources = sorted({r["paper_source"] for r in rows if r["paper_source"]})
    notes = [f"Paper figures: {s}." for s in sources]
    if any(r["iterations"] < r["scheduled_iterations"] for r in rows):
        notes.append("Runs short of their scheduled iterations are unfinished: their errors are not comparable.")
    if any(r["evaluated_on"] != "test split" and r["paper_top1_error"] for r in rows):
        notes.append("The paper's CIFAR-10 figures are on the test set; ours on held-out training images are "
                     "estimates of the same quantity, not the same measurement.")
    return "\n".join(lines) + "\n" + "".join(f"\n{n}" for n in notes) + ("\n" if notes else "")


def legs(run: RunDir, metrics: list[dict]) -> list[dict]:
    """Each leg of a run (a process that trained it, from legs.jsonl) up to its last evaluation: iterations,
    training time (wall_s, evaluation and start-up not counted) and machine. A run with no legs.jsonl (trained
    before it was written) is one leg on a machine not recorded."""
    recorded = run.legs() or [{"from_iteration": 0, "started": None, "machine": "not recorded"}]
    rows = []
    for leg, following in zip(recorded, [*recorded[1:], None]):
        start = leg["from_iteration"]
        end = following["from_iteration"] if following else float("inf")
        lines = [m for m in metrics if start < m["iteration"] <= end]
        if lines:
            before = [m["wall_s"] for m in metrics if m["iteration"] <= start]
            rows.append({"from_iteration": start, "to_iteration": lines[-1]["iteration"], "started": leg["started"],
                         "training_s": lines[-1]["wall_s"] - (before[-1] if before else 0.0),
                         "machine": leg["machine"]})
    return rows
