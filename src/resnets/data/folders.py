"""Image folders (root/<class>/<image>): decoded into memory with a cache, or streamed from disk."""

import copy
import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from .. import files
from ..errors import UserError
from .arrays import ArrayDataset
from .decode import ImageError, decode_rgb

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def scan_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files of an ImageNet-style root/<class>/<image> tree: (paths, labels, classes sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder of class folders" if root.exists() else "does not exist"
        raise UserError(f"image folder {root} {what}; expected root/<class>/<image> files")
    # Dot-folders and dot-files are tool debris (.ipynb_checkpoints, macOS ._x.jpg), never classes or images.
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class folders; expected root/<class>/<image> files")
    files = {
        name: sorted(p for p in (root / name).rglob("*")
                     if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
        for name in classes
    }
    # A class without images would be an output the network never sees an example of.
    empty = [str(root / name) for name in classes if not files[name]]
    classes = [name for name in classes if files[name]]
    if not classes:
        raise UserError(f"no images ({' '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders of {root}")
    if empty:
        warnings.warn(f"skipped {len(empty)} class folder(s) without images: {', '.join(empty[:3])}"
                      + (", ..." if len(empty) > 3 else ""), stacklevel=2)
    paths = [p for name in classes for p in files[name]]
    labels = [label for label, name in enumerate(classes) for _ in files[name]]
    return paths, labels, classes


def resize_center_crop(image: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """Shorter side resized to `resize`, then the centre `size` x `size` square: how every image of any size is
    brought to the network's input (fixed-size folders with resize = size; ImageNet's 256 then 224)."""
    if resize == size and image.shape[-2:] == (size, size):
        return image  # nothing to do (and no resampling of pixels that already fit)
    return TF.center_crop(TF.resize(image, [resize], antialias=True), [size, size])


def _warn_skipped(skipped: dict[str, str], listed: int, root: Path) -> None:
    """One warning for the files of a folder left out, by kind (ImageError.kind), the first few of each named."""
    if skipped:
        kinds = {}
        for path, kind in skipped.items():
            kinds.setdefault(kind, []).append(path)
        said = "; ".join(f"{len(paths)} {kind}: {', '.join(paths[:3])}"
                         + (f" and {len(paths) - 3} more" if len(paths) > 3 else "") for kind, paths in kinds.items())
        warnings.warn(f"skipped {len(skipped)} of the {listed} image files in {root}: {said}", stacklevel=3)


def _decode_all(
    paths: list[Path], labels: list[int], image_size: int | None
) -> tuple[list[torch.Tensor], list[int], dict[str, str]]:
    """(images, labels, {path: ImageError.kind} of the files skipped) for the readable files among `paths`."""
    images, kept, skipped = [], [], {}
    # disable=None: tqdm shows the bar only on a terminal; small folders decode too fast to need one.
    bar = tqdm(zip(paths, labels), total=len(paths), desc="decoding images", unit="img",
               disable=None if len(paths) >= 1000 else True)
    for path, label in bar:
        try:
            image = decode_rgb(path)
        except ImageError as e:  # this file cannot be used; the others still are
            skipped[str(path)] = e.kind
            continue
        if image_size:
            image = resize_center_crop(image, image_size, image_size)
        elif not images:
            first = path
        elif image.shape != images[0].shape:
            raise UserError(
                f"{path} is {image.shape[2]}x{image.shape[1]} but {first} is {images[0].shape[2]}x"
                f"{images[0].shape[1]}; pass an image size to resize them all"
            )
        images.append(image)
        kept.append(label)
    return images, kept, skipped


def _cache_file(cache_dir: Path, root: Path, paths: list[Path], image_size: int | None) -> Path:
    """Where the decoded folder is cached; the name changes whenever the files or the size asked change."""
    stats = [p.stat() for p in paths]
    fingerprint = json.dumps([
        str(root.resolve()), len(paths), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats),
        image_size, [str(p.relative_to(root)) for p in paths],  # catches files renamed or moved between classes
    ])
    return cache_dir / f"{root.name}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}.safetensors"


def _read_cache(path: Path) -> tuple[ArrayDataset, dict[str, str]] | None:
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        ds = ArrayDataset(tensors["images"], tensors["labels"], json.loads(meta["classes"]))
        skipped = json.loads(meta["skipped"])
        # Caches written before the kinds were kept list the paths alone.
        return ds, skipped if isinstance(skipped, dict) else dict.fromkeys(skipped, ImageError.kind)
    except Exception:  # missing or damaged: it is only a cache, so decode again and (re)write it
        return None


def _write_cache(path: Path, ds: ArrayDataset, skipped: dict[str, str]) -> None:
    """The decoded folder, through the one atomic writer: a crash or a concurrent run never leaves half a cache
    under the real name. A disk that refuses it costs only the next decoding, so that is a warning."""
    try:
        with files.replacing(path) as tmp:
            save_file({"images": ds.images, "labels": ds.labels}, tmp,
                      metadata={"classes": json.dumps(ds.classes), "skipped": json.dumps(skipped)})
    except files.WriteFailure as e:
        warnings.warn(f"cannot cache the decoded images in {e.path} ({e.error.strerror}); going on without (the "
                      "folder is decoded again next time; data.cache_dir= turns the cache off)", stacklevel=3)


def load_folder(root: str | Path, image_size: int | None = None, cache_dir: Path | None = None) -> ArrayDataset:
    """Decode a whole root/<class>/<image> folder into memory (fast path for small images such as CIFAR jpgs).

    Without `image_size` all images must share one size; with it each is resized (shorter side) and
    centre-cropped to a square. Unreadable files are skipped and reported in a warning. With `cache_dir`
    the decoded tensors are saved there and reused while the folder's files stay the same.
    """
    root = Path(root)
    paths, labels, classes = scan_folder(root)
    cache = _cache_file(Path(cache_dir), root, paths, image_size) if cache_dir is not None else None
    cached = _read_cache(cache) if cache is not None else None
    if cached is not None:
        ds, skipped = cached
    else:
        images, kept, skipped = _decode_all(paths, labels, image_size)
        if not images:
            raise UserError(f"none of the {len(paths)} image files under {root} could be read")
        ds = ArrayDataset(torch.stack(images), torch.tensor(kept, dtype=torch.int64), classes)
        if cache is not None:
            _write_cache(cache, ds, skipped)
    _warn_skipped(skipped, len(paths), root)
    return dataclasses.replace(ds, unread=tuple(i for i, p in enumerate(paths) if str(p) in skipped))


class StreamedFolder(torch.utils.data.Dataset):
    """A root/<class>/<image> folder read from disk batch by batch by DataLoader workers, for folders too big to
    hold in memory. Subclasses say what an item becomes (`__getitem__`): a tuple (image or views, label,
    (path, ImageError.kind) of each file met that cannot be used), which the workers decode and `load_batches`
    reports on.

    Such a file is reported by path (a warning in the main process, once per file, with the running count) and
    never ends a run: the next readable file stands in for it (`_first_readable`), or an item counts it out with
    label -1 (`_read`).
    """

    streamed = True  # every file listed is an item: the unreadable ones among them are found as they are met

    def __init__(self, root: str | Path):
        self.root = Path(root)
        paths, labels, self.classes = scan_folder(self.root)
        # Bytes in one numpy array, not a list of Path objects: workers forked from this process then share the
        # pages instead of copying them (reading a Python object writes its reference count).
        self.paths = np.array([os.fsencode(p) for p in paths])
        self.labels = torch.tensor(labels)
        self.unreadable: set[str] = set()  # shared by copies (subset, with_protocol): each file reported once
        self._loader = None

    def __len__(self) -> int:
        return len(self.paths)

    def listing(self) -> tuple[torch.Tensor, int]:
        """(each item's position in the list of files, its length): every file is an item, readable or not."""
        return torch.arange(len(self)), len(self)

    def _read(self, index: int) -> tuple[torch.Tensor | None, int, tuple]:
        """(image, label, ()) of the file at `index`, or (None, -1, ((its path, why),)) if it cannot be used:
        counted out of an evaluation, which a stand-in would score twice."""
        path = os.fsdecode(self.paths[index])
        try:
            return decode_rgb(path), int(self.labels[index]), ()
        except ImageError as e:
            return None, -1, ((path, e.kind),)

    def _first_readable(self, index: int) -> tuple[torch.Tensor, int, tuple]:
        """(image, label, (path, why) of each file passed over) of the first readable file from `index` on,
        wrapping around."""
        skipped = []
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            path = os.fsdecode(self.paths[i])
            try:
                return decode_rgb(path), int(self.labels[i]), tuple(skipped)
            except ImageError as e:  # this file cannot be used: the next one stands in
                skipped.append((path, e.kind))
        raise UserError(f"none of the image files under {self.root} could be read")

    def subset(self, index: torch.Tensor) -> "StreamedFolder":
        part = copy.copy(self)
        part.paths, part.labels = self.paths[index.numpy()], self.labels[index]
        return part

    def load_batches(self, batches: list, workers: int = 0):
        """(images, labels) for each list of items in `batches`, decoded by `workers` persistent processes.

        One pass at a time per dataset object: a new pass takes over the workers of an unfinished one.
        """
        loader = self._dataloader(workers)
        loader.batch_sampler.batches = [b.tolist() if torch.is_tensor(b) else b for b in batches]
        for images, labels, unreadable in loader:
            for met in unreadable:
                for path, kind in met:
                    self._report(path, kind)
            yield images, labels

    def _dataloader(self, workers: int) -> torch.utils.data.DataLoader:
        # One DataLoader for the dataset's life: its workers stay up from epoch to epoch (persistent_workers);
        # each pass hands the sampler the pass's batches. It reads a copy of the dataset, which has no loader: a
        # dataset <-> loader reference cycle would leave stopping the workers to the garbage collector, which may
        # run it inside a freshly forked worker; without one they stop as soon as the dataset is dropped. Its own
        # generator: a DataLoader draws its workers' seed on every pass, and from the global one that would move
        # the training run's random stream (dropout, resume) with the number of passes.
        if self._loader is None or self._loader.num_workers != workers:
            self._loader = torch.utils.data.DataLoader(
                copy.copy(self), batch_sampler=_Batches(), num_workers=workers, collate_fn=_collate,
                pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, generator=torch.Generator())
        return self._loader

    def _report(self, path: str, kind: str) -> None:
        if path not in self.unreadable:
            self.unreadable.add(path)
            warnings.warn(f"skipped image {path}: {kind} ({len(self.unreadable)} so far in {self.root})",
                          stacklevel=3)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loader": None}  # copies (copy.copy) and spawned workers get no loader

    def sample(self, n: int, workers: int = 0) -> ArrayDataset:
        """n images spread over the folder, decoded by `workers` processes, in memory: enough to estimate
        normalisation statistics. Those counted out (label -1) are left out."""
        index = torch.linspace(0, len(self) - 1, min(n, len(self))).long()
        images, labels = map(torch.cat, zip(*self.load_batches(index.split(256), workers)))
        readable = labels >= 0
        return ArrayDataset(images[readable], labels[readable], self.classes)


class _Batches:
    """A batch sampler whose batches are set before each pass (so one DataLoader, one set of workers, serves all)."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(items: list[tuple]) -> tuple:
    images, labels, unreadable = zip(*items)
    # Multi-scale views differ in size from image to image: they stay a list (of lists).
    images = torch.stack(images) if isinstance(images[0], torch.Tensor) else list(images)
    return images, torch.tensor(labels), list(unreadable)


class FolderDataset(StreamedFolder):
    """A streamed folder of images brought to one size: items are (uint8 (3, S, S) image, label, unreadable
    paths met), each image resized (shorter side) and centre-cropped to S, with S = `image_size` or the first
    image's width. Augmentation is not done here but on whole batches by the loader, exactly as for in-memory
    data, so both paths train identically. An unreadable file is stood in for by the next readable one in
    training, and counted out (label -1) of an evaluation (for_evaluation).
    """

    def __init__(self, root: str | Path, image_size: int | None = None):
        super().__init__(root)
        self.size = image_size or self._first_readable(0)[0].shape[-1]
        self.evaluating = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, self.size, self.size

    def for_evaluation(self) -> "FolderDataset":
        """This folder as evaluation reads it: each image once, an unreadable one counted out, none standing in."""
        part = copy.copy(self)
        part.evaluating, part._loader = True, None
        return part

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, tuple]:
        if self.evaluating:
            image, label, skipped = self._read(index)
            if image is None:  # a placeholder keeps the batch's shape
                return torch.zeros(self.image_shape, dtype=torch.uint8), label, skipped
        else:
            image, label, skipped = self._first_readable(index)
        return resize_center_crop(image, self.size, self.size), label, skipped
