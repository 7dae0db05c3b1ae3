"""Classify image files with a trained network, preprocessed exactly as its training data was.

Each file is decoded as training folders decode theirs (data.decode.decode_rgb), then brought to the network's
input by the preprocessing that travels with the weights (preprocessing.Preprocessing): channels,
shorter side resized, centre crop, normalisation. A file that cannot be read is reported and skipped; the others
are still classified.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ..data.decode import MAX_PIXELS, ImageError, decode_rgb
from ..data.folders import IMAGE_EXTENSIONS
from ..errors import UserError
from ..preprocessing import Preprocessing
from .inference import MODES, auto_mode, prepare


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Files to classify: folders searched recursively for IMAGE_EXTENSIONS (dot-files and dot-folders skipped),
    files named explicitly taken whatever their extension (and reported later if missing or unreadable)."""
    inputs, files = [Path(item) for item in inputs], []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        else:
            files.append(item)
    if not files:
        raise UserError(f"no image files ({' '.join(sorted(IMAGE_EXTENSIONS))}) in {', '.join(map(str, inputs))}")
    return files


def predict(model, info: dict, paths: list[Path], top_k: int = 5, batch_size: int = 64,
            max_pixels: int = MAX_PIXELS, mode: str = "auto") -> Iterator[dict]:
    """For each path, in order: {"path", "top": [{"class", "probability"}, ...] best first} or {"path", "error"}.

    `model` and `info` as `resnets.load_model` returns them; files are decoded and classified `batch_size`
    at a time on the model's device, run as `resnets.serving.inference.prepare(model, mode)` runs them; "auto" is
    `resnets.serving.inference.auto_mode` of the device (int8 needs calibration images, so it is not offered here).
    """
    if top_k < 1 or batch_size < 1:
        raise UserError(f"top-k and batch size must be at least 1, not {top_k} and {batch_size}")
    if mode in MODES and MODES[mode].calibrated:
        raise UserError(f"{mode} needs calibration images: use resnets.serving.inference.prepare(model, {mode!r}, "
                        "calibration)")
    pre, classes = info["preprocessing"], info["classes"]
    device = next(model.parameters()).device
    mode = auto_mode(device) if mode == "auto" else mode
    run = prepare(model, mode)
    for results, images in read_batches(paths, pre, batch_size, max_pixels):
        if images:
            x = pre.normalize(torch.stack(images).to(device))  # (B, C, S, S) float32
            n = len(x)
            if run.compiled and n < batch_size:  # one input shape, one compilation: pad the last batch
                x = torch.cat([x, x[:1].expand(batch_size - n, *x.shape[1:])])
            top = run(x)[:n].softmax(1).topk(min(top_k, len(classes)), 1)
            found = iter(zip(top.values.tolist(), top.indices.tolist()))
            for result in results:
                if "error" not in result:
                    probs, index = next(found)
                    result["top"] = [{"class": classes[i], "probability": p} for p, i in zip(probs, index)]
        yield from results


def read_batches(paths: list[Path], pre: Preprocessing, batch_size: int,
                 max_pixels: int = MAX_PIXELS) -> Iterator[tuple[list[dict], list[torch.Tensor]]]:
    """`batch_size` files at a time: a result per file, {"path"} or {"path", "error"} if it cannot be read, and
    the uint8 (C, S, S) images of those read, preprocessed up to the normalisation (pre.crop). The one reader of
    predict and embed."""
    for start in range(0, len(paths), batch_size):
        results, images = [], []
        for path in paths[start: start + batch_size]:
            results.append({"path": str(path)})
            try:
                images.append(pre.crop(decode_rgb(path, max_pixels)))
            except ImageError as e:
                results[-1]["error"] = str(e)
        yield results, images
