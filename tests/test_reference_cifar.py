"""benchmarks/reference_cifar.py, the gap study's recipe without the engine (docs/RESULTS.md, Table 6)."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

from resnets.config import load_config
from resnets.data import load_train_val

from .fakedata import make_image_folder

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCHMARKS))  # it imports first_steps.py beside it, as it does when run
    try:
        spec = importlib.util.spec_from_file_location("reference_cifar", BENCHMARKS / "reference_cifar.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


reference_cifar = load_script()


def train(monkeypatch, data: Path, out: Path, iterations: int) -> dict:
    monkeypatch.setattr(sys, "argv", ["reference_cifar.py", "--data", str(data), "--out", str(out), "--iterations",
                                      str(iterations), "--eval-every", "2", "--val-split", "10", "--depth", "8"])
    reference_cifar.main()
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_it_holds_out_the_engines_images(tmp_path):
    data = make_image_folder(tmp_path / "images", classes=3, per_class=8)
    cfg = load_config("cifar10/resnet20", {"data.path": str(data), "data.val_split": 10,
                                           "data.cache_dir": str(tmp_path / "cache")})
    _, engine_val = load_train_val(cfg.data)
    _, (images, labels) = reference_cifar.load_split(data, 10, 0)
    assert torch.equal(images, engine_val.images) and torch.equal(labels, engine_val.labels)


def test_a_resumed_run_takes_the_steps_of_an_uninterrupted_one(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "images", classes=2, per_class=70)  # 130 to train on: one batch of 128
    whole = train(monkeypatch, data, tmp_path / "whole", 6)
    train(monkeypatch, data, tmp_path / "legs", 4)
    with (tmp_path / "legs" / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 6}\n')  # beyond the checkpoint at 4: dropped on resuming
    resumed = train(monkeypatch, data, tmp_path / "legs", 6)
    assert resumed["iteration"] == 6 and all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    metrics = [json.loads(line) for line in (tmp_path / "legs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [2, 4, 6]
