"""The paper's comparisons as commands: plain vs residual as depth grows (Figure 6), shortcut options (Table 3),
and the CIFAR-10 ResNets of Table 6 with the paper's recipe.

An experiment is a list of runs, one recipe + overrides each, trained into `<out>/<run name>/`. A run that
already finished is read back, an interrupted one is resumed, so re-running the command continues where it
stopped; then the runs' metrics become a table (markdown + JSON) and a picture.
"""

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, PaperSection, load_config
from ..errors import UserError
from ..models import ResNet, ResNetConfig
from ..plots import plot_comparison
from ..rundir import RunDir, load_checkpoint
from ..terminal import shown
from . import outputs
from .report import evaluated_on, legs

# Named schedules. "paper" keeps the recipe's own (CIFAR-10: 64k iterations, lr / 10 at 32k and 48k).
# "cpu" is the same shape shrunk 32x to fit a 2-core machine: 2,000 iterations (5.7 epochs of 45k images),
# lr / 10 at 50% and 75%, plus a 200-iteration linear warm-up from lr 0.01. The warm-up is our departure:
# without it ResNet-56 blows up in its first ten steps at lr 0.1 (loss 2.9 -> 12, in fp32 as in bf16) and
# was still at chance after 150 iterations, a large part of so short a schedule (the paper needed such a
# warm-up only for ResNet-110, and had 64k iterations to recover in).
SCHEDULES = {
    "paper": {},
    "cpu": {"schedule.unit": "iteration", "schedule.kind": "step", "schedule.iterations": 2000,
            "schedule.milestones": [1000, 1500], "schedule.warmup_iterations": 200, "schedule.warmup": "linear",
            "schedule.warmup_factor": 0.1, "run.eval_every": 250},
}
DEFAULT_DEPTHS = {"cifar10": [20, 32, 44, 56], "imagenet": [18, 34]}
TABLE6_DEPTHS = [20, 32, 44, 56, 110]  # and 1202 on request: days on a CPU
# Table 3: ImageNet validation top-1 error (%, 10-crop testing) of ResNet-34 with each shortcut option.
TABLE3 = {"A": 25.03, "B": 24.52, "C": 24.19}


@dataclass
class Run:
    name: str  # the run directory's name and the label in tables and plots
    group: str  # runs of one group share a panel of the plot (plain | resnet, or the network)
    cfg: Config
    metrics: list[dict] = field(default_factory=list)


def plan(recipes: list[tuple[str, str, str, dict]], data: str, schedule: str, seeds: list[int],
         overrides: dict) -> list[Run]:
    """One Run per (name, group, recipe, extra overrides) and seed, with the data, schedule and seed set."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    runs = []
    for name, group, recipe, extra in recipes:
        for seed in seeds:
            settings = {"data.path": data, **SCHEDULES[schedule], **extra, **overrides, "run.seed": seed}
            runs.append(Run(f"{name}-seed{seed}", group, load_config(recipe, settings)))
    return runs


def degradation_runs(family: str, depths: list[int], **kw) -> list[Run]:
    """Plain and residual nets of each depth with the same recipe (Figure 6 on CIFAR-10, Figure 4 on ImageNet)."""
    recipes = [(f"{kind}{d}", kind, f"{family}/{kind}{d}", {}) for kind in ("plain", "resnet") for d in depths]
    return plan(recipes, **kw)


def shortcut_runs(family: str, network: str, options: list[str], **kw) -> list[Run]:
    """The same network and recipe with each shortcut option (A, B, C).

    The paper compares the options only for ImageNet ResNet-34 (Table 3). A recipe's paper figure is for its own
    option, so the other options get Table 3's figure where there is one and none elsewhere (CIFAR-10).
    """
    recipe = f"{family}/{network}"
    own = load_config(recipe).model_config(num_classes=10, in_channels=3).shortcut
    runs = plan([(f"{network}-{o}", network, recipe, {"model.shortcut": o}) for o in options], **kw)
    for run in runs:
        option = run.cfg.model.options["shortcut"]
        if option != own:
            figure = TABLE3.get(option) if (family, network) == ("imagenet", "resnet34") else None
            run.cfg.paper = PaperSection(figure or 0.0, (
                f"He et al. 2015, Table 3 (ImageNet val, 10-crop testing, ResNet-34 {option})" if figure else ""))
    return runs


def table6_runs(depths: list[int], **kw) -> list[Run]:
    """The CIFAR-10 ResNets of Table 6, each with its packaged paper recipe (Section 4.2)."""
    unknown = [d for d in depths if d not in (20, 32, 44, 56, 110, 1202)]
    if unknown:
        raise UserError(f"Table 6 has no ResNet-{unknown[0]}; its depths are 20, 32, 44, 56, 110 and 1202")
    return plan([(f"resnet{d}", "ResNets", f"cifar10/resnet{d}", {}) for d in depths], **kw)


def execute(runs: list[Run], out: Path) -> None:
    """Train every run into out/<name>, reusing finished runs and resuming interrupted ones."""
    from ..training.loop import train  # importing the trainer pulls in the data stack; only experiments that train pay

    for i, run in enumerate(runs, 1):
        run_dir = RunDir(out / run.name)
        state = run_dir.state(run.cfg)
        print(f"[{i}/{len(runs)}] {run.name}: {state}")
        if state != "finished":
            train(run.cfg, run_dir.path, resume=state == "interrupted")
        run.metrics = run_dir.metrics()


def summarize(runs: list[Run]) -> list[dict]:
    """Final training and validation error per network, mean and std over seeds (in percent)."""
    rows = {}
    for run in runs:
        if not run.metrics:
            raise UserError(f"run {run.name} has no evaluations; give it more iterations than run.eval_every")
        last = run.metrics[-1]
        row = rows.setdefault(run.name.rsplit("-seed", 1)[0], {"group": run.group, "train": [], "val": []})
        row["train"].append(100 * last["train_error"])
        row["val"].append(100 * last["val_top1_error"])
        row["iterations"] = last["iteration"]
    table = []
    for name, r in rows.items():
        table.append({
            "network": name, "group": r["group"], "seeds": len(r["train"]), "iterations": r["iterations"],
            "train_error": statistics.mean(r["train"]), "train_error_std": _std(r["train"]),
            "val_error": statistics.mean(r["val"]), "val_error_std": _std(r["val"]),
        })
    return table


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def markdown(table: list[dict], split: str) -> str:
    """The runs' final errors; `split` is what the validation error was measured on (report.evaluated_on)."""
    def cell(mean, std, seeds):
        return f"{mean:.2f}" + (f" ± {std:.2f}" if seeds > 1 else "")

    lines = [f"| network | iterations | seeds | final training error (%) | final {_error_of(split)} (%) |",
             "|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['network']} | {r['iterations']} | {r['seeds']} | "
                     f"{cell(r['train_error'], r['train_error_std'], r['seeds'])} | "
                     f"{cell(r['val_error'], r['val_error_std'], r['seeds'])} |")
    note = _split_note(split)
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def _error_of(split: str) -> str:
    return "test error" if split == "test split" else "held-out error"


def _split_note(split: str) -> str:
    return "" if split == "test split" else f"Held-out error: measured on {split}, not on the test set."


def tabulate(experiment: str, runs: list[Run], out: Path) -> tuple[list[dict], str]:
    """The experiment's table and its markdown: Table 6's form for table6, a comparison of runs otherwise."""
    split = evaluated_on(runs[0].cfg.data)  # one data setting for every run of an experiment
    if experiment == "table6":
        table = table6(runs, out)
        return table, table6_markdown(table, split)
    table = summarize(runs)
    return table, markdown(table, split)


def table6(runs: list[Run], out: Path) -> list[dict]:
    """Per network of Table 6: the held-out error in the paper's form (best, and mean ± std over seeds) beside the
    paper's figure, its parameters, iterations and training time; and the legs of each of its runs."""
    rows = {}
    for run in runs:
        if not run.metrics:
            raise UserError(f"run {run.name} has no evaluations; give it more iterations than run.eval_every")
        row = rows.setdefault(run.cfg.model.name, {"runs": [], "errors": [], "iterations": [], "training_s": 0.0,
                                                   "legs": [], "paper": run.cfg.paper})
        row["runs"].append(run.name)
        row["errors"].append(100 * run.metrics[-1]["val_top1_error"])
        row["iterations"].append(run.metrics[-1]["iteration"])
        row["scheduled"] = run.cfg.schedule.iterations
        row["training_s"] += run.metrics[-1]["wall_s"]
        row["legs"] += [{"run": run.name, **leg} for leg in legs(RunDir(out / run.name), run.metrics)]
        row["config"] = load_checkpoint(out / run.name)["model_config"]
    table = []
    for name, r in rows.items():
        best, paper = min(r["errors"]), r["paper"].top1_error or None
        table.append({
            "network": name, "params": sum(p.numel() for p in ResNet(ResNetConfig(**r["config"])).parameters()),
            "seeds": len(r["errors"]), "iterations": min(r["iterations"]), "scheduled_iterations": r["scheduled"],
            "best_error": best, "mean_error": statistics.mean(r["errors"]), "error_std": _std(r["errors"]),
            "paper_error": paper, "difference": best - paper if paper else None, "paper_source": r["paper"].source,
            "training_s": r["training_s"], "legs": r["legs"],
        })
    return table


def table6_markdown(table: list[dict], split: str) -> str:
    heading = f"| network | params | iterations | seeds | {_error_of(split)} (%) | paper (%) | difference | training time |"
    lines = [heading, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        ours = f"{r['best_error']:.2f}" + (f" ({r['mean_error']:.2f} ± {r['error_std']:.2f})" if r["seeds"] > 1 else "")
        paper = f"{r['paper_error']:.2f}" if r["paper_error"] else "—"
        diff = f"{r['difference']:+.2f}" if r["difference"] is not None else "—"
        lines.append(f"| {r['network']} | {r['params'] / 1e6:.2f}M | {r['iterations']} of {r['scheduled_iterations']} "
                     f"| {r['seeds']} | {ours} | {paper} | {diff} | {_hours(r['training_s'])} |")
    lines += ["", ("With several seeds the error is given as the paper gives it: best (mean ± std). Training time: "
                   "the steps between evaluations, summed over legs and seeds (no start-up, no evaluation)."), ""]
    if split != "test split":
        lines += [_split_note(split), ""]
    if any(r["iterations"] < r["scheduled_iterations"] for r in table):
        lines += ["Rows short of their scheduled iterations are unfinished: their errors are not the recipe's.", ""]
    lines += ["Legs (one per process that trained a run):", "",
              "| run | iterations | training time | started | machine |", "|---|---:|---:|---|---|"]
    for r in table:
        for leg in r["legs"]:
            lines.append(f"| {shown(leg['run'])} | {leg['from_iteration']}-{leg['to_iteration']} | "
                         f"{_hours(leg['training_s'])} | {leg['started'] or '—'} | {shown(leg['machine'])} |")
    return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def write_outputs(name: str, runs: list[Run], out: Path, title: str, table: list[dict], text: str) -> None:
    """out/<name>.md (`text`), out/<name>.json (`table`) and out/<name>.png (the runs' curves, one panel per
    group)."""
    groups = {}
    for run in runs:
        groups.setdefault(run.group, []).append((run.name, run.metrics))
    evaluated = "test" if evaluated_on(runs[0].cfg.data) == "test split" else "held-out"
    outputs.write(out, name, text, table, lambda path: plot_comparison(groups, path, title, evaluated))
