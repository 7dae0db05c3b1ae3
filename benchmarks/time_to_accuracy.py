"""Time to accuracy: the error of training runs against the training images they were shown and against their
training time, e.g. the paper's recipe (a Table 6 run) beside a fast recipe of the same network.

    python benchmarks/time_to_accuracy.py /work/runs/table6/resnet20-seed0 runs/resnet20-fast \\
        --target 8.75 --out docs/results/time_to_accuracy

For each run directory: the CPU or GPU it trained on (its first leg, from legs.jsonl), what its error was measured
on, its last error, the images it was shown and its training time (the steps, summed over its legs: no start-up,
no evaluation), and when it first reached the target error. Writes OUT.md, OUT.json and OUT.png (error against
millions of images and against hours, one curve per run).
"""

import argparse
import sys
from pathlib import Path

from resnets.errors import UserError
from resnets.paper import outputs
from resnets.paper.report import evaluated_on
from resnets.plots import plot_time_to_accuracy
from resnets.rundir import RunDir, load_checkpoint
from resnets.terminal import shown


def curve(run: RunDir) -> dict:
    """The run's evaluations as (millions of images shown, hours of training, error %), with what names it."""
    cfg, metrics, legs = run.config(), run.metrics(), run.legs()
    if not metrics:
        raise UserError(f"{run} has no evaluations yet")
    # Each step takes batch_size images from each group of run.procs processes (OptimSection).
    per_step = cfg.optim.batch_size * (load_checkpoint(run.path).get("world_size", 1) // max(1, cfg.run.procs))
    machine = _short(legs[0]["machine"]) if legs else "not recorded"
    return {"run": shown(run), "network": cfg.model.name, "machine": machine,
            "evaluated_on": evaluated_on(cfg.data), "paper_error": cfg.paper.top1_error or None,
            "images_m": [m["iteration"] * per_step / 1e6 for m in metrics],
            "hours": [m["wall_s"] / 3600 for m in metrics], "errors": [100 * m["val_top1_error"] for m in metrics]}


def _short(machine: str) -> str:
    """"AMD EPYC (avx2 ...), 2 cores, bf16 autocast" of a leg's machine line (loop.set_up writes "DEVICE: PRECISION
    (why), layout, threads")."""
    device, _, rest = machine.partition(": ")
    return f"{device}, {rest.split(' (')[0]}" if rest else device


def reached(c: dict, target: float) -> tuple[float, float] | None:
    """(millions of images, hours) at the first evaluation at or below `target` percent, or None."""
    first = next((i for i, e in enumerate(c["errors"]) if e <= target), None)
    return None if first is None else (c["images_m"][first], c["hours"][first])


def markdown(curves: list[dict], target: float) -> str:
    heading = ("| run | network | trained on | evaluated on | last error (%) | images shown | training time | "
               f"first at <= {target:.2f}% |")
    lines = [heading, "|---|---|---|---|---:|---:|---:|---|"]
    for c in curves:
        hit = reached(c, target)
        first = f"{hit[0]:.2f}M images, {hit[1]:.2f} h" if hit else "not reached"
        lines.append(f"| {c['run']} | {c['network']} | {c['machine']} | {c['evaluated_on']} | {c['errors'][-1]:.2f} | "
                     f"{c['images_m'][-1]:.2f}M | {c['hours'][-1]:.2f} h | {first} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of `resnets train`")
    parser.add_argument("--target", type=float, help="error to reach, percent (default: the first run's paper figure)")
    parser.add_argument("--out", type=Path, default=Path("time_to_accuracy"),
                        help="OUT.md, OUT.json and OUT.png are written (default ./time_to_accuracy)")
    args = parser.parse_args(argv)
    try:
        curves = [curve(RunDir(path)) for path in args.runs]
    except UserError as e:
        print(f"time_to_accuracy: error: {shown(e)}", file=sys.stderr)
        return 2
    target = args.target if args.target is not None else curves[0]["paper_error"]
    if target is None:
        parser.error("no --target given and the first run's recipe has no paper figure")
    text = markdown(curves, target)
    outputs.write(args.out.parent, args.out.name, text, curves,
                  lambda path: plot_time_to_accuracy(curves, path, target))
    print(text, end="")
    print(f"wrote {args.out}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
