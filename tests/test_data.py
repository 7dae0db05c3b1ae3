import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnets.data import (
    ArrayDataset,
    BatchLoader,
    FolderDataset,
    folders,
    load_cifar,
    load_digits,
    load_folder,
    normalization_stats,
    normalize,
    pad_crop_flip,
    scan_folder,
    split_validation,
)
from resnets.errors import UserError

from .fakedata import cifar_members, fake_cifar_arrays, make_cifar_archive, make_image_folder, write_targz


def toy(n=50, size=8, channels=3) -> ArrayDataset:
    """Random images whose labels are their indices, so every batch says which samples it holds."""
    images = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(1))
    return ArrayDataset(images.to(torch.uint8), torch.arange(n), [str(i) for i in range(n)])


# ---------------------------------------------------------------------------------------------- digits


def test_digits_fixed_stratified_split():
    train, test = load_digits()
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.classes == [str(d) for d in range(10)]
    assert train.images.is_contiguous() and int(train.images.max()) == 255
    assert set(torch.bincount(test.labels).tolist()) <= {35, 36, 37}  # stratified: ~36 of each digit
    again, _ = load_digits()
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)


# ----------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("cifar100", [False, True])
def test_cifar_archive_and_extracted_folder_agree(tmp_path, cifar100):
    archive = make_cifar_archive(tmp_path, n_train=23, n_test=7, cifar100=cifar100)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    folder = tmp_path / "extracted" / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    for train, n in [(True, 23), (False, 7)]:
        images, labels = fake_cifar_arrays(n, train, cifar100)
        loaded = [load_cifar(p, train=train) for p in (archive, tmp_path, folder, folder.parent)]
        for ds in loaded:
            assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
            assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels
            assert np.array_equal(ds.images.numpy(), images)  # fakedata wrote R, G, B planes row by row
        assert len(loaded[0].classes) == (100 if cifar100 else 10)
    assert load_cifar(archive).classes[:2] == (["fine0", "fine1"] if cifar100 else ["airplane", "automobile"])


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_malicious_pickle_is_refused(tmp_path, protocol):
    target = tmp_path / "pwned"
    members = cifar_members()
    members["cifar-10-batches-py/data_batch_1"] = pickle.dumps({b"data": _Evil(target)}, protocol=protocol)
    archive = write_targz(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_cifar(archive)
    assert not target.exists()


def test_cifar_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_cifar(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no CIFAR data"):
        load_cifar(tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(UserError, match="cannot read CIFAR data"):
        load_cifar(tmp_path)
    whole = make_cifar_archive(tmp_path / "sub")
    whole.write_bytes(whole.read_bytes()[:5000])  # truncated download
    with pytest.raises(UserError, match="cannot read CIFAR data"):
        load_cifar(whole)
    members = {k: v for k, v in cifar_members().items() if not k.endswith("test_batch")}
    archive = write_targz(tmp_path / "partial.tar.gz", members)
    with pytest.raises(UserError, match="missing test_batch"):
        load_cifar(archive, train=False)
    members = cifar_members()
    members["cifar-10-batches-py/test_batch"] = b"garbage"
    with pytest.raises(UserError, match="cannot read CIFAR file test_batch"):
        load_cifar(write_targz(tmp_path / "bad.tar.gz", members), train=False)


# ---------------------------------------------------------------------------------------------- folders


def test_scan_folder(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=4, extras=True)
    paths, labels, classes = scan_folder(root)
    assert classes == ["c0", "c1", "c2"]
    assert len(paths) == 12 + 4 and not any(p.suffix == ".txt" for p in paths)
    assert labels == [0] * 8 + [1] * 4 + [2] * 4


def test_scan_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no class folders"):
        scan_folder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="no images"):
        scan_folder(tmp_path)


def test_load_folder_decodes_and_skips_corrupt(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=4, extras=True)
    with pytest.warns(UserWarning, match=r"skipped 1 of the 16 image files in .*: 1 unreadable: .*corrupt\.jpg$"):
        ds = load_folder(root)
    assert ds.images.shape == (15, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0] * 7 + [1] * 4 + [2] * 4 and ds.classes == ["c0", "c1", "c2"]
    png = np.asarray(Image.open(root / "c1" / "0.png"))
    assert np.array_equal(ds.images[7].permute(1, 2, 0).numpy(), png)  # PNG is lossless: exact pixels
    gray = ds.images[4]  # c0: 0.png 1.jpg 2.png 3.jpg gray.bmp palette.gif rgba.png (corrupt.jpg skipped)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    with pytest.warns(UserWarning, match="skipped 1"):
        assert load_folder(root, image_size=16).images.shape == (15, 3, 16, 16)


def test_load_folder_size_mismatch_names_file(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    Image.new("RGB", (40, 30)).save(root / "c1" / "big.png")
    with pytest.raises(UserError, match=r"big\.png is 40x30"):
        load_folder(root)
    assert load_folder(root, image_size=24).images.shape == (5, 3, 24, 24)


def test_load_folder_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=3, extras=True)
    cache = tmp_path / "cache"
    calls = []
    decode = folders.decode_rgb
    monkeypatch.setattr(folders, "decode_rgb", lambda p: calls.append(p) or decode(p))
    with pytest.warns(UserWarning, match="skipped 1"):
        first = load_folder(root, cache_dir=cache)
    assert len(calls) == 10
    with pytest.warns(UserWarning, match="skipped 1"):  # the skip is remembered in the cache and told again
        second = load_folder(root, cache_dir=cache)
    assert len(calls) == 10  # nothing decoded: served from the cache
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.classes == second.classes
    assert [p.suffix for p in cache.iterdir()] == [".safetensors"]  # no temp files left behind
    Image.new("RGB", (32, 32)).save(root / "c1" / "new.png")
    with pytest.warns(UserWarning):
        third = load_folder(root, cache_dir=cache)
    assert len(calls) == 21 and len(third) == len(first) + 1


def test_folder_dataset_substitutes_unreadable(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=2, extras=True)
    ds = FolderDataset(root)
    assert len(ds) == 4 + 4 and ds.classes == ["c0", "c1"] and ds.image_shape == (3, 32, 32)
    bad = [p.endswith(b"/corrupt.jpg") for p in ds.paths].index(True)
    image, label, unreadable = ds[bad]
    assert torch.equal(image, ds[bad + 1][0]) and label == ds.labels[bad + 1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert unreadable == ((str(root / "c0" / "corrupt.jpg"), "unreadable"),)
    # Decoded by a worker, reported by this process: once per file, however often it is drawn.
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match=r"skipped image .*corrupt\.jpg: unreadable \(1 so far") as warned:
        (images, labels), = ds.load_batches([torch.tensor([bad, bad, 0])], workers=1)
    assert len(warned) == 1 and torch.equal(images[0], image) and labels.tolist() == [label, label, 0]
    assert torch.equal(torch.get_rng_state(), rng)  # the training run's random stream is not the loader's


# -------------------------------------------------------------------------------------------- splitting


def test_split_validation_reproducible_and_disjoint():
    ds = toy(50)
    train, val = split_validation(ds, 10, seed=3)
    assert (len(train), len(val)) == (40, 10)
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(50))
    _, again_val = split_validation(ds, 10, seed=3)
    assert torch.equal(val.labels, again_val.labels) and torch.equal(val.images, again_val.images)
    assert not torch.equal(split_validation(ds, 10, seed=4)[1].labels, val.labels)
    for n in (0, 50):
        with pytest.raises(UserError):
            split_validation(ds, n)


# ------------------------------------------------------------------------------------------ augmentation


def test_pad_crop_flip_matches_per_image_reference():
    images, pad = toy(200).images, 2
    out = pad_crop_flip(images, pad, True, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (pad,) * 4)
    seen = set()
    for b in range(len(images)):
        matches = [(dy, dx, mirror)
                   for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for mirror in (False, True)
                   if torch.equal(out[b].flip(-1) if mirror else out[b], padded[b, :, dy:dy + 8, dx:dx + 8])]
        assert matches, f"image {b} is no crop of its padded input"
        seen.update(m[:2] for m in matches)
    assert len(seen) == (2 * pad + 1) ** 2  # every offset in [0, 2*pad] occurs
    again = pad_crop_flip(images, pad, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_pad_crop_flip_flip_rate_and_identity():
    images = torch.arange(4, dtype=torch.uint8).expand(4000, 1, 1, 4)
    out = pad_crop_flip(images, 0, True, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert 0.45 < flipped < 0.55
    assert torch.equal(out[out[:, 0, 0, 0] == 3][:, 0, 0], torch.tensor([3, 2, 1, 0], dtype=torch.uint8).expand(
        int(flipped * 4000), 4))
    assert pad_crop_flip(images, 0, False, torch.Generator()) is images


def test_normalize_and_stats():
    ds = toy(20)
    x = normalize(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), torch.tensor(0.5), torch.tensor(0.25))
    assert x.dtype == torch.float32 and x.flatten().tolist() == [-2.0, 2.0]
    mean, std = normalization_stats(ds, "pixel_mean")
    assert mean.shape == (3, 8, 8) and torch.equal(std, torch.ones(3, 1, 1))
    assert torch.allclose(mean, ds.images.double().mean(0).float() / 255)
    mean, std = normalization_stats(ds, "channel")
    pixels = ds.images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(mean.flatten(), pixels.mean(1).float())
    assert torch.allclose(std.flatten(), pixels.std(1, unbiased=False).float())
    assert normalize(ds.images, mean, std).transpose(0, 1).reshape(3, -1).mean(1).abs().max() < 1e-5
    with pytest.raises(UserError, match="unknown normalisation"):
        normalization_stats(ds, "zca")


# ---------------------------------------------------------------------------------------------- loader


def _batches(loader, epoch, start=0):
    return list(loader.epoch(epoch, start))


def test_loader_resume_is_exact_and_epochs_differ():
    loader = BatchLoader(toy(50), 8, shuffle=True, pad=2, flip=True, seed=5)
    assert len(loader) == 7
    full = _batches(loader, 3)
    for k in (0, 1, 4, 6, 7):
        tail = _batches(loader, 3, start=k)
        assert len(tail) == len(full) - k
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, full[k:]))
    other = _batches(loader, 4)
    assert not torch.equal(full[0][1], other[0][1])
    for epoch in (full, other):  # every sample exactly once; the last batch is the short one
        assert sorted(torch.cat([y for _, y in epoch]).tolist()) == list(range(50))
        assert [len(y) for _, y in epoch] == [8] * 6 + [2]
    assert torch.equal(_batches(BatchLoader(toy(50), 8, shuffle=True, pad=2, flip=True, seed=5), 3)[2][0],
                       full[2][0])


def test_loader_plain_order_and_drop_last():
    ds = toy(50)
    loader = BatchLoader(ds, 16, shuffle=False)
    batches = _batches(loader, 0)
    assert torch.equal(torch.cat([x for x, _ in batches]), ds.images)
    assert torch.equal(torch.cat([y for _, y in batches]), ds.labels)
    dropped = BatchLoader(ds, 16, shuffle=True, drop_last=True)
    assert len(dropped) == 3 and [len(y) for _, y in dropped.epoch(0)] == [16, 16, 16]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_loader_on_the_device_gives_the_cpu_batches(device):
    """Data held where the network runs (what training asks for) is batched and augmented as on the CPU, exactly."""
    kw = {"shuffle": True, "pad": 2, "flip": True, "seed": 5, "drop_last": True}
    on_cpu, resident = BatchLoader(toy(50), 8, **kw), BatchLoader(toy(50), 8, **kw, device=torch.device(device))
    assert resident.ds.images.device.type == device
    for (x, y), (xd, yd) in zip(on_cpu.epoch(2, start=1), resident.epoch(2, start=1), strict=True):
        assert xd.device.type == yd.device.type == device
        assert torch.equal(xd.cpu(), x) and torch.equal(yd.cpu(), y)
