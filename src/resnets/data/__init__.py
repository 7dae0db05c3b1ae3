from .augment import normalization_stats, normalize, pad_crop_flip
from .datasets import (
    ArrayDataset,
    FolderDataset,
    load_cifar,
    load_digits,
    load_folder,
    scan_folder,
    split_validation,
)
from .loader import InMemoryLoader

__all__ = [
    "ArrayDataset",
    "FolderDataset",
    "InMemoryLoader",
    "load_cifar",
    "load_digits",
    "load_folder",
    "normalization_stats",
    "normalize",
    "pad_crop_flip",
    "scan_folder",
    "split_validation",
]

from .sources import load_eval_set, load_splits, load_train_val  # noqa: E402

__all__ += ["load_eval_set", "load_splits", "load_train_val"]
