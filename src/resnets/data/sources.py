"""Which dataset a path names, and the train / validation / test splits a run uses.

SOURCES is the table of dataset formats: the first entry that claims data.path reads it. A new format is a
loader returning `Dataset`s (the protocol below, which every loader's datasets satisfy) and one entry.
"""

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..distributed import local_world_size
from ..errors import UserError
from .arrays import ArrayDataset, match_classes, split_validation
from .cifar import CIFAR_FOLDERS, is_cifar, load_cifar
from .digits import load_digits
from .folders import FolderDataset, load_folder
from .imagenet import ImageNetFolder

DIGITS = "digits"
MEMORY_LIMIT = 4 << 30  # bytes of decoded uint8 images above which loader="auto" streams a folder
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


@runtime_checkable
class Dataset(Protocol):
    """What a loader returns and the rest uses: the training loop and BatchLoader (image_shape, classes,
    load_batches, sample), the held-out split and relabelling by class name (subset, labels). ArrayDataset holds
    the images in memory; FolderDataset and ImageNetFolder stream them from disk."""

    classes: list[str]  # label k is classes[k]
    labels: torch.Tensor  # int64 (N,)
    streamed: bool  # read from disk as batches need them: its items are files, some of which may prove unreadable

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image a batch holds (of every crop, for ImageNet-style folders)."""

    def __len__(self) -> int: ...

    def subset(self, index: torch.Tensor) -> "Dataset":
        """The images at `index`, in that order."""

    def listing(self) -> tuple[torch.Tensor, int]:
        """(each image's position in the list of files it was read from, the list's length, unreadable files
        included): what split_validation draws the held-out images from."""

    def for_evaluation(self) -> "Dataset":
        """The dataset as an evaluation reads it: an unreadable file counted out (label -1), never stood in for."""

    def load_batches(self, batches: list, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, int64 labels) for each batch of items: index tensors, or the (index, side, u, v, mirror)
        tuples of ImageNet training; `workers` decoding processes for streamed data."""

    def sample(self, n: int, workers: int = 0) -> ArrayDataset:
        """At most n images in memory, spread over the dataset: enough to estimate normalisation statistics."""


@dataclass(frozen=True)
class Source:
    """A dataset format: whether data.path is one (`claims`), and how to read its (train, test) splits."""

    claims: Callable[[str, Any], bool]  # (data.path, DataSection)
    load: Callable[[str, Any], tuple]  # (data.path, DataSection) -> (train, test or None: no test part)
    any_size: bool = False  # images of any size, which data.crop crops ImageNet-style


def _root(path: str) -> Path:
    return Path(path).expanduser()


def _claims_cifar(path: str, data) -> bool:
    return is_cifar(_root(path)) or (data.download and not _root(path).exists())  # download: fetched if missing


def _load_cifar(path: str, data) -> tuple:
    return load_cifar(_root(path), train=True, download=data.download), load_cifar(_root(path), train=False)


def _claims_archive(path: str, data) -> bool:
    return _root(path).is_file() and _root(path).name.lower().endswith(ARCHIVES)


def _refuse_archive(path: str, data) -> tuple:
    raise UserError(f"{_root(path)} is an archive but not CIFAR's (no {' or '.join(CIFAR_FOLDERS)} folder first in "
                    "it): extract it and set data.path to the folder of class folders")


def _claims_split(path: str, data) -> bool:
    return (_root(path) / "train").is_dir()


def _load_split(path: str, data) -> tuple:
    root = _root(path)
    val = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    train = _folder(root / "train", data)
    return train, val and _labelled_as(_folder(val, data), train.classes, val)


SOURCES = {
    # A name, not a path: the embedded set, even where a folder of that name lies in the working directory.
    "digits": Source(lambda path, data: path == DIGITS, lambda path, data: load_digits()),
    "CIFAR": Source(_claims_cifar, _load_cifar),
    "other archives": Source(_claims_archive, _refuse_archive),
    "train/val folders": Source(_claims_split, _load_split, any_size=True),
    # Whatever else exists; a file is refused by the folder's loader, saying what a folder should hold.
    "image folder": Source(lambda path, data: _root(path).exists(),
                           lambda path, data: (_folder(_root(path), data), None), any_size=True),
}


def default_workers(workers: int) -> int:
    """`workers`, or this process's share of the machine's cores (torchrun starts several per machine), at most 8."""
    share = (os.cpu_count() or 1) // local_world_size()
    return workers or max(1, min(8, share))


def _folder(path: Path, data):
    """The folder in memory or streamed, as data.loader says; ImageNet-style (any size, cropped) with data.crop."""
    if data.crop:
        return ImageNetFolder(path, data.crop, data.resize or data.crop)
    size = data.image_size or None
    if data.loader == "auto":
        streamed = FolderDataset(path, size)
        if len(streamed) * 3 * streamed.size**2 > MEMORY_LIMIT:
            return streamed
    elif data.loader == "stream":
        return FolderDataset(path, size)
    return load_folder(path, size, Path(data.cache_dir).expanduser() if data.cache_dir else None)


def load_splits(path: str, data) -> tuple:
    """(train, test) for a data path, read by the first of SOURCES that claims it; test is None when the path has
    no separate test/val part."""
    if not path:
        raise UserError("no data: set data.path to a CIFAR archive or folder, an image folder, or 'digits'")
    name, source = next(((name, s) for name, s in SOURCES.items() if s.claims(path, data)), (None, None))
    if source is None:
        raise UserError(f"data path {_root(path)} does not exist")
    if data.crop and not source.any_size:
        raise UserError(f"data.crop (ImageNet-style cropping) applies to image folders, not to {name}")
    return source.load(path, data)


def _labelled_as(val, classes: list[str], root: Path):
    """A validation folder labelled as the training folder is: class folders matched by name, not position."""
    unknown = [c for c in val.classes if c not in classes]
    if unknown:
        raise UserError(f"{root} has class folders that training lacks ({', '.join(unknown[:5])}); remove them")
    missing = [c for c in classes if c not in val.classes]
    if missing:
        warnings.warn(f"{root} has no images of {len(missing)} of the {len(classes)} classes "
                      f"({', '.join(missing[:5])}): their validation error is not measured", stacklevel=2)
    return match_classes(val, classes)


def load_train_val(data) -> tuple:
    """The training set and the set validated on, as a DataSection asks."""
    train, test = load_splits(data.path, data)
    if len(train.classes) < 2:  # a network of one output learns nothing (its loss is 0 from the first step)
        raise UserError(f"{data.path} holds one class ({train.classes[0]}); a classifier needs two or more: point "
                        "data.path at the folder whose subfolders are the classes")
    if data.val_split:
        train, test = split_validation(train, data.val_split, data.split_seed)
    elif test is None:
        raise UserError(f"{data.path} has no val/ or test/ part; hold out training images with data.val_split=N")
    return train, test.for_evaluation()


def load_eval_set(path: str, data):
    """What `resnets eval --data PATH` measures: the training images data.val_split holds out (the ones a run with
    the same data.val_split and data.split_seed validated on), else the test split, or a plain folder as a whole."""
    train, test = load_splits(path, data)
    if data.val_split:
        test = split_validation(train, data.val_split, data.split_seed)[1]
    return (test if test is not None else train).for_evaluation()

