#!/usr/bin/env python
"""What a first JPEG encoding takes from a 32x32 image, beside what a second takes (the gap study, docs/RESULTS.md).

The gap study measures the cost of a second encoding of our CIFAR-10 images (reencode_jpeg.py) because their
original pixels are not here. This script asks how the first encoding compares, on images that have original
pixels: random square crops of lossless photos, shrunk to 32x32 by averaging (as CIFAR's images were shrunk from
larger photos), encoded once at --quality with 4:2:0 chroma, then once more on a grid shifted by --shift pixels.
It prints, per photo, the mean PSNR of each encoding against its input, and the first's squared error in
multiples of the second's (from the two means).

    pip install scikit-image   # its sample photos are lossless PNGs
    d=$(python -c "import os, skimage; print(os.path.dirname(skimage.__file__))")/data
    python studies/jpeg_first_loss.py $d/astronaut.png $d/chelsea.png $d/coffee.png \
        $d/motorcycle_left.png $d/motorcycle_right.png   # the table of docs/RESULTS.md
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from reencode_jpeg import psnr, reencode


def tiny_crops(photo: Image.Image, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` random squares of a sixth to a half of the photo's shorter side, each averaged down to 32x32."""
    w, h = photo.size
    crops = []
    for _ in range(count):
        side = int(rng.integers(min(w, h) // 6, min(w, h) // 2))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        crops.append(np.asarray(photo.crop((x, y, x + side, y + side)).resize((32, 32), Image.BOX)))
    return crops


def encoding_losses(original: np.ndarray, shift: int, quality: int) -> tuple[float, float]:
    """(PSNR of the first encoding against the original, PSNR of a second, shifted, against the first)."""
    once = reencode(original, 0, quality)
    return psnr(original, once), psnr(once, reencode(once, shift, quality))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("photos", nargs="+", type=Path, help="lossless photos (PNG, TIFF, ...)")
    p.add_argument("--crops", type=int, default=150, help="32x32 images cut from each photo")
    p.add_argument("--quality", type=int, default=75)
    p.add_argument("--shift", type=int, default=3, help="the second encoding's grid shift, as reencode_jpeg.py's")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"| photo | first encoding (dB) | second, shifted {args.shift} (dB) | first's squared error / second's |")
    print("|---|---:|---:|---:|")
    firsts, seconds = [], []
    for path in args.photos:
        pairs = [encoding_losses(c, args.shift, args.quality)
                 for c in tiny_crops(Image.open(path).convert("RGB"), args.crops, rng)]
        first, second = (float(np.mean([v[i] for v in pairs if np.isfinite(v).all()])) for i in (0, 1))
        firsts.append(first)
        seconds.append(second)
        print(f"| {path.stem} | {first:.2f} | {second:.2f} | {10 ** ((second - first) / 10):.2f} |")
    first, second = float(np.mean(firsts)), float(np.mean(seconds))
    print(f"| mean | {first:.2f} | {second:.2f} | {10 ** ((second - first) / 10):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
