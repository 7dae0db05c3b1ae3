"""Reproducible, resumable batches from a dataset held in memory or streamed from disk, for one or N processes."""

import hashlib
import math
from collections.abc import Iterator

import torch

from .arrays import ArrayDataset
from .augment import pad_crop_flip


def _generator(*key) -> torch.Generator:
    """A generator seeded from a tuple; hashing keeps e.g. (seed, epoch) and (seed, epoch, batch) apart."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


class BatchLoader:
    """Batches (uint8 images, int64 labels) of a dataset, optionally shuffled and augmented.

    The dataset is an ArrayDataset (in memory), a FolderDataset or an ImageNetFolder (decoded by `workers`
    processes). Fixed-size images are augmented here, whole batches at a time (`pad`, `flip`); with `scale`
    = (lo, hi) the ImageNet augmentation is done per image by the dataset, from parameters drawn here. Every
    random choice derives from (seed, epoch) for the order and (seed, epoch, batch) for the augmentation, never
    from state carried between batches, so `epoch(e, start=k)` reproduces batches k.. of `epoch(e)` exactly:
    resuming mid-epoch is bit-exact. Normalisation is left to the training loop, which does it on the device.

    With `world` processes, each step's batch_size x world images are drawn and augmented as one process would
    draw them, and process `rank` takes its batch_size slice: N processes together see exactly the batches of
    one process with N times the batch. Without drop_last (evaluation) nothing is padded: every image is in
    exactly one process's slice, and a process may get a smaller last batch or none.

    With `device`, a dataset held in memory is moved there once (unless it would take more than a quarter of a
    GPU's free memory) and every batch is gathered and augmented there, from the same random draws: the batches
    are those of the CPU, with no copy of images per step. Streamed datasets ignore it.
    """

    def __init__(self, ds, batch_size: int, *, shuffle: bool, pad: int = 0, flip: bool = False, scale=None,
                 seed: int = 0, drop_last: bool = False, workers: int = 0, rank: int = 0, world: int = 1,
                 device: torch.device | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self.ds, self.batch_size, self.shuffle = _resident(ds, device), batch_size, shuffle
        self.pad, self.flip, self.scale, self.seed, self.drop_last = pad, flip, scale, seed, drop_last
        self.workers, self.rank, self.world = workers, rank, world

    def __len__(self) -> int:
        n = len(self.ds) / (self.batch_size * self.world)
        return math.floor(n) if self.drop_last else math.ceil(n)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's batches start, start + 1, ... of epoch `epoch`."""
        if self.shuffle:
            order = torch.randperm(len(self.ds), generator=_generator("order", self.seed, epoch))
        else:
            order = torch.arange(len(self.ds))
        step = self.batch_size * self.world
        numbered = [(i, order[i * step:(i + 1) * step]) for i in range(start, len(self))]
        if self.scale:  # per-image ImageNet augmentation: the dataset gets (index, side, u, v, mirror) items
            numbered = [(i, _scale_crop_flip_items(index, self.scale, self.flip,
                                                   _generator("augment", self.seed, epoch, i))) for i, index in numbered]
        shares = [(i, batch[self._mine()]) for i, batch in numbered]
        shares = [(i, share) for i, share in shares if len(share)]  # evaluation: the last step may leave some none
        batches = self.ds.load_batches([share for _, share in shares], self.workers)
        for (i, _), (images, labels) in zip(shares, batches):
            if not self.scale and (self.pad or self.flip):
                whole = min(step, len(self.ds) - i * step)  # images in this step, all processes together
                images = pad_crop_flip(images, self.pad, self.flip, _generator("augment", self.seed, epoch, i),
                                       first=self.rank * self.batch_size, total=whole)
            yield images, labels

    def noise(self, epoch: int, batch: int, size: int) -> torch.Tensor:
        """Standard normal (b, size) for this process's images of batch `batch` of `epoch`: its rows of one draw
        for the whole step, as for the other augmentations."""
        return self._draw(torch.randn, "noise", epoch, batch, size)

    def uniform(self, epoch: int, batch: int, size: int) -> torch.Tensor:
        """Uniform in [0, 1), (b, size), drawn as `noise` is."""
        return self._draw(torch.rand, "uniform", epoch, batch, size)

    def _draw(self, draw, name: str, epoch: int, batch: int, size: int) -> torch.Tensor:
        whole = min(self.batch_size * self.world, len(self.ds) - batch * self.batch_size * self.world)
        return draw(whole, size, generator=_generator(name, self.seed, epoch, batch))[self._mine()]

    def _mine(self) -> slice:
        return slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)


def _resident(ds, device: torch.device | None):
    """`ds` with its arrays on `device` if it is held in memory and leaves the GPU's memory to the network."""
    if device is None or not isinstance(ds, ArrayDataset):
        return ds
    if device.type == "cuda" and ds.images.nbytes > torch.cuda.mem_get_info(device)[0] // 4:
        return ds
    return ds.to(device)


def _scale_crop_flip_items(index: torch.Tensor, scale, flip: bool, generator: torch.Generator) -> list[tuple]:
    """(index, shorter side, top, left, mirror) per image: side uniform in [lo, hi], crop position uniform."""
    n = len(index)
    sides = torch.randint(scale[0], scale[1] + 1, (n,), generator=generator)
    tops, lefts = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return list(zip(index.tolist(), sides.tolist(), tops.tolist(), lefts.tolist(), mirror.tolist()))
