"""Features for other tools: each image's pooled features, the input of the network's classifier.

Images are read exactly as `resnets predict` reads them (predict.read_batches: the same decoding, preprocessing
and one-line reasons for files that cannot be read), and run in fp32 through forward_features, then the global
average pool (ResNet.forward_head with pre_logits).
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import files
from ..data.decode import MAX_PIXELS
from ..errors import UserError
from .predict import read_batches


def embed(model, info: dict, paths: list[Path], batch_size: int = 64,
          max_pixels: int = MAX_PIXELS) -> Iterator[dict]:
    """For each path, in order: {"path", "features": float32 (num_features,) tensor} or {"path", "error"}.

    `model` and `info` as `resnets.load_model` returns them; `batch_size` files at a time on the model's device.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    pre = info["preprocessing"]
    device = next(model.parameters()).device
    model.eval()
    for results, images in read_batches(paths, pre, batch_size, max_pixels):
        if images:
            x = pre.normalize(torch.stack(images).to(device))
            with torch.inference_mode():
                features = iter(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
            for result in results:
                if "error" not in result:
                    result["features"] = next(features)
        yield from results


def save_npy(results: list[dict], width: int, out: str | Path) -> np.ndarray:
    """The (files, width) float32 matrix of `results` written to `out` as .npy: row i is the i-th file's features,
    a row of NaN for a file that could not be read, so rows never shift against the files."""
    rows = np.full((len(results), width), np.nan, dtype=np.float32)
    for row, result in zip(rows, results):
        if "features" in result:
            row[:] = result["features"].numpy()
    with files.replacing(out) as tmp, open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, rows)
    return rows
