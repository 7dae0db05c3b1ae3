"""Classify image files with a trained network, preprocessed exactly as its training data was.

Each file is decoded by Pillow into the network's channels (1: "L", 3: "RGB"), its shorter side resized to
preprocessing["resize"], the centre input_size x input_size square taken, and normalised as in training.
A file that cannot be read is reported and skipped; the others are still classified.
"""

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data import normalize
from ..data.folders import IMAGE_EXTENSIONS, MAX_PIXELS, resize_center_crop, to_mode
from ..errors import UserError, first_line
from .inference import MODES, auto_mode, prepare


class ImageError(Exception):
    """One file that cannot be classified: its one-line reason."""


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


@contextlib.contextmanager
def _pillow():
    """Pillow with its own pixel limit off (read_image checks the size, with a clearer message) and without its
    warning about palette images with a transparent colour (whose alpha is dropped anyway)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def read_image(path: str | Path, channels: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """(channels, H, W) uint8 of an image file in any mode Pillow reads; ImageError with the reason if not."""
    try:
        with _pillow(), Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > max_pixels:  # before a single pixel is decoded
                raise ImageError(f"{width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
                                 "(--max-pixels): refused as a possible decompression bomb")
            image.load()  # decodes now: a truncated file fails here, not later
            image = to_mode(image, "L" if channels == 1 else "RGB")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a folder") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (or a format Pillow cannot read)") from None
    except Exception as e:  # truncated or damaged data; whatever a decoder raises, it is this file's problem
        raise ImageError(f"unreadable image ({first_line(e, 200)})") from None
    pixels = torch.from_numpy(np.array(image))  # (H, W) or (H, W, 3)
    return pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


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
            x = normalize(torch.stack(images).to(device), pre["mean"], pre["std"])  # (B, C, S, S) float32
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


def read_batches(paths: list[Path], pre: dict, batch_size: int,
                 max_pixels: int = MAX_PIXELS) -> Iterator[tuple[list[dict], list[torch.Tensor]]]:
    """`batch_size` files at a time: a result per file, {"path"} or {"path", "error"} if it cannot be read, and
    the uint8 (C, S, S) images of those read, preprocessed as in training up to the normalisation (resize to
    pre["resize"], centre input_size crop). The one reader of predict and embed."""
    for start in range(0, len(paths), batch_size):
        results, images = [], []
        for path in paths[start: start + batch_size]:
            results.append({"path": str(path)})
            try:
                images.append(resize_center_crop(read_image(path, pre["in_channels"], max_pixels), pre["resize"],
                                                 pre["input_size"]))
            except ImageError as e:
                results[-1]["error"] = str(e)
        yield results, images
