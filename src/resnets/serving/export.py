"""A trained network in portable formats, each checked against PyTorch before it is written.

- onnx: the network with a dynamic batch dimension, run back in onnxruntime.
- pt2: a `torch.export` program (`torch.export.load(path).module()`), run back in PyTorch. TorchScript is
  not offered: torch 2.14 deprecates `torch.jit.trace` / `torch.jit.script` in favour of `torch.export`.
- safetensors: the weights, with the model config and preprocessing as metadata; `resnets.load_model`
  (serving.weights) reads it without unpickling anything.

Every format holds the network as trained: its input is the normalised image, (x / 255 - mean) / std, of
shape (B, in_channels, input_size, input_size), and its output the logits. The class names and preprocessing
travel with it (ONNX metadata_props, the .pt2 archive's extra file `resnets.json`, safetensors metadata).
A file is written to a temporary name (files.replacing), read back and compared with the PyTorch model on a batch
of 3 random images, and renamed into place only if the logits agree within `TOLERANCE`.
"""

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import files
from ..errors import UserError
from ..models import ResNet, weights_file
from ..preprocessing import Preprocessing
from .weights import RUN_ELSEWHERE, load_model

TOLERANCE = 1e-4  # max abs difference on logits between an export and PyTorch fp32 (see export())
# Formats once offered, or asked for, that are refused with the reason and what to use instead.
RETIRED = {"torchscript": "TorchScript is deprecated in torch 2.14 (torch.jit warns on every call); use --format pt2 "
                          "(torch.export, loaded with torch.export.load)"}


def export(source: str | Path, out: str | Path, format: str | None = None, tolerance: float = TOLERANCE) -> dict:
    """Write the network of `source` (see load_model) to `out` as `format` (default: from out's extension).

    Returns {"format", "path", "bytes", "max_abs_diff", "limit"}: the largest difference between the logits of
    the written file (run by onnxruntime / torch.export / load_model) and the PyTorch fp32 model on 3 random
    images, and the most allowed (`tolerance`, scaled up for logits above 10 in magnitude). Raises UserError and
    leaves nothing at `out` if it is exceeded.
    """
    out = Path(out)
    named = next((name for name, f in FORMATS.items() if out.suffix == f.extension), None)  # by the extension
    if format in RETIRED:
        raise UserError(RETIRED[format])
    if format and named and format != named:  # a file whose name says another format than it holds
        raise UserError(f"--out {out} has the extension of {named} files but --format is {format}: give it the "
                        f"{FORMATS[format].extension} extension, or drop --format")
    format = format or named
    if format not in FORMATS:
        raise UserError(f"say --format {' or '.join(FORMATS)} (or give --out one of their extensions)")
    model, info = load_model(source)
    save, run = FORMATS[format].save, FORMATS[format].run
    x = _check_images(info["preprocessing"])
    with torch.no_grad():
        expected = model(x)
    # fp32 keeps ~7 significant digits, so two correct runtimes differ in proportion to the logits' size: a few
    # units in the last place of logits in the thousands (a deep net with extreme BN statistics) is 1e-3.
    # `tolerance` is absolute for logits up to 10 in magnitude (trained classifiers), relative beyond.
    limit = tolerance * max(1.0, expected.abs().max().item() / 10)
    with files.replacing(out) as tmp:  # renamed onto `out` only if the check passes
        save(model, info, str(tmp))
        diff = (run(str(tmp), x) - expected).abs().max().item()
        if not diff <= limit:  # also catches NaN
            raise UserError(f"the {format} export's logits differ from PyTorch's by {diff:.3g} (> {limit:.3g}); "
                            f"nothing written to {out}")
    return {"format": format, "path": str(out), "bytes": out.stat().st_size, "max_abs_diff": diff, "limit": limit}


def _check_images(pre: Preprocessing, n: int = 3) -> torch.Tensor:
    """n random uint8 images normalised as in training: realistic inputs, the same ones on every call."""
    images = torch.randint(0, 256, (n, *pre.shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return pre.normalize(images)


def _metadata(info: dict, stats: bool) -> dict[str, str]:
    return weights_file.metadata(info["model_config"], info["classes"], info["preprocessing"].to_dict(), stats)


def _example(info: dict) -> torch.Tensor:
    # Batch 2, not 1: torch.export specialises dimensions of size 0 and 1 to constants.
    return torch.zeros(2, *info["preprocessing"].shape)


# ONNX ------------------------------------------------------------------------------------------------------------

def _import_onnx():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise UserError(f"--format onnx needs {e.name}: pip install 'resnets[onnx]'") from None
    return onnx, onnxruntime


def _save_onnx(model: ResNet, info: dict, path: str) -> None:
    onnx, _ = _import_onnx()
    batch = torch.export.Dim("batch")
    # The torch.export-based exporter (the default since torch 2.9; the TorchScript-based one is deprecated).
    program = torch.onnx.export(model, (_example(info),), None, input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    proto = program.model_proto  # weights embedded: every ResNet here is far below protobuf's 2 GB limit
    onnx.helper.set_model_props(proto, _metadata(info, stats=True))
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def _run_onnx(path: str, x: torch.Tensor) -> torch.Tensor:
    _, onnxruntime = _import_onnx()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


# torch.export ----------------------------------------------------------------------------------------------------

def _save_pt2(model: ResNet, info: dict, path: str) -> None:
    program = torch.export.export(model, (_example(info),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    # Into memory, then to the file: torch's zip writer, refused a write (a full disk), raises, and then raises
    # again from its destructor, which C++ cannot take: the process aborted (exit 134) after the one-line error.
    # (And a file object, not a name: torch.export warns about names not ending in .pt2, as the temp file's.)
    archive = io.BytesIO()
    torch.export.save(program, archive, extra_files={"resnets.json": json.dumps(_metadata(info, stats=True))})
    Path(path).write_bytes(archive.getbuffer())


def _run_pt2(path: str, x: torch.Tensor) -> torch.Tensor:
    with open(path, "rb") as f, torch.no_grad():
        return torch.export.load(f).module()(x)


# safetensors -----------------------------------------------------------------------------------------------------

def _save_safetensors(model: ResNet, info: dict, path: str) -> None:
    weights_file.write(path, model.state_dict(), info["model_config"], info["classes"], info["preprocessing"].to_dict())


def _run_safetensors(path: str, x: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(path)
    with torch.no_grad():
        return model(x)


@dataclass(frozen=True)
class Format:
    """An export format: a new one is a writer, a reader that runs the file back, and one entry in FORMATS."""

    extension: str  # of --out, which picks the format when --format is not given
    save: Callable[[ResNet, dict, str], None]  # (model, info as load_model gives it, path)
    run: Callable[[str, torch.Tensor], torch.Tensor]  # (path, normalised images) -> logits, by the format's runtime
    checker: str  # what `run` runs the file in, as `resnets export` names it


FORMATS = {
    "onnx": Format(".onnx", _save_onnx, _run_onnx, RUN_ELSEWHERE[".onnx"]),
    "pt2": Format(".pt2", _save_pt2, _run_pt2, RUN_ELSEWHERE[".pt2"]),
    "safetensors": Format(".safetensors", _save_safetensors, _run_safetensors, "resnets.load_model"),
}
