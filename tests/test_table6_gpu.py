"""benchmarks/table6_gpu.sh on its CPU path: two networks trained at once on a tiny schedule, each into the run
directory where `resnets experiment table6`, given the same overrides, finds it and reuses it for the table."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from resnets.rundir import load_checkpoint

from .fakedata import make_image_folder

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "table6_gpu.sh"


def run_script(data: Path, out: Path, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(data), str(out), *overrides], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable, **env}, check=False)


def test_cpu_path_trains_each_network_where_table6_finds_it(tmp_path):
    # The paper's protocol, the script's default: every training image trains, the test split is scored.
    data = tmp_path / "images"
    make_image_folder(data / "train", classes=3, per_class=12)
    make_image_folder(data / "test", classes=3, per_class=2)
    out = tmp_path / "table6"
    # 2 threads each: enough for `resnets train` to pick two workers, were the script to leave run.procs to it.
    env = {"DEPTHS": "20 32", "ITERATIONS": "6", "OMP_NUM_THREADS": "2"}
    done = run_script(data, out, env, "optim.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPU: none" in done.stdout and re.search(r"^resnet20: \d+\.\d s$", done.stdout, re.MULTILINE)
    assert re.search(r"^resnet32: \d+\.\d s$", done.stdout, re.MULTILINE) and "training wall time" in done.stdout
    for depth in (20, 32):
        run_dir = out / f"resnet{depth}-seed0"
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["iteration"] for m in metrics] == [3, 6] and load_checkpoint(run_dir)["iteration"] == 6
        assert (out / "logs" / f"resnet{depth}.log").is_file()
        # The table's own config for the run is the run's (it refuses a run directory of another config).
        assert f"resnet{depth}-seed0: finished" in done.stdout
    rows = json.loads((out / "table6.json").read_text())
    assert [(r["network"], r["iterations"]) for r in rows] == [("resnet20", 6), ("resnet32", 6)]
    assert "| test error (%) |" in (out / "table6.md").read_text() and (out / "table6.png").is_file()


def test_a_failed_run_fails_the_script_and_says_why(tmp_path):
    # A stand-in for Python whose ResNet-32 run fails as `resnets train` does: the script's bookkeeping alone.
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\ncase "$*" in *resnet32*) echo "resnets train: error: it broke" >&2; exit 2;; esac\n')
    fake.chmod(0o755)
    done = run_script(tmp_path / "data", tmp_path / "table6", {"DEPTHS": "20 32", "PYTHON": str(fake)})
    assert done.returncode == 1 and re.search(r"^resnet20: \d+\.\d s$", done.stdout, re.MULTILINE)
    assert "resnet32: FAILED (exit 2)" in done.stdout and "resnets train: error: it broke" in done.stdout
    assert "failed: resnet32; the table was not written" in done.stderr
