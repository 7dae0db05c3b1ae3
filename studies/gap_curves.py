"""The gap study's curves (docs/RESULTS.md, Table 6): training and held-out error against iterations for the
ResNet-20 runs of the study, drawn from their metrics.jsonl in the style of the paper's Figure 6.

    python studies/gap_curves.py docs/results/gap/curves.png \\
        "reference script, once encoded=docs/results/gap/reference-resnet20-seed0.metrics.jsonl" \\
        "engine, twice encoded=docs/results/gap/resnet20-jpeg2-fp32-channel-seed0.metrics.jsonl"

Reads the engine's metrics (`resnets train`: errors as fractions) and studies/reference_cifar.py's (percent).
"""

import argparse
import json
import sys
from pathlib import Path

from resnets.plots import plot_comparison


def read_metrics(path: Path) -> list[dict]:
    """One dict per evaluation with the engine's keys: iteration, train_error and val_top1_error as fractions."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if rows and "val_error" in rows[0]:  # reference_cifar.py writes percent under its own name
        rows = [{"iteration": r["iteration"], "train_error": r["train_error"] / 100,
                 "val_top1_error": r["val_error"] / 100} for r in rows]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the picture to write (.png)")
    parser.add_argument("runs", nargs="+", metavar="LABEL=METRICS", help="a curve's label and its metrics.jsonl")
    parser.add_argument("--title", default="ResNet-20, the paper's recipe (paper: 8.75% test error)")
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        label, sep, path = run.rpartition("=")
        if not sep or not label or not Path(path).is_file():
            parser.error(f"{run!r} is not LABEL=METRICS with an existing metrics.jsonl")
        runs.append((label, read_metrics(Path(path))))
    plot_comparison({"": runs}, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
