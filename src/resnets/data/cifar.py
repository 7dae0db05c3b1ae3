"""CIFAR-10 / CIFAR-100 in the official "python version" format, unpickled without running code."""

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError
from .arrays import ArrayDataset, _array_dataset

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


def is_cifar(path: Path) -> bool:
    """Whether `path` names CIFAR data: an official archive or folder (by name, so that a damaged one gets CIFAR's
    error), a folder holding one or the batch files, or a tar archive of another name whose first entry lies in
    an official folder (a renamed download). Any other archive is not CIFAR's."""
    names = {path.name} | ({p.name for p in path.iterdir()} if path.is_dir() else set())
    if names & {*CIFAR_ARCHIVES, *CIFAR_FOLDERS, "batches.meta", "meta", "data_batch_1"}:
        return True
    top = Path(_first_entry(path)).parts[:1] if path.is_file() else ()  # ("cifar-10-batches-py",) or ()
    return bool(top) and top[0] in CIFAR_FOLDERS


def _first_entry(path: Path) -> str:
    """The name of a tar archive's first entry, "" if it is not a readable tar archive; only the start of the file
    is read (and inflated)."""
    try:
        with tarfile.open(path) as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return ""
    return first.name if first is not None else ""


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
