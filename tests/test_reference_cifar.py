"""studies/reference_cifar.py, the gap study's recipe without the engine (docs/RESULTS.md, Table 6)."""

import json
import sys
from pathlib import Path

import torch

from resnets.config import load_config
from resnets.data import load_train_val

from .fakedata import make_image_folder
from .scripts import load_study

reference_cifar = load_study("reference_cifar")


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
    # 390 to train on: 3 batches of 128 an epoch, so the checkpoint at 4 resumes in the middle of the second epoch
    data = make_image_folder(tmp_path / "images", classes=2, per_class=200)
    whole = train(monkeypatch, data, tmp_path / "whole", 6)
    train(monkeypatch, data, tmp_path / "legs", 4)
    with (tmp_path / "legs" / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 6}\n')  # beyond the checkpoint at 4: dropped on resuming
    resumed = train(monkeypatch, data, tmp_path / "legs", 6)
    assert resumed["iteration"] == 6 and all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    metrics = [json.loads(line) for line in (tmp_path / "legs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [2, 4, 6]
