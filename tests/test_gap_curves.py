"""studies/gap_curves.py, the gap study's picture (docs/RESULTS.md, Table 6)."""

import json

import pytest
from matplotlib.figure import Figure
from PIL import Image

from .scripts import load_study

gap_curves = load_study("gap_curves")


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_both_metrics_formats_are_read_as_fractions_and_drawn(tmp_path, capsys, monkeypatch):
    engine = write_lines(tmp_path / "engine.jsonl", [
        {"iteration": 1000, "train_error": 0.49, "val_top1_error": 0.3838, "val_loss": 1.1},
        {"iteration": 2000, "train_error": 0.29, "val_top1_error": 0.25, "val_loss": 0.9}])
    reference = write_lines(tmp_path / "reference.jsonl", [
        {"iteration": 1000, "lr": 0.1, "train_loss": 1.2, "train_error": 45.75, "val_error": 40.28}])
    assert gap_curves.read_metrics(reference) == [
        {"iteration": 1000, "train_error": pytest.approx(0.4575), "val_top1_error": pytest.approx(0.4028)}]
    assert gap_curves.read_metrics(engine)[1]["val_top1_error"] == 0.25
    out, figures, savefig = tmp_path / "curves.png", [], Figure.savefig

    def kept(fig, *args, **kwargs):
        figures.append(fig)
        savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", kept)
    assert gap_curves.main([str(out), f"engine=x=1={engine}", f"reference={reference}"]) == 0
    assert Image.open(out).format == "PNG" and capsys.readouterr().out == f"wrote {out}\n"
    # Each run's training error dashed and validation error solid, in percent against iterations, under its label
    # (which may hold "=": the last one ends it).
    [ax] = figures[0].axes
    curves = [(line.get_linestyle(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
    assert curves == [("--", [1000, 2000], pytest.approx([49, 29])), ("-", [1000, 2000], pytest.approx([38.38, 25])),
                      ("--", [1000], pytest.approx([45.75])), ("-", [1000], pytest.approx([40.28]))]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["engine=x=1", "reference"]


def test_a_missing_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        gap_curves.main([str(tmp_path / "curves.png"), f"run={tmp_path / 'none.jsonl'}"])
    assert exit.value.code == 2 and "is not LABEL=METRICS with an existing metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "curves.png").exists()
