"""Tiny fake datasets in the real on-disk formats, for tests: no network, a few kilobytes each."""

import io
import pickle
import tarfile
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do with os.system instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did for the official CIFAR batches: protocol 2, every string a BINSTRING.

    So the loader is tested on what the real files contain (py2 str, numpy.core module names), not on
    what Python 3 would write today.
    """

    def save_binstring(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)

    dispatch: ClassVar[dict] = {**pickle._Pickler.dispatch, bytes: save_binstring, str: save_binstring}


def py2_pickle(obj) -> bytes:
    out = io.BytesIO()
    _Py2Pickler(out, protocol=2).dump(obj)
    # numpy 1.x, which wrote the real files, lived at numpy.core; GLOBAL names are newline-terminated text.
    return out.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def fake_cifar_arrays(n: int, train: bool, cifar100: bool = False) -> tuple[np.ndarray, list[int]]:
    """The (N, 3, 32, 32) uint8 images and labels that make_cifar_archive writes for one split."""
    rng = np.random.default_rng([int(train), int(cifar100), n])
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return images, rng.integers(0, 100 if cifar100 else 10, n).tolist()


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """The official row layout, spelled out: all red values row by row, then green, then blue."""
    return np.concatenate([images[:, c].reshape(len(images), 1024) for c in range(3)], axis=1)


def _cifar10_batch(images, labels, title: str) -> dict:
    return {b"batch_label": title.encode(), b"labels": labels, b"data": _cifar_rows(images),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}


def cifar_members(n_train: int = 50, n_test: int = 10, cifar100: bool = False) -> dict[str, bytes]:
    """Archive path -> file bytes of a tiny CIFAR-10 or CIFAR-100 python-version archive."""
    train, test = fake_cifar_arrays(n_train, True, cifar100), fake_cifar_arrays(n_test, False, cifar100)
    if cifar100:
        def batch(arrays, title):
            images, labels = arrays
            return py2_pickle({b"filenames": [b"x.png"] * len(labels), b"batch_label": title.encode(),
                               b"fine_labels": labels, b"coarse_labels": [y // 5 for y in labels],
                               b"data": _cifar_rows(images)})
        meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
        files = {"train": batch(train, "training batch 1 of 1"), "test": batch(test, "testing batch 1 of 1"),
                 "meta": py2_pickle(meta)}
        return {f"cifar-100-python/{name}": data for name, data in files.items()}
    files = {}
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        labels = [train[1][j] for j in part]
        files[f"data_batch_{i}"] = py2_pickle(_cifar10_batch(train[0][part], labels, f"training batch {i} of 5"))
    files["test_batch"] = py2_pickle(_cifar10_batch(*test, "testing batch 1 of 1"))
    files["batches.meta"] = py2_pickle({b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                        b"label_names": [name.encode() for name in CIFAR10_NAMES]})
    files["readme.html"] = b"<html></html>"
    return {f"cifar-10-batches-py/{name}": data for name, data in files.items()}


def write_targz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_cifar_archive(dir: Path, n_train: int = 50, n_test: int = 10, cifar100: bool = False) -> Path:
    """dir/cifar-10-python.tar.gz (or cifar-100-python.tar.gz) in the official format; see fake_cifar_arrays."""
    name = "cifar-100-python.tar.gz" if cifar100 else "cifar-10-python.tar.gz"
    Path(dir).mkdir(parents=True, exist_ok=True)
    return write_targz(Path(dir) / name, cifar_members(n_train, n_test, cifar100))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 32, extras: bool = False) -> Path:
    """root/c<k>/<i>.png|.jpg: `per_class` RGB noise images per class, alternately PNG (lossless) and JPEG.

    extras=True adds to c0 a grayscale BMP (read through PIL), an RGBA PNG, a palette GIF, a text file
    that is not an image, and one truncated JPEG that no decoder can read: classes * per_class + 3 readable.
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            image.save(root / f"c{k}" / (f"{i}.png" if i % 2 == 0 else f"{i}.jpg"))
    if extras:
        extra = root / "c0"
        pixels = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
        Image.fromarray(pixels[..., 0]).save(extra / "gray.bmp")
        Image.fromarray(pixels, "RGBA").save(extra / "rgba.png")
        Image.fromarray(pixels[..., :3]).convert("P").save(extra / "palette.gif")
        (extra / "notes.txt").write_text("not an image")
        jpeg = io.BytesIO()
        Image.fromarray(pixels[..., :3]).save(jpeg, "JPEG")
        (extra / "corrupt.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    return root


# (height, width) and how each file of an ImageNet-style class folder is written: varied sizes and aspect ratios,
# and the modes real ImageNet holds (a few greyscale and CMYK JPEGs, PNGs disguised as JPEG) and more.
IMAGENET_FILES = [
    ((40, 56), "RGB", "JPEG"), ((64, 48), "L", "JPEG"), ((50, 50), "CMYK", "JPEG"), ((36, 72), "RGBA", "PNG"),
    ((60, 44), "I;16", "PNG"), ((48, 64), "P", "GIF"), ((45, 60), "RGB", "BMP"),
]


def make_imagenet_folder(root: Path, classes: int = 3, train_per_class: int = 6, val_per_class: int = 4) -> Path:
    """root/train/n<k>/*.JPEG|png|... and root/val/...: the ILSVRC layout in miniature, one corrupt file in each.

    Images cycle through IMAGENET_FILES (sizes 36..72 pixels, RGB, greyscale, CMYK, RGBA, 16-bit, palette,
    BMP); each class has its own mean colour so that a network can learn something. The first class of train/
    and of val/ also holds `corrupt.JPEG`, a truncated JPEG that no decoder reads.
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (h, w), mode, fmt = IMAGENET_FILES[(i + k) % len(IMAGENET_FILES)]
                pixels = np.clip(rng.normal(60 + 60 * k, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if mode == "I;16":
                    image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
                elif mode != "RGB":
                    image = image.convert(mode)
                suffix = {"JPEG": ".JPEG", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp"}[fmt]
                image.save(folder / f"{split}_{k}_{i}{suffix}", fmt)
        jpeg = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(jpeg, "JPEG")
        (root / split / "n00000000" / "corrupt.JPEG").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    return root
