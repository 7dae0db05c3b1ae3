import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import resnets.serving.predict
from resnets import create_model, load_model, runtime
from resnets.cli import main
from resnets.data import load_digits, load_folder
from resnets.data.decode import decode_rgb, to_channels
from resnets.data.folders import resize_center_crop, scan_folder
from resnets.preprocessing import Preprocessing
from resnets.rundir import FORMAT, load_checkpoint
from resnets.serving.evaluate import evaluate
from resnets.serving.inference import auto_mode, prepare
from resnets.serving.predict import predict
from resnets.training.loop import train

from .conftest import torch_threads
from .fakedata import make_image_folder
from .fastpaths import compiled_graphs, conv_weights, is_compiled
from .test_train import tiny


def train_briefly(run):
    """ResNet-20 on the 8x8 digits for 8 iterations: 1 input channel, per-pixel mean; about a second.

    On one thread (conftest.torch_threads says why).
    """
    with torch_threads(1):
        train(tiny(**{"schedule.iterations": 8, "run.eval_every": 8, "schedule.milestones": [4]}), run)
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_briefly(tmp_path_factory.mktemp("predict") / "run")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """40 test digits as 8x8 greyscale PNGs, with their uint8 pixels and labels."""
    _, test = load_digits()
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i in range(40):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(paths[-1])
    return paths, test.subset(torch.arange(40))


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header claims width x height pixels: a decompression bomb's first step."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_predictions_are_the_evaluation_paths(run, digits, capsys):
    """Files through `resnets predict` get the probabilities of the tensors `resnets eval` feeds the model."""
    paths, ds = digits
    model, info = load_model(run)
    pre = info["preprocessing"]
    assert pre.mean.shape == (1, 8, 8) and pre.resize == 8  # the paper's per-pixel mean, as trained
    capsys.readouterr()
    assert main(["predict", str(run), str(paths[0].parent), "--json", "--top-k", "10", "--batch-size", "16",
                 "--mode", "fp32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in lines] == [str(p) for p in paths]
    with torch.no_grad():
        direct = model(pre.normalize(ds.images)).softmax(1)
    got = torch.tensor([[t["probability"] for t in sorted(r["top"], key=lambda t: int(t["class"]))] for r in lines])
    torch.testing.assert_close(got, direct, rtol=0, atol=1e-5)
    top1 = torch.tensor([int(r["top"][0]["class"]) for r in lines])
    assert (top1 != ds.labels).float().mean().item() == pytest.approx(evaluate(model, ds, pre.mean, pre.std,
                                                                               torch.device("cpu"))["top1_error"])
    # The table: one line per image, best class first.
    capsys.readouterr()
    assert main(["predict", str(run), str(paths[0]), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{paths[0]}: {lines[0]['top'][0]['class']} ") and out.count("\n") == 1
    assert out.count(",") == 1


@pytest.mark.skipif(not runtime.native_bf16_cpu(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_fast_modes_give_the_fp32_probabilities(run, digits, capsys, monkeypatch):
    """--mode folded / bf16 / compiled against the default fp32, on 40 files in batches of 16 (the last one, of 8,
    padded for the compiled mode): probabilities within 1e-5 when BN is folded, 0.02 in bf16 (8-bit mantissa), and
    each mode served as it says (bf16 channels_last weights; a compiled module, which compiles graphs)."""
    paths, _ = digits
    served = {}

    def prepare_spied(model, mode, *args, **kwargs):
        served[mode] = prepare(model, mode, *args, **kwargs)
        return served[mode]

    monkeypatch.setattr(resnets.serving.predict, "prepare", prepare_spied)

    def probabilities(mode):
        capsys.readouterr()
        assert main(["predict", str(run), str(paths[0].parent), "--json", "--top-k", "10", "--batch-size", "16",
                     "--mode", mode]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["path"] for r in lines] == [str(p) for p in paths]
        return torch.tensor([[t["probability"] for t in sorted(r["top"], key=lambda t: int(t["class"]))]
                             for r in lines])

    fp32 = probabilities("fp32")
    torch.testing.assert_close(probabilities("folded"), fp32, rtol=0, atol=1e-5)
    bf16, graphs = compiled_graphs(lambda: probabilities("bf16"))
    assert conv_weights(served["bf16"].module) == {(torch.bfloat16, True)} and graphs == 0
    # Compiled afresh, as in a new `resnets predict`: once a process has compiled the network for one batch size,
    # torch.compile (automatic dynamic shapes) compiles it for any batch size, less exactly (0.03 off fp32 here).
    torch._dynamo.reset()
    compiled, graphs = compiled_graphs(lambda: probabilities("compiled"))
    assert is_compiled(served["compiled"].module) and graphs >= 1
    for fast in (bf16, compiled):
        torch.testing.assert_close(fast, fp32, rtol=0, atol=0.02)
        assert not torch.equal(fast, fp32)
    # The default, auto, is the mode this machine does natively, exactly.
    assert torch.equal(probabilities("auto"), probabilities(auto_mode(torch.device("cpu"))))
    with pytest.raises(SystemExit):  # int8 needs calibration images, which predict does not take
        main(["predict", str(run), str(paths[0]), "--mode", "int8"])


@pytest.mark.parametrize("native", [True, False])
def test_auto_mode_runs_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch, native):
    """On an AVX2-only CPU emulated bf16 is several times slower than fp32: auto must not pick it there."""
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: native)
    assert auto_mode(torch.device("cpu")) == ("bf16" if native else "folded")


def test_eval_predict_and_embed_keep_freed_memory(run, digits, tmp_path, monkeypatch, capsys):
    """Each batch frees and takes the same blocks, as a training step does: on the AMD EPYC of docs/SPEED.md,
    `resnets eval` of resnet20:cifar10 on its 5,000 held-out images took 0.92-1.16 million page faults with glibc's
    defaults, 0.31 million kept."""
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(True) or True)
    folder = str(digits[0][0].parent)
    for job in (["eval", str(run), "--data", "digits"], ["predict", str(run), folder],
                ["embed", str(run), folder, "--out", str(tmp_path / "f.npy")]):
        calls.clear()
        assert not main(job)
        assert calls == [True], job[0]
    capsys.readouterr()


def test_bad_files_are_one_line_errors_and_the_rest_is_classified(run, tmp_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)  # 10 wide, 12 high: resized and centre-cropped
    good = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
        "sub/palette.png": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "gray16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "bits.png": Image.fromarray(rgb[..., 0] > 127),
        "la.png": Image.fromarray(rgb[..., 0]).convert("LA"),
    }
    for name, image in good.items():
        image.save(folder / name, **({"transparency": 0} if image.mode == "P" else {}))  # palette with a clear colour
    assert Image.open(folder / "gray16.png").mode == "I;16" and Image.open(folder / "cmyk.jpg").mode == "CMYK"
    (folder / "x.jpg").write_text("not an image")
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "bomb.png").write_bytes(png_claiming(100_000, 100_000))  # 10^10 pixels in 100 bytes
    (folder / "notes.txt").write_text("not looked at: folders are searched for image extensions only")
    (folder / ".hidden.png").write_bytes(b"tool debris, skipped")
    missing = tmp_path / "missing.png"
    big = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(big)  # real, but over --max-pixels 100000

    capsys.readouterr()
    assert main(["predict", str(run), str(folder), str(missing), str(big), "--max-pixels", "100000",
                 "--top-k", "3"]) == 1
    captured = capsys.readouterr()
    classified = {line.split(": ")[0] for line in captured.out.splitlines()}
    assert classified == {str(folder / name) for name in good}
    errors = captured.err.splitlines()
    assert len(errors) == 5 and all(line.startswith("resnets predict: error: ") for line in errors)
    reasons = {line.split(": ")[2]: line for line in errors}
    bad = {str(folder / n) for n in ("x.jpg", "truncated.jpg", "bomb.png")}
    assert reasons.keys() == bad | {str(missing), str(big)}
    assert "not an image" in reasons[str(folder / "x.jpg")]
    assert "truncated" in reasons[str(folder / "truncated.jpg")].lower()
    assert "100000x100000 is 10,000,000,000 pixels" in reasons[str(folder / "bomb.png")]  # at the default limit
    assert "decompression bomb" in reasons[str(big)] and "no such file" in reasons[str(missing)]
    # --json: an object per file, errors included, in order.
    assert main(["predict", str(run), str(folder / "gray.png"), str(folder / "x.jpg"), "--json"]) == 1
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(o["top"]) for o in objects[:1]] == [5] and objects[1]["error"].startswith("not an image")
    # The default limit admits the 400x300 image.
    assert main(["predict", str(run), str(big)]) == 0


def read_image(path, channels: int) -> torch.Tensor:
    """A file as predict reads it for a network of `channels` channels."""
    return to_channels(decode_rgb(path), channels)


def test_modes_are_converted_not_clipped(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray((np.arange(4, dtype=np.uint16) * 21845).reshape(2, 2)).save(tmp_path / "g16.png")
    # 16-bit grey 0, 21845, 43690, 65535 is 0, 85, 170, 255 in 8 bits; Pillow's convert("L") would clip to 255.
    assert read_image(tmp_path / "g16.png", 1).flatten().tolist() == [0, 85, 170, 255]
    assert read_image(tmp_path / "g16.png", 3).shape == (3, 2, 2)
    Image.fromarray(np.dstack([rgb, np.zeros_like(rgb[..., :1])]), "RGBA").save(tmp_path / "rgba.png")
    expected = torch.from_numpy(rgb).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "rgba.png", 3), expected)  # alpha dropped, colours kept
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert torch.equal(read_image(tmp_path / "cmyk.tif", 3), expected)
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bits.png")
    assert read_image(tmp_path / "bits.png", 1).unique().tolist() == [0, 255]
    assert torch.equal(read_image(tmp_path / "rgba.png", 1), read_image(tmp_path / "cmyk.tif", 1))
    # ImageNet-style resize 256 / crop 224: an image already 224 x 224 is enlarged and cropped all the same.
    square = torch.from_numpy(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
    fit = resize_center_crop
    assert torch.equal(fit(square, 8, 8), square) and not torch.equal(fit(square, 10, 8), square)
    assert fit(torch.zeros(3, 30, 60, dtype=torch.uint8), 10, 8).shape == (3, 8, 8)


def test_colour_images_are_preprocessed_as_training_decoded_them(tmp_path):
    """PNG, JPEG, BMP, GIF and RGBA files: predict's uint8 inputs are the very pixels a run on the folder trains on
    (one decoder, one resize and crop), and its probabilities those of the preprocessed images."""
    root = make_image_folder(tmp_path / "folder", classes=2, per_class=4, size=40, extras=True)
    paths, _, _ = scan_folder(root)
    readable = [p for p in paths if p.name != "corrupt.jpg"]
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)
    with pytest.warns(UserWarning, match="1 unreadable: .*corrupt.jpg"):
        trained_on = load_folder(root, image_size=32).images  # data.image_size=32
    fixed = Preprocessing(mean, std, input_size=32, resize=32, in_channels=3)  # what such a run records
    assert torch.equal(torch.stack([fixed.crop(decode_rgb(p)) for p in readable]), trained_on)
    # Colour preprocessing with resize > input size, random weights: every readable file gets a prediction.
    model = create_model("resnet20", num_classes=2).eval()
    pre = Preprocessing(mean, std, input_size=32, resize=36, in_channels=3)
    results = list(predict(model, {"classes": ["a", "b"], "preprocessing": pre}, paths, top_k=1, batch_size=4,
                           mode="fp32"))
    assert [r["path"] for r in results if "top" in r] == [str(p) for p in readable]
    with torch.no_grad():
        x = torch.stack([pre(decode_rgb(p)) for p in readable])
        best = model(x).softmax(1).max(1).values
    torch.testing.assert_close(torch.tensor([r["top"][0]["probability"] for r in results if "top" in r]), best)


def test_bad_checkpoints_and_arguments_exit_2(run, digits, tmp_path, capsys):
    image = str(digits[0][0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for args, message in [
        (["predict", str(tmp_path / "nope.pt"), image], "does not exist"),
        (["predict", str(tmp_path / "junk.pt"), image], "corrupt"),
        (["predict", str(run), str(tmp_path / "empty")], "no image files"),
        (["predict", str(run), image, "--top-k", "0"], "at least 1"),
    ]:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert load_checkpoint(run)["format"] == FORMAT
