"""Datasets as uint8 tensors in memory (digits, CIFAR, image folders) plus a streaming folder dataset."""

import hashlib
import io
import json
import os
import pickle
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from ..errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class ArrayDataset:
    """A whole dataset in memory: uint8 (N, C, H, W) images, int64 (N,) labels, class names by label."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ArrayDataset":
        return ArrayDataset(self.images[index].contiguous(), self.labels[index], self.classes)


def _array_dataset(images: np.ndarray, labels, classes: list[str]) -> ArrayDataset:
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        torch.as_tensor(np.asarray(labels), dtype=torch.int64),
        classes,
    )


# ---------------------------------------------------------------------------------------------- digits


def load_digits() -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's bundled 8x8 digits (no download) as (train 1437, test 360).

    The split is fixed so results are comparable everywhere: stratified
    `train_test_split(test_size=360, random_state=0)`. Pixel values 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # sklearn is slow to import; only pay when used
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255 / 16))[:, None]  # (N, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=360, random_state=0, stratify=bunch.target
    )
    classes = [str(d) for d in range(10)]
    return _array_dataset(x_train, y_train, classes), _array_dataset(x_test, y_test, classes)


# ----------------------------------------------------------------------------------------------- CIFAR

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_ARCHIVES = {  # archive name -> md5 published on the CIFAR page
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
CIFAR_FOLDERS = ("cifar-10-batches-py", "cifar-100-python")
# (train files, test files, meta file, label key, label-names key) for CIFAR-10 and CIFAR-100.
CIFAR10_LAYOUT = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names")
CIFAR100_LAYOUT = (["train"], ["test"], "meta", "fine_labels", "fine_label_names")


def _numpy_reconstruct():
    try:  # numpy >= 2 moved the implementation to numpy._core; old pickles still name numpy.core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# The only globals a CIFAR batch refers to: what rebuilds a numpy array. Anything else (os.system, open, ...)
# would be a crafted file trying to run code while unpickling, so it is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[module, name]
        except KeyError:
            raise UserError(
                f"refusing to unpickle {module}.{name}: this is not a genuine CIFAR batch file; "
                "download the official archive again"
            ) from None


def _unpickle(blob: bytes, name: str) -> dict:
    try:
        # The batches are Python 2 pickles; latin1 turns their str into str and keeps numpy's raw bytes intact.
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read CIFAR file {name} ({e}); download the official archive again") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR file {name} does not hold a dict; download the official archive again")
    return obj


def _locate_cifar(path: Path) -> Path:
    """The archive or extracted folder that `path` is or contains."""
    if path.is_file() or path.name in CIFAR_FOLDERS:
        return path
    for name in (*CIFAR_FOLDERS, *CIFAR_ARCHIVES):
        if (path / name).exists():
            return path / name
    raise UserError(
        f"no CIFAR data in {path}: expected {' or '.join(CIFAR_ARCHIVES)} or an extracted "
        f"{' or '.join(CIFAR_FOLDERS)} folder"
    )


def _read_members(source: Path, wanted: set[str]) -> dict[str, bytes]:
    """Bytes of the files named in `wanted` (base names) that exist in the archive or folder `source`."""
    try:
        if source.is_dir():
            return {p.name: p.read_bytes() for p in source.iterdir() if p.name in wanted and p.is_file()}
        with tarfile.open(source) as tar:
            # One sequential pass: a .tar.gz has no index, so seeking member by member would re-inflate it.
            return {
                Path(m.name).name: tar.extractfile(m).read()
                for m in tar
                if m.isfile() and Path(m.name).name in wanted
            }
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read CIFAR data in {source} ({e}); download the archive again") from None


def _download_cifar(path: Path) -> Path:
    """Fetch the archive `path` asks for (CIFAR-100 if it names it, else CIFAR-10); returns where it lies."""
    from torchvision.datasets.utils import download_url  # only needed on this rare path

    archive = "cifar-100-python.tar.gz" if path.name.startswith("cifar-100") else "cifar-10-python.tar.gz"
    root = path.parent if path.name in (*CIFAR_ARCHIVES, *CIFAR_FOLDERS) else path
    # download_url checks the md5 and raises if it does not match, so a tampered file is never unpickled.
    download_url(CIFAR_URL + archive, str(root), archive, md5=CIFAR_ARCHIVES[archive])
    return root / archive


def _decode_batch(batch: dict, name: str, label_key: str) -> tuple[np.ndarray, list[int]]:
    try:
        data, labels = batch["data"], batch[label_key]
    except KeyError as e:
        raise UserError(f"CIFAR file {name} lacks {e}; download the official archive again") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (len(labels), 3072)):
        raise UserError(f"CIFAR file {name} has no uint8 N x 3072 data; download the official archive again")
    # Each row holds the 1024 red, then green, then blue values of a 32x32 image in row-major order.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(path: str | Path, train: bool = True, download: bool = False) -> ArrayDataset:
    """CIFAR-10 or CIFAR-100 (detected from the files; CIFAR-100 uses the 100 fine labels).

    `path` is the official python-version archive, the folder it extracts to, or a folder holding either.
    The archive is read in place, never extracted. download=True fetches the archive (md5-checked) when
    `path` does not exist: CIFAR-100 if `path` names it, else CIFAR-10.
    """
    path = Path(path)
    if not path.exists():
        if not download:
            raise UserError(f"{path} does not exist; pass the CIFAR archive or folder, or allow downloading")
        path = _download_cifar(path)
    source = _locate_cifar(path)
    layouts = (CIFAR10_LAYOUT, CIFAR100_LAYOUT)
    files = _read_members(source, {n for lay in layouts for n in (*lay[0 if train else 1], lay[2])})
    is_cifar10 = any(n in files for n in (*CIFAR10_LAYOUT[0], *CIFAR10_LAYOUT[1], CIFAR10_LAYOUT[2]))
    train_files, test_files, meta_file, label_key, names_key = CIFAR10_LAYOUT if is_cifar10 else CIFAR100_LAYOUT
    split_files = train_files if train else test_files
    missing = [n for n in (*split_files, meta_file) if n not in files]
    if missing:
        raise UserError(f"{source} is not a complete CIFAR dataset (missing {', '.join(missing)})")
    parts = [_decode_batch(_unpickle(files[n], n), n, label_key) for n in split_files]
    classes = _unpickle(files[meta_file], meta_file).get(names_key)
    if not isinstance(classes, list):
        raise UserError(f"CIFAR file {meta_file} lacks {names_key}; download the official archive again")
    images = np.concatenate([p[0] for p in parts])
    labels = [label for p in parts for label in p[1]]
    return _array_dataset(images, labels, [str(c) for c in classes])


# ---------------------------------------------------------------------------------------------- folders


def scan_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files of an ImageNet-style root/<class>/<image> tree: (paths, labels, classes sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; expected root/<class>/<image> files")
    # Dot-folders and dot-files are tool debris (.ipynb_checkpoints, macOS ._x.jpg), never classes or images.
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class folders; expected root/<class>/<image> files")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"no images ({' '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders of {root}")
    return paths, labels, classes


def _decode(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB of an image file; raises if it cannot be read."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError:
        # torchvision reads JPEG, PNG, GIF and WebP; PIL covers the rest (BMP, TIFF) and is the second opinion.
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def _fit(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size`, then take the centre size x size square."""
    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {shown}", stacklevel=3)


def _decode_all(
    paths: list[Path], labels: list[int], image_size: int | None
) -> tuple[list[torch.Tensor], list[int], list[str]]:
    """(images, labels, skipped paths) for the readable files among `paths`."""
    images, kept, skipped = [], [], []
    # disable=None: tqdm shows the bar only on a terminal; small folders decode too fast to need one.
    bar = tqdm(zip(paths, labels), total=len(paths), desc="decoding images", unit="img",
               disable=None if len(paths) >= 1000 else True)
    for path, label in bar:
        try:
            image = _decode(path)
        except Exception:  # any failure to decode one file means that file is unreadable, not that we stop
            skipped.append(str(path))
            continue
        if image_size:
            image = _fit(image, image_size)
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


def _read_cache(path: Path) -> tuple[ArrayDataset, list[str]] | None:
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        return ArrayDataset(tensors["images"], tensors["labels"], json.loads(meta["classes"])), json.loads(meta["skipped"])
    except Exception:  # missing or damaged: it is only a cache, so decode again and (re)write it
        return None


def _write_cache(path: Path, ds: ArrayDataset, skipped: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:  # temp file + rename: a crash or a concurrent run never leaves a half-written cache under the real name
        save_file({"images": ds.images, "labels": ds.labels}, tmp,
                  metadata={"classes": json.dumps(ds.classes), "skipped": json.dumps(skipped)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    _warn_skipped(skipped)
    return ds


class FolderDataset(torch.utils.data.Dataset):
    """Streams root/<class>/<image> files from disk, for folders too big to decode into memory.

    Items are (transform(PIL RGB image), label). An unreadable file is replaced by the next readable one
    (wrapping around) so that one bad file among millions does not end a long run; each replacement is
    counted in `skipped` (per process: DataLoader workers keep their own counts) and warned about.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None):
        self.root = Path(root)
        self.paths, self.labels, self.classes = scan_folder(self.root)
        self.transform = transform
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        for offset in range(len(self.paths)):
            i = (index + offset) % len(self.paths)
            try:
                with Image.open(self.paths[i]) as file:
                    image = file.convert("RGB")
            except Exception:  # unreadable for whatever reason: substitute the next file, as documented above
                self.skipped += 1
                warnings.warn(f"skipping unreadable image {self.paths[i]}", stacklevel=2)
                continue
            return (self.transform(image) if self.transform else image), self.labels[i]
        raise UserError(f"none of the image files under {self.root} could be read")


def split_validation(ds: ArrayDataset, n: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, held-out) where held-out is the last `n` entries of a permutation seeded with `seed`.

    The same (n, seed) holds out the same images on every run (with the same torch), as the paper's
    45k/5k CIFAR-10 analysis needs. Both parts keep the dataset's original order.
    """
    if not 0 < n < len(ds):
        raise UserError(f"the validation size must be between 1 and {len(ds) - 1}, not {n}")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return ds.subset(order[:-n].sort().values), ds.subset(order[-n:].sort().values)
