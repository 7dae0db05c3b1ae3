"""benchmarks/gap_curves.py, the gap study's picture (docs/RESULTS.md, Table 6)."""

import json

import pytest
from PIL import Image

from .benchmark_scripts import load_benchmark

gap_curves = load_benchmark("gap_curves")


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_both_metrics_formats_are_read_as_fractions_and_drawn(tmp_path, capsys):
    engine = write_lines(tmp_path / "engine.jsonl", [
        {"iteration": 1000, "train_error": 0.49, "val_top1_error": 0.3838, "val_loss": 1.1},
        {"iteration": 2000, "train_error": 0.29, "val_top1_error": 0.25, "val_loss": 0.9}])
    reference = write_lines(tmp_path / "reference.jsonl", [
        {"iteration": 1000, "lr": 0.1, "train_loss": 1.2, "train_error": 45.75, "val_error": 40.28}])
    assert gap_curves.read_metrics(reference) == [
        {"iteration": 1000, "train_error": pytest.approx(0.4575), "val_top1_error": pytest.approx(0.4028)}]
    assert gap_curves.read_metrics(engine)[1]["val_top1_error"] == 0.25
    out = tmp_path / "curves.png"
    assert gap_curves.main([str(out), f"engine=x=1={engine}", f"reference={reference}"]) == 0
    assert Image.open(out).size[0] > 300 and capsys.readouterr().out == f"wrote {out}\n"


def test_a_missing_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        gap_curves.main([str(tmp_path / "curves.png"), f"run={tmp_path / 'none.jsonl'}"])
    assert exit.value.code == 2 and "is not LABEL=METRICS with an existing metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "curves.png").exists()
