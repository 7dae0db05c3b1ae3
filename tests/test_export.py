import json
import pickle
import re

import pytest
import torch
from PIL import Image

from resnets import UserError, load_model
from resnets.cli import main
from resnets.models import ResNet, ResNetConfig
from resnets.rundir import FORMAT, load_checkpoint
from resnets.serving.export import TOLERANCE, export

from .fakedata import Payload
from .test_predict import train_briefly


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_briefly(tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="module")
def reference(run):
    """(5 normalised test inputs, the checkpoint's fp32 logits on them, the checkpoint)."""
    ckpt = load_checkpoint(run)
    model = ResNet(ResNetConfig(**ckpt["model_config"])).eval()  # built here, not by the loader under test
    model.load_state_dict(ckpt["model"])
    pre = ckpt["preprocessing"]
    x = (torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)) - pre["mean"]) / pre["std"]
    with torch.no_grad():
        return x, model(x), ckpt


def exported(run, tmp_path, format, capsys) -> tuple:
    """`resnets export` to tmp_path; (file, the max abs diff it printed)."""
    out = tmp_path / f"model.{format}"
    capsys.readouterr()
    assert main(["export", str(run), "--format", format, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    diff = float(re.search(r"max abs diff on logits (\S+) ", printed).group(1))
    assert "(limit 1.0e-04)" in printed  # the absolute TOLERANCE: this net's logits are below 10
    assert diff <= TOLERANCE and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind
    return out, diff


def test_onnx_runs_in_onnxruntime_like_pytorch(run, reference, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    out, _ = exported(run, tmp_path, "onnx", capsys)
    x, expected, ckpt = reference
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic: 5 here, 2 when exported, 3 when checked
    for batch in (x, x[:1]):
        got = torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])
        assert (got - expected[: len(batch)]).abs().max().item() <= TOLERANCE
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == ckpt["classes"]
    pre = json.loads(meta["preprocessing"])
    assert torch.equal(torch.tensor(pre["mean"]), ckpt["preprocessing"]["mean"]) and pre["input_size"] == 8


def test_torch_export_program_runs_like_pytorch(run, reference, tmp_path, capsys):
    out, _ = exported(run, tmp_path, "pt2", capsys)
    x, expected, ckpt = reference
    extra = {"resnets.json": ""}
    program = torch.export.load(out, extra_files=extra)
    with torch.no_grad():
        got = program.module()(x)
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert json.loads(json.loads(extra["resnets.json"])["classes"]) == ckpt["classes"]


def test_safetensors_loads_back_to_identical_logits(run, reference, tmp_path, capsys):
    out, diff = exported(run, tmp_path, "safetensors", capsys)
    assert diff == 0
    x, expected, ckpt = reference
    model, info = load_model(out)
    assert not model.training and info["classes"] == ckpt["classes"]
    pre = info["preprocessing"]
    assert torch.equal(pre.mean, ckpt["preprocessing"]["mean"]) and torch.equal(pre.std, ckpt["preprocessing"]["std"])
    assert (pre.input_size, pre.resize, pre.in_channels) == (8, 8, 1)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    # A safetensors export is a source like any other, predict and export included.
    assert export(out, tmp_path / "again.safetensors")["max_abs_diff"] == 0
    (tmp_path / "cut.safetensors").write_bytes(out.read_bytes()[:-1000])  # truncated
    with pytest.raises(UserError, match="damaged resnets safetensors export"):
        load_model(tmp_path / "cut.safetensors")


def test_nothing_is_written_when_the_check_fails(run, tmp_path):
    with pytest.raises(UserError, match="differ from PyTorch's"):
        export(run, tmp_path / "m.safetensors", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--format", "torchscript", "--out", "m.ts"], "use --format pt2"),
    (["--out", "m.bin"], "say --format"),
])
def test_bad_exports_are_one_line_exit_2(run, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_malicious_pickle_is_refused_not_run(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8)).save(image)
    raw = pickle.dumps({"format": FORMAT, "model": Payload(marker)}, protocol=2)
    files = {"raw.pt": raw, "raw.safetensors": raw}
    torch.save({"format": FORMAT, "model": Payload(marker)}, tmp_path / "zip.pt")
    torch.save({"format": FORMAT, "model": Payload(marker)}, tmp_path / "zip.safetensors")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert not marker.exists()  # writing the files ran nothing
    for name in ("raw.pt", "raw.safetensors", "zip.pt", "zip.safetensors"):
        with pytest.raises(UserError):
            load_model(tmp_path / name)
        capsys.readouterr()
        assert main(["predict", str(tmp_path / name), str(image)]) == 2
        assert main(["export", str(tmp_path / name), "--out", str(tmp_path / "m.onnx")]) == 2
        assert capsys.readouterr().err.count("\n") == 2
    assert not marker.exists()
    # Sanity check of the test itself: plain pickle would have run the payload.
    pickle.loads(raw)["model"].close()
    assert marker.exists()
