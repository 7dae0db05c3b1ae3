"""The paper's experiments end to end on the embedded digits with a few iterations: outputs exist and agree
with the runs' own logs; finished runs are reused and interrupted ones resumed."""

import json

import pytest
import torch

from resnets import create_model
from resnets.cli import main
from resnets.data import load_digits
from resnets.paper import experiments, report
from resnets.paper.responses import layer_responses, three_by_three_bns
from resnets.rundir import RunDir, load_checkpoint

TINY = ["--data", "digits", "--val-split", "0", "--schedule", "cpu", "schedule.iterations=4", "run.eval_every=2",
        "run.keep_checkpoints=3"]


def last_metrics(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def degradation(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "degradation"
    assert main(["experiment", "degradation", "--depths", "20", "--out", str(out), *TINY]) == 0
    return out


def test_degradation_writes_table_json_and_plot_from_the_runs(degradation):
    table = json.loads((degradation / "degradation.json").read_text())
    assert [r["network"] for r in table] == ["plain20", "resnet20"]
    for row in table:
        last = last_metrics(degradation / f"{row['network']}-seed0")
        assert row["iterations"] == last["iteration"] == 4
        assert row["train_error"] == pytest.approx(100 * last["train_error"])
        assert row["val_error"] == pytest.approx(100 * last["val_top1_error"])
        assert f"| {row['network']} | 4 | 1 | {row['train_error']:.2f} | {row['val_error']:.2f} |" in \
            (degradation / "degradation.md").read_text()
    assert (degradation / "degradation.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_reuses_finished_runs_and_resumes_interrupted_ones(degradation, capsys):
    plain, resnet = degradation / "plain20-seed0", degradation / "resnet20-seed0"
    finished = load_checkpoint(resnet)["model"]
    # Interrupt resnet20 after its first evaluation: drop the final checkpoint and the log line past it.
    RunDir(resnet).latest().unlink()
    lines = (resnet / "metrics.jsonl").read_text().splitlines()
    (resnet / "metrics.jsonl").write_text(lines[0] + "\n")
    plain_mtime = RunDir(plain).latest().stat().st_mtime_ns
    assert main(["experiment", "degradation", "--depths", "20", "--out", str(degradation), *TINY]) == 0
    out = capsys.readouterr().out
    assert "plain20-seed0: finished" in out and "resnet20-seed0: interrupted" in out
    assert RunDir(plain).latest().stat().st_mtime_ns == plain_mtime  # not retrained
    resumed = load_checkpoint(resnet)["model"]
    assert all(torch.equal(resumed[k], finished[k]) for k in finished)  # resume on CPU is bit-exact


def test_a_changed_config_is_refused_not_mixed_in(degradation, capsys):
    args = ["experiment", "degradation", "--depths", "20", "--out", str(degradation), *TINY, "optim.lr=0.05"]
    assert main(args) == 2
    assert "different config" in capsys.readouterr().err


def test_shortcut_options_train_the_same_network(tmp_path):
    out = tmp_path / "shortcuts"
    assert main(["experiment", "shortcuts", "--network", "resnet20", "--options", "A,C", "--out", str(out),
                 *TINY]) == 0
    table = json.loads((out / "shortcuts.json").read_text())
    assert [r["network"] for r in table] == ["resnet20-A", "resnet20-C"]
    projections = sum(k.endswith("downsample.0.weight") for k in load_checkpoint(out / "resnet20-C-seed0")["model"])
    assert projections == 9  # option C projects in every block
    assert not any("downsample" in k for k in load_checkpoint(out / "resnet20-A-seed0")["model"])


def test_each_shortcut_option_is_set_beside_its_own_paper_figure():
    plan = {"data": "/data/imagenet", "schedule": "paper", "seeds": [0], "overrides": {}}
    runs = experiments.shortcut_runs("imagenet", "resnet34", ["A", "B", "C"], **plan)
    assert [(r.cfg.model.options["shortcut"], r.cfg.paper.top1_error) for r in runs] == [
        ("A", 25.03), ("B", 24.52), ("C", 24.19)]  # Table 3; B is the recipe's own option
    assert all(f"ResNet-34 {o}" in r.cfg.paper.source for o, r in zip("ABC", runs))
    runs = experiments.shortcut_runs("cifar10", "resnet20", ["A", "B"], **{**plan, "data": "digits"})
    assert [(r.cfg.paper.top1_error, r.cfg.paper.source) for r in runs] == [
        (8.75, "He et al. 2015, Table 6 (CIFAR-10 test set)"), (0.0, "")]  # the paper has no CIFAR option B figure


def test_several_seeds_are_summarized_as_mean_and_std():
    runs = [experiments.Run(f"resnet20-seed{seed}", "resnet", None, [
        {"iteration": 2, "train_error": 0.5, "val_top1_error": 0.5},
        {"iteration": 4, "train_error": train, "val_top1_error": val}]) for seed, train, val in
        ((0, 0.10, 0.20), (1, 0.20, 0.30), (2, 0.30, 0.70))]
    [row] = experiments.summarize(runs)
    assert (row["network"], row["seeds"], row["iterations"]) == ("resnet20", 3, 4)
    assert (row["train_error"], row["val_error"]) == pytest.approx((20.0, 40.0))
    assert (row["train_error_std"], row["val_error_std"]) == pytest.approx((10.0, 26.457513))  # sample std
    assert "| resnet20 | 4 | 3 | 20.00 ± 10.00 | 40.00 ± 26.46 |" in experiments.markdown([row], "test split")


@pytest.mark.parametrize("network", ["plain20", "resnet20"])
def test_responses_match_a_hand_computation(network):
    """All 19 layers (the stem, then each block's two BNs), each output's per-channel std averaged over channels,
    with the network run by hand: a block is relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut x)."""
    _, ds = load_digits()
    torch.manual_seed(0)
    model = create_model(network, num_classes=10, in_channels=1)
    model.train()
    with torch.no_grad():  # BN statistics of these images, so that the responses are not all the same
        model(ds.images.float() / 255)
    model.eval()
    stds = layer_responses(model, ds, torch.zeros(1, 1, 1), torch.ones(1, 1, 1), batch_size=100)
    assert len(stds) == len(three_by_three_bns(model)) == 19  # the stem and 2 per block

    def response(x):
        return x.transpose(0, 1).flatten(1).std(1, correction=0).mean().item()

    with torch.no_grad():
        x = model.bn1(model.conv1(ds.images.float() / 255))
        by_hand = [response(x)]
        x = torch.relu(x)
        for block in model.blocks():
            first = block.bn1(block.conv1(x))
            second = block.bn2(block.conv2(torch.relu(first)))
            by_hand += [response(first), response(second)]
            x = torch.relu(second + (block.shortcut(x) if network == "resnet20" else 0))
    assert stds == pytest.approx(by_hand, rel=1e-4)


def test_zeroed_residual_branches_have_zero_response():
    _, ds = load_digits()
    model = create_model("resnet20", num_classes=10, in_channels=1, zero_init_last=True)
    stds = layer_responses(model, ds, torch.zeros(1, 1, 1), torch.ones(1, 1, 1))
    assert stds[2::2] == [0.0] * 9 and min(stds[1::2]) > 0  # every block's second BN has zero scale


def test_responses_and_report_from_experiment_runs(degradation, tmp_path, capsys):
    runs = [str(degradation / "plain20-seed0"), str(degradation / "resnet20-seed0")]
    assert main(["experiment", "responses", *runs, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "responses.json").read_text())
    assert [(r["network"], len(r["stds"]), r["images"]) for r in results] == [("plain20", 19, 360), ("resnet20", 19, 360)]
    assert (tmp_path / "responses.png").is_file()
    capsys.readouterr()
    assert main(["report", str(degradation)]) == 0
    report = capsys.readouterr().out
    resnet20 = last_metrics(degradation / "resnet20-seed0")
    assert f"| resnet20 | 4 of 4 | test split | {100 * resnet20['val_top1_error']:.2f} | 8.75 |" in report
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_an_epoch_schedule_is_finished_after_its_epochs_not_its_count_of_steps(tmp_path):
    """ImageNet recipes count epochs: a run of 2 epochs cut after the first is interrupted, though its step count
    (a dozen steps an epoch on the 1437 digits) is far above 2; the report counts the run's length in steps."""
    from resnets.paper.report import run_row
    from resnets.training.loop import train

    from .test_train import tiny

    cfg = tiny(**{"schedule.unit": "epoch", "schedule.iterations": 2, "schedule.milestones": [1],
                  "run.eval_every": 1})
    run = tmp_path / "run"
    train(cfg, run)
    assert RunDir(run).state(cfg) == "finished"
    finished = run_row(RunDir(run))
    assert finished["iterations"] == finished["scheduled_iterations"] == last_metrics(run)["iteration"]
    RunDir(run).checkpoints()[-1].unlink()  # cut after the first epoch: its checkpoint and log line remain
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert RunDir(run).state(cfg) == "interrupted"
    row = run_row(RunDir(run))
    assert row["iterations"] < row["scheduled_iterations"] == 2 * row["iterations"]


def test_table6_sets_each_resnet_beside_the_paper_with_its_legs(tmp_path, capsys):
    """Three seeds, as the paper's "best (mean ± std)" needs; the first one run in two legs."""
    out = tmp_path / "table6"
    args = ["experiment", "table6", "--depths", "20", "--seeds", "0,1,2", "--out", str(out), *TINY]
    assert main(args) == 0
    run = out / "resnet20-seed0"
    # A second leg: the run interrupted after its first evaluation, then the same command again.
    RunDir(run).latest().unlink()
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert main(args) == 0
    assert "resnet20-seed0: interrupted" in capsys.readouterr().out
    [row] = json.loads((out / "table6.json").read_text())
    finals = [last_metrics(out / f"resnet20-seed{seed}") for seed in range(3)]
    errors = torch.tensor([100 * m["val_top1_error"] for m in finals], dtype=torch.float64)
    assert len(set(errors.tolist())) == 3  # different errors, or best, mean and std would not be told apart
    # The trained network's parameters: ResNet-20 for the digits' one channel.
    params = sum(p.numel() for p in create_model("resnet20", in_channels=1).parameters())
    assert (row["network"], row["params"], row["seeds"]) == ("resnet20", params, 3)
    assert (row["iterations"], row["scheduled_iterations"]) == (4, 4)
    assert row["best_error"] == pytest.approx(errors.min().item())
    assert row["mean_error"] == pytest.approx(errors.mean().item())
    assert row["error_std"] == pytest.approx(errors.std().item())  # over seeds: the sample's (n - 1)
    assert row["paper_error"] == 8.75 and row["difference"] == pytest.approx(row["best_error"] - 8.75)
    assert [(leg["run"], leg["from_iteration"], leg["to_iteration"]) for leg in row["legs"]] == [
        ("resnet20-seed0", 0, 2), ("resnet20-seed0", 2, 4), ("resnet20-seed1", 0, 4), ("resnet20-seed2", 0, 4)]
    assert sum(leg["training_s"] for leg in row["legs"]) == pytest.approx(sum(m["wall_s"] for m in finals))
    assert row["training_s"] == pytest.approx(sum(m["wall_s"] for m in finals))
    assert all("cores" in leg["machine"] and ("fp32" in leg["machine"] or "bf16" in leg["machine"])
               for leg in row["legs"])
    text = (out / "table6.md").read_text()
    ours = f"{row['best_error']:.2f} ({row['mean_error']:.2f} ± {row['error_std']:.2f})"
    assert f"| resnet20 | 0.27M | 4 of 4 | 3 | {ours} | 8.75 | {row['difference']:+.2f} |" in text
    assert "| resnet20-seed0 | 2-4 |" in text and "| resnet20-seed2 | 0-4 |" in text
    assert (out / "table6.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_from_before_legs_were_recorded_is_one_leg_on_an_unrecorded_machine(tmp_path):
    metrics = [{"iteration": 2, "wall_s": 1.5}, {"iteration": 4, "wall_s": 4.0}]
    assert report.legs(RunDir(tmp_path), metrics) == [{"from_iteration": 0, "to_iteration": 4, "started": None,
                                              "training_s": 4.0, "machine": "not recorded"}]


def test_table6_refuses_a_depth_the_paper_did_not_train(capsys):
    assert main(["experiment", "table6", "--depths", "26", *TINY]) == 2
    assert "no ResNet-26" in capsys.readouterr().err


def test_table6_with_test_scores_the_test_split_and_says_so(tmp_path, capsys):
    tiny = [a for a in TINY if a not in ("--val-split", "0")]
    out = tmp_path / "table6"
    assert main(["experiment", "table6", "--test", "--depths", "20", "--out", str(out), *tiny]) == 0
    text = (out / "table6.md").read_text()
    assert "| test error (%) |" in text and "held-out" not in text
    assert RunDir(out / "resnet20-seed0").config().data.val_split == 0  # trained on every training image
    # The default for CIFAR-10 recipes holds images out: the same table says what it was measured on.
    held = tmp_path / "held"
    assert main(["experiment", "table6", "--val-split", "300", "--depths", "20", "--out", str(held), *tiny]) == 0
    text = (held / "table6.md").read_text()
    assert "| held-out error (%) |" in text and "measured on 300 held-out training images" in text
    capsys.readouterr()
    assert main(["experiment", "table6", "--test", "--val-split", "300", "--out", str(held), *tiny]) == 2
    assert "drop the held-out split (300 images)" in capsys.readouterr().err
