"""Which dataset a path names, and the train / validation / test splits a run uses."""

import os
import warnings
from pathlib import Path

from ..distributed import local_world_size
from ..errors import UserError
from .arrays import match_classes, split_validation
from .cifar import load_cifar
from .digits import load_digits
from .folders import FolderDataset, load_folder
from .imagenet import ImageNetFolder

DIGITS = "digits"
MEMORY_LIMIT = 4 << 30  # bytes of decoded uint8 images above which loader="auto" streams a folder


def _is_cifar(path: Path) -> bool:
    names = {path.name} | ({p.name for p in path.iterdir()} if path.is_dir() else set())
    cifar = {"cifar-10-python.tar.gz", "cifar-100-python.tar.gz", "cifar-10-batches-py", "cifar-100-python",
             "batches.meta", "meta", "data_batch_1"}
    return bool(names & cifar) or path.name.endswith((".tar.gz", ".tgz"))


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
    """(train, test) for a data path; test is None when the path has no separate test/val part."""
    if data.crop and (path == DIGITS or data.download or (path and _is_cifar(Path(path).expanduser()))):
        raise UserError("data.crop (ImageNet-style cropping) applies to image folders, not to digits or CIFAR")
    if path == DIGITS:
        return load_digits()
    if not path:
        raise UserError("no data: set data.path to a CIFAR archive or folder, an image folder, or 'digits'")
    root = Path(path).expanduser()
    if data.download and not root.exists():
        return load_cifar(root, train=True, download=True), load_cifar(root, train=False)
    if not root.exists():
        raise UserError(f"data path {root} does not exist")
    if _is_cifar(root):
        return load_cifar(root, train=True), load_cifar(root, train=False)
    if (root / "train").is_dir():
        val = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
        train = _folder(root / "train", data)
        return train, val and _labelled_as(_folder(val, data), train.classes, val)
    return _folder(root, data), None


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
        return split_validation(train, data.val_split, data.split_seed)
    if test is None:
        raise UserError(f"{data.path} has no val/ or test/ part; hold out training images with data.val_split=N")
    return train, test


def load_eval_set(path: str, data):
    """What `resnets eval --data PATH` measures: the training images data.val_split holds out (the ones a run with
    the same data.val_split and data.split_seed validated on), else the test split, or a plain folder as a whole."""
    train, test = load_splits(path, data)
    if data.val_split:
        return split_validation(train, data.val_split, data.split_seed)[1]
    return test if test is not None else train

