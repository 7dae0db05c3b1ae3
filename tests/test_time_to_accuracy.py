"""benchmarks/time_to_accuracy.py: two tiny runs of different batch sizes, read back as images shown and hours."""

import json

import pytest

from resnets.training.loop import train

from .scripts import load_benchmark
from .test_train import tiny

tta = load_benchmark("time_to_accuracy")


def test_error_against_images_and_time_with_the_first_evaluation_at_the_target(tmp_path, capsys):
    short = {"schedule.iterations": 8, "schedule.milestones": [6], "run.eval_every": 4}
    for name, batch in (("b16", 16), ("b32", 32)):
        train(tiny(**short, **{"optim.batch_size": batch}), tmp_path / name)
    metrics = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("b16", "b32")}
    target = 100 * metrics["b32"][0]["val_top1_error"]  # b32 reaches it at its first evaluation
    capsys.readouterr()
    assert tta.main([str(tmp_path / "b16"), str(tmp_path / "b32"), "--target", str(target),
                     "--out", str(tmp_path / "out" / "tta")]) == 0
    curves = json.loads((tmp_path / "out" / "tta.json").read_text())
    for c, (name, batch) in zip(curves, (("b16", 16), ("b32", 32))):
        assert c["images_m"] == pytest.approx([m["iteration"] * batch / 1e6 for m in metrics[name]])
        assert c["hours"] == pytest.approx([m["wall_s"] / 3600 for m in metrics[name]])
        assert c["errors"] == pytest.approx([100 * m["val_top1_error"] for m in metrics[name]])
        assert c["machine"].endswith(("cores, fp32", "cores, bf16 autocast")) and c["evaluated_on"] == "test split"
    table = capsys.readouterr().out
    assert f"| {4 * 32 / 1e6:.2f}M images, {metrics['b32'][0]['wall_s'] / 3600:.2f} h |" in table
    assert (tmp_path / "out" / "tta.png").read_bytes()[:4] == b"\x89PNG"


def test_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert tta.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("time_to_accuracy: error:") and err.count("\n") == 1
