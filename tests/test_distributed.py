"""torchrun on CPU (gloo): two processes, two "machines" on localhost, resume and evaluation under torchrun.

The commands are docs/IMAGENET.md's with the sizes scaled down (tests/test_imagenet.py's SMALL).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnets import distributed, runtime
from resnets.cli import main
from resnets.config import load_config
from resnets.errors import UserError
from resnets.models import ResNet
from resnets.rundir import load_checkpoint
from resnets.training.loop import train

from .conftest import torch_threads
from .ddp_spy import keep_bn_in_eval_mode
from .fakedata import make_imagenet_folder
from .test_imagenet import SMALL

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# torchrun gives each process one thread when it starts several on a machine; one process per "machine" too, so
# that every launch sums in the same order (and two threads per process do not fight over 2 cores).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SPY = Path(__file__).with_name("ddp_spy.py")
# 2 epochs of the 19-file tiny ImageNet, evaluated after each: 2 x 4 steps of 4 images (2 processes x 2, or 1 x 4).
RECIPE, TINY = "imagenet/resnet18", [*SMALL, "schedule.iterations=2", "data.workers=1"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"))


def run(command: list, timeout: int = 600, env: dict = ENV) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def weights(path) -> dict:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("batch", [
    ["optim.batch_size=2", "optim.lr=0.005"],  # torchrun's: 2 per process at lr 0.005 is 2 x 2 images at lr 2 x 0.005
    ["optim.batch_size=4", "optim.lr=0.01", "run.procs=2"],  # what `resnets train` starts: the 4 images shared
], ids=["batch per process", "run.procs shares the batch"])
def test_two_processes_train_like_one_with_twice_the_batch(imagenet, tmp_path, monkeypatch, batch):
    """Same steps: identical weights on both ranks, and (BN in eval mode) the weights of 1 process x batch 4 at lr
    0.01."""
    two, one, dump = tmp_path / "two", tmp_path / "one", tmp_path / "dump"
    run([*TORCHRUN, "--standalone", "--nproc_per_node=2", SPY, dump, "--bn-eval", "--", "train", "--recipe", RECIPE,
         *TINY, f"data.path={imagenet}", *batch, "schedule.warmup_iterations=0", "--out", two])
    for n in (1, 2):  # the model each rank evaluated after epochs 1 and 2
        rank0, rank1 = torch.load(dump / f"rank0-{n}.pt"), torch.load(dump / f"rank1-{n}.pt")
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    monkeypatch.setattr(ResNet, "train", keep_bn_in_eval_mode)
    cfg = load_config(RECIPE, [*TINY, f"data.path={imagenet}", "optim.batch_size=4", "optim.lr=0.01",
                               "schedule.warmup_iterations=0"])
    with pytest.warns(UserWarning, match="corrupt"):
        train(cfg, one)
    a, b = weights(two), weights(one)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    history = [load_checkpoint(r)["history"] for r in (two, one)]
    for key in ("iteration", "lr", "val_top1_error", "val_top5_error"):
        assert [m[key] for m in history[0]] == pytest.approx([m[key] for m in history[1]])
    assert [m["train_loss"] for m in history[0]] == pytest.approx([m["train_loss"] for m in history[1]], rel=1e-4)


@pytest.mark.filterwarnings("ignore:skipped image")
def test_resnets_train_starts_its_processes_itself_and_resumes_them(imagenet, tmp_path):
    """Auto with 2 threads, no torchrun: `resnets train` runs itself as the 2 processes (1 thread each) that torchrun
    starts for the same command with run.procs=2 (the same weights), records the number, and resumes bit-exactly
    after losing its last checkpoint."""
    own, launched = tmp_path / "own", tmp_path / "torchrun"
    command = ["train", "--recipe", RECIPE, *TINY, f"data.path={imagenet}", "optim.batch_size=4"]
    stdout = run([sys.executable, "-m", "resnets", *command, "--out", own], env={**ENV, "OMP_NUM_THREADS": "2"})
    assert stdout.startswith("2 processes x 1 thread(s), each taking 2 of each step's 4 images (the paper's two")
    assert "1 thread(s) x 2 process(es)" in stdout and stdout.count("iter      8/8") == 1
    run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "resnets", *command, "run.procs=2", "--out", launched])
    a, b = weights(own), weights(launched)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(own)["world_size"] == 2 and load_config(own / "config.toml").run.procs == 2

    (own / "iter-0000008.pt").unlink()
    stdout = run([sys.executable, "-m", "resnets", "train", "--resume", own])
    assert "resuming" in stdout and stdout.count("iter      8/8") == 1
    c = weights(own)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_a_mistake_in_the_processes_is_one_line(imagenet, tmp_path, capsys):
    """The processes' own error, once, without the launcher's report, even when rank 0 meets it last (torchrun
    stops the others when one ends); a batch that does not split is refused before any process starts."""
    (tmp_path / "sitecustomize.py").write_text('import os, time\nif os.environ.get("RANK") == "0":\n    time.sleep(3)\n')
    late_lead = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [ENV.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "resnets", "train", "data.path=/no/such/folder", "run.procs=2",
                           "--out", tmp_path / "run"], capture_output=True, text=True, env=late_lead, check=False)
    assert done.returncode == 2 and done.stderr == "resnets train: error: data path /no/such/folder does not exist\n"
    assert main(["train", "optim.batch_size=7", "run.procs=2", "--out", str(tmp_path / "odd")]) == 2
    assert capsys.readouterr().err == ("resnets train: error: optim.batch_size=7 does not split into run.procs=2 "
                                       "equal shares\n")


def test_a_mistake_rank_0_does_not_end_on_is_said_by_the_process_that_met_it(tmp_path, monkeypatch, capsys):
    """After its grace (here none), a process other than rank 0 names itself and says what it met."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "LEAD_GRACE_S", 0.0)
    assert main(["train", "data.path=/no/such/folder", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "resnets train: process 1: error: data path /no/such/folder does not exist\n"


def test_auto_picks_two_processes_on_a_cpu_with_two_threads():
    cpu = torch.device("cpu")
    with torch_threads(2):
        assert runtime.training_processes(0, cpu, 128, resume=False)[0] == 2
        assert runtime.training_processes(0, cpu, 127, resume=False)[0] == 1  # an odd batch does not split
        assert runtime.training_processes(0, torch.device("cuda"), 128, resume=False)[0] == 1  # torchrun's job
        assert runtime.training_processes(0, cpu, 128, resume=True)[0] == 1  # a run from before run.procs
        assert runtime.training_processes(3, cpu, 128, resume=True)[0] == 3
    assert runtime.training_processes(0, cpu, 128, resume=False)[0] == 1  # one thread (conftest.py)


@pytest.fixture(scope="module")
def two_machines(imagenet, tmp_path_factory):
    """A run trained by two torchrun launches with --nnodes=2 (one process each), meeting at a c10d endpoint;
    the spy dumps each rank's model at each evaluation into dump/."""
    out = tmp_path_factory.mktemp("nodes") / "run"
    dump = out.with_name("dump")
    endpoint = f"localhost:{free_port()}"
    logs = [out.with_name(f"node{node}.log") for node in (0, 1)]
    launches = [subprocess.Popen(
        [*TORCHRUN, "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}", "--rdzv-backend=c10d",
         f"--rdzv-endpoint={endpoint}", "--rdzv-id=tiny", SPY, dump, "--", "train", "--recipe", RECIPE, *TINY,
         f"data.path={imagenet}", "optim.batch_size=2", "--out", str(out)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV) for node, log in zip((0, 1), logs)]
    try:
        for launch in launches:
            launch.wait(timeout=600)
    finally:
        for launch in launches:
            launch.kill()
    outputs = [log.read_text() for log in logs]
    for launch, output in zip(launches, outputs):
        assert launch.returncode == 0, output[-5000:]
    return out, "".join(outputs), dump


@pytest.mark.filterwarnings("ignore:skipped image")
def test_two_machines_train_together_and_resume_under_torchrun(two_machines, imagenet, tmp_path):
    out, stdout, dump = two_machines
    # BN in training mode: each rank updates its running statistics from its own images; what is evaluated and
    # saved is the same model everywhere, rank 0's statistics included.
    for n in (1, 2):
        rank0, rank1 = torch.load(dump / f"rank0-{n}.pt"), torch.load(dump / f"rank1-{n}.pt")
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # One run, written once: by rank 0 only.
    assert stdout.count("training resnet18") == 1 and stdout.count("iter      8/8") == 1
    assert [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [4, 8]
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "curves.png", "iter-0000004.pt",
                                                     "iter-0000008.pt", "legs.jsonl", "metrics.jsonl"]
    with pytest.raises(UserError, match="trained by 2 processes"):
        train(load_config(out / "config.toml"), out, resume=True)

    # Resume on one machine with two processes, after losing the last checkpoint: the same final weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    (resumed / "iter-0000008.pt").unlink()
    stdout = run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "resnets", "train", "--resume", resumed])
    assert "resuming" in stdout and stdout.count("iter      8/8") == 1
    a, b = weights(out), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distributed_evaluation_counts_every_image_once(two_machines, imagenet, capsys):
    """13 validation files (one unreadable) on 2 processes: the numbers of one process, under every protocol."""
    out, _, _ = two_machines
    command = ["eval", str(out), "--data", str(imagenet / "val"), "--protocol", "center,10crop,multiscale",
               "--scales", "32,48", "--json"]
    stdout = run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "resnets", *command])
    two = [json.loads(line) for line in stdout.splitlines()]
    capsys.readouterr()
    with pytest.warns(UserWarning, match="corrupt"):
        assert main(command) == 0
    one = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["images"] for r in two] == [12, 12, 12]
    for a, b in zip(two, one):
        assert (a["protocol"], a["images"], a["top1_error"], a["top5_error"]) == (
            b["protocol"], b["images"], b["top1_error"], b["top5_error"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
