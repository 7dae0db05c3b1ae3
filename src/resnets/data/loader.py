"""Reproducible, resumable batches from a dataset held in memory or streamed from disk."""

import hashlib
import math
from collections.abc import Iterator

import torch

from .augment import pad_crop_flip


def _generator(*key) -> torch.Generator:
    """A generator seeded from a tuple; hashing keeps e.g. (seed, epoch) and (seed, epoch, batch) apart."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


class BatchLoader:
    """Batches (uint8 images, int64 labels) of a dataset, optionally shuffled and augmented.

    The dataset is an ArrayDataset (in memory) or a FolderDataset (decoded by `workers` processes); either
    way the augmentation runs here, on whole batches. Every random choice derives from (seed, epoch) for the
    order and (seed, epoch, batch) for the augmentation, never from state carried between batches, so
    `epoch(e, start=k)` reproduces batches k.. of `epoch(e)` exactly: resuming mid-epoch is bit-exact.
    Normalisation is left to the training loop, which does it on the device.
    """

    def __init__(self, ds, batch_size: int, *, shuffle: bool, pad: int = 0, flip: bool = False,
                 seed: int = 0, drop_last: bool = False, workers: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.ds, self.batch_size, self.shuffle = ds, batch_size, shuffle
        self.pad, self.flip, self.seed, self.drop_last, self.workers = pad, flip, seed, drop_last, workers

    def __len__(self) -> int:
        n = len(self.ds) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start, start + 1, ... of epoch `epoch`."""
        if self.shuffle:
            order = torch.randperm(len(self.ds), generator=_generator("order", self.seed, epoch))
        else:
            order = torch.arange(len(self.ds))
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(start, len(self))]
        for i, (images, labels) in enumerate(self.ds.load_batches(batches, self.workers), start):
            if self.pad or self.flip:
                images = pad_crop_flip(images, self.pad, self.flip, _generator("augment", self.seed, epoch, i))
            yield images, labels
