from .arrays import ArrayDataset, match_classes, split_validation
from .augment import cutout, normalization_stats, normalize, pad_crop_flip
from .cifar import load_cifar
from .digits import load_digits
from .folders import FolderDataset, load_folder, scan_folder
from .imagenet import ImageNetFolder, lighting
from .loader import BatchLoader
from .sources import SOURCES, Dataset, default_workers, load_eval_set, load_splits, load_train_val

__all__ = [
    "SOURCES", "ArrayDataset", "BatchLoader", "Dataset", "FolderDataset", "ImageNetFolder", "cutout", "default_workers",
    "lighting", "load_cifar", "load_digits", "load_eval_set", "load_folder", "load_splits", "load_train_val",
    "match_classes", "normalization_stats", "normalize", "pad_crop_flip", "scan_folder", "split_validation",
]
