"""studies/reencode_jpeg.py, the gap study's second JPEG encoding (docs/RESULTS.md, Table 6)."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .scripts import load_study

reencode_jpeg = load_study("reencode_jpeg")
jpeg_first_loss = load_study("jpeg_first_loss")


def smooth_image(rng) -> np.ndarray:
    """32x32 RGB with structure at several scales, as a photo has, not noise (which JPEG would simply smear)."""
    y, x = np.mgrid[0:32, 0:32] / 32
    channels = [np.sin(x * rng.uniform(2, 12) + y * rng.uniform(2, 12) + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


def test_a_shifted_grid_quantises_afresh_and_the_folder_keeps_its_names(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for name in ("cat/0000", "cat/0001", "dog/0000"):
        (tmp_path / "given" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(rng)).save(tmp_path / "given" / f"{name}.jpg", quality=75)
    given = np.asarray(Image.open(tmp_path / "given/cat/0000.jpg").convert("RGB"))
    # On its own grid an image encoded at quality 75 barely changes: the shift is what makes the loss new.
    same_grid = reencode_jpeg.psnr(given, reencode_jpeg.reencode(given, 0, 75))
    moved = reencode_jpeg.psnr(given, reencode_jpeg.reencode(given, 3, 75))
    assert moved < 35 and same_grid > moved + 3  # here 29.8 and 35.6 dB; on the shared CIFAR images 32.3 and exact
    monkeypatch.setattr(sys, "argv", ["reencode_jpeg.py", str(tmp_path / "given"), str(tmp_path / "again"),
                                      "--compare", "0,3"])
    assert reencode_jpeg.main() == 0
    written = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*"))
    assert written == [Path(p) for p in ("cat", "cat/0000.png", "cat/0001.png", "dog", "dog/0000.png")]
    again = np.asarray(Image.open(tmp_path / "again/cat/0000.png"))
    assert again.shape == (32, 32, 3) and np.array_equal(again, reencode_jpeg.reencode(given, 3, 75))
    assert "| 3 |" in capsys.readouterr().out


def test_the_first_encoding_of_a_photo_loses_more_than_a_second(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(smooth_image(rng)).resize((256, 256), Image.BICUBIC)
    photo = np.clip(np.asarray(photo) + rng.normal(0, 6, (256, 256, 3)), 0, 255).astype(np.uint8)  # some grain
    Image.fromarray(photo).save(tmp_path / "photo.png")
    crops = jpeg_first_loss.tiny_crops(Image.open(tmp_path / "photo.png"), 5, rng)
    first, second = np.mean([jpeg_first_loss.encoding_losses(c, 3, 75) for c in crops], axis=0)
    assert all(c.shape == (32, 32, 3) for c in crops) and first < second
    monkeypatch.setattr(sys, "argv", ["jpeg_first_loss.py", str(tmp_path / "photo.png"), "--crops", "5"])
    assert jpeg_first_loss.main() == 0
    assert "| photo |" in capsys.readouterr().out
