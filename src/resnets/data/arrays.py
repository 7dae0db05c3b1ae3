"""A whole dataset in memory, the held-out split carved from it, and relabelling by class name."""

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError


@dataclass
class ArrayDataset:
    """A whole dataset in memory: uint8 (N, C, H, W) images, int64 (N,) labels, class names by label."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    streamed = False  # every image is here, decoded
    # Positions, in the list of files the images were read from, of the files that could not be read and are not
    # here (a folder's): split_validation draws from the whole list, as a streamed folder of the same files does.
    unread: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def listing(self) -> tuple[torch.Tensor, int]:
        """(each image's position in the list of files it was read from, the length of that list)."""
        listed = len(self) + len(self.unread)
        read = torch.ones(listed, dtype=torch.bool)
        read[list(self.unread)] = False
        return read.nonzero()[:, 0], listed

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, index: torch.Tensor) -> "ArrayDataset":
        return ArrayDataset(self.images[index].contiguous(), self.labels[index], self.classes)

    def to(self, device: torch.device) -> "ArrayDataset":
        """The same images and labels held on `device` (not copied if they are there already)."""
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def load_batches(self, batches: list[torch.Tensor], workers: int = 0):
        """(images, labels) for each index tensor in `batches`, on the images' device; `workers` matters only for
        streamed data."""
        for index in batches:
            index = to_device(index, self.images.device)
            yield self.images[index], self.labels[index]

    def sample(self, n: int, workers: int = 0) -> "ArrayDataset":
        """At most n images to compute normalisation statistics on: all of them, since they are in memory."""
        return self

    def for_evaluation(self) -> "ArrayDataset":
        return self  # the unreadable files are not here to count out


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, from the CPU to a GPU without waiting for it: a plain copy there first waits for all the
    work queued on the GPU, so each batch's indices and crop offsets would stall the training step."""
    if t.device.type != "cpu" or device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)  # pinned: the copy is queued, the CPU goes on


def _array_dataset(images: np.ndarray, labels, classes: list[str]) -> ArrayDataset:
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        torch.as_tensor(np.asarray(labels), dtype=torch.int64),
        classes,
    )


def split_validation(ds, n: int, seed: int = 0):
    """(train, held-out) where held-out is the last `n` of a permutation, seeded with `seed`, of the files the
    dataset was read from (ds.listing()), readable or not.

    The same (n, seed) holds out the same images on every run (with the same torch), as the paper's 45k/5k
    CIFAR-10 analysis needs, whichever loader reads a folder: one in memory has left its unreadable files out
    already, a streamed one meets them later (and counts them out of an evaluation, for_evaluation). Drawn from
    the readable files alone, the two would hold out different images. Both parts keep the dataset's original
    order. Works for any dataset with `subset` and `listing` (in memory or streamed).
    """
    position, listed = ds.listing()
    if not 0 < n < listed:
        raise UserError(f"the validation size must be between 1 and {listed - 1}, not {n}")
    order = torch.randperm(listed, generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(listed, dtype=torch.bool)
    held[order[-n:]] = True
    mine = held[position]
    return ds.subset(mine.logical_not().nonzero()[:, 0]), ds.subset(mine.nonzero()[:, 0])


def match_classes(ds, classes: list[str]):
    """`ds` relabelled into the class order of a checkpoint (or a training set), matching class names."""
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise UserError(f"classes {', '.join(unknown[:5])} are not among the model's {len(classes)} classes")
    relabelled = copy.copy(ds)
    relabelled.labels = torch.tensor([classes.index(c) for c in ds.classes])[ds.labels]
    relabelled.classes = list(classes)
    return relabelled
