"""Batched augmentation and normalisation of uint8 image tensors."""

import torch
import torch.nn.functional as F

from ..errors import UserError
from .arrays import ArrayDataset, to_device


def pad_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator, first: int = 0,
                  total: int | None = None) -> torch.Tensor:
    """The paper's CIFAR augmentation for a whole (B, C, H, W) batch at once.

    Zero-pads `pad` pixels on each side, takes a random H x W crop per image (offsets uniform in [0, 2*pad])
    and, if `flip`, mirrors each image left-right with probability 1/2. Draws, in this order, `total` (default B)
    row offsets, column offsets, then flip decisions from `generator` and uses those from `first` on, so a
    generator state fixes the result, and B images of a larger batch drawn at once get their own share.
    """
    if pad == 0 and not flip:
        return images
    b, _, h, w = images.shape
    n, mine = total or b, slice(first, first + b)
    g = generator.device  # draw where the generator lives, then index where the images live
    rows = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=g)[mine] + torch.arange(h, device=g)
    cols = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=g)[mine] + torch.arange(w, device=g)
    if flip:
        mirror = (torch.rand(n, 1, generator=generator, device=g) < 0.5)[mine]
        cols = torch.where(mirror, cols.flip(1), cols)  # reading columns right to left mirrors the crop
    rows, cols = to_device(rows, images.device), to_device(cols, images.device)
    batch = torch.arange(b, device=images.device)[:, None, None]
    padded = F.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C): gather whole pixels
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, side: int, where: torch.Tensor) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) on a normalised (B, C, H, W) batch: a side x side square of each image set to
    0, the mean, centred at (where[:, 0] x H, where[:, 1] x W) for (B, 2) draws in [0, 1); a square across the
    border keeps its part inside, as theirs does."""
    h, w = x.shape[-2:]
    top = (where[:, :1] * h).long() - side // 2  # (B, 1)
    left = (where[:, 1:] * w).long() - side // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top.to(x.device)) & (rows < top.to(x.device) + side)  # (B, H)
    in_cols = (cols >= left.to(x.device)) & (cols < left.to(x.device) + side)  # (B, W)
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


def normalize(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """float32 (x / 255 - mean) / std; mean and std broadcast against (C, H, W)."""
    x = images_uint8.float().div_(255)
    return x.sub_(mean.to(x.device)).div_(std.to(x.device))


def _channel_moments(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and E[x^2] of uint8 images in [0, 1], in float64, chunk by chunk to bound memory."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        x = part.double() / 255
        total += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    return total / count, squares / count


def normalization_stats(ds: ArrayDataset, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) for `normalize`, computed on `ds` (use the training split only).

    "pixel_mean": the paper's per-pixel mean subtraction, mean is the (C, H, W) mean image, std is 1.
    "channel": per-channel mean and standard deviation, shapes (C, 1, 1).
    """
    c = ds.images.shape[1]
    if mode == "pixel_mean":
        mean = ds.images.sum(0, dtype=torch.float64) / (255 * len(ds))
        return mean.float(), torch.ones(c, 1, 1)
    if mode == "channel":
        mean, mean_sq = _channel_moments(ds.images)
        std = (mean_sq - mean.square()).clamp_min(0).sqrt()
        return mean.float().view(c, 1, 1), std.float().view(c, 1, 1)
    raise UserError(f"unknown normalisation {mode!r}; use pixel_mean or channel")
