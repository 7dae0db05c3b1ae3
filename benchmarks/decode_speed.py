#!/usr/bin/env python
"""ImageNet input pipeline speed on this CPU: decoded + augmented images/s, per DataLoader worker.

Runs the real path (ImageNetFolder read through BatchLoader, as `resnets train --recipe imagenet/...` does):
(a) training: decode, shorter side to a random 256..480, random 224x224 crop, flip (the paper's Sec. 3.4);
(b) evaluation: decode, shorter side to 256, centre 224x224 crop;
each with 1 and 2 workers, plus the decode alone in this process for reference. The AlexNet colour noise
and the normalisation happen later, on the training device, and are not part of this.

By default it writes 256 JPEGs shaped like ImageNet's (500x375 and 375x500, quality 90, smooth random content)
into a temporary folder; --data PATH measures a real root/<class>/<image> folder instead (e.g. ImageNet's
train/). Prints a markdown table. Run it on a quiet machine: other processes on the same cores lower it.

    python benchmarks/decode_speed.py [--data /data/imagenet/train] [--images 256]
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnets.data import BatchLoader, ImageNetFolder
from resnets.data.decode import decode_rgb

BATCH = 32


def write_jpegs(root: Path, n: int) -> Path:
    """n ImageNet-like JPEGs in 4 class folders: 500x375 or 375x500, smooth colour fields plus a little noise
    (pure noise would compress badly and decode slower than photographs do)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (500, 375) if i % 3 else (375, 500)
        coarse = Image.fromarray(rng.integers(0, 256, (h // 25, w // 25, 3), dtype=np.uint8)).resize((w, h),
                                                                                                     Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        folder = root / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.JPEG", quality=90)
    return root


def images_per_s(ds: ImageNetFolder, workers: int, train: bool) -> float:
    """One pass over the folder in batches of BATCH; the clock starts after the first batch (workers' start)."""
    loader = BatchLoader(ds, BATCH, shuffle=train, flip=train, scale=[256, 480] if train else None, workers=workers,
                         drop_last=True)
    batches = iter(loader.epoch(0))
    next(batches)
    start, seen = time.perf_counter(), 0
    for images, _ in batches:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a root/<class>/<image> folder (default: generated ImageNet-like JPEGs)")
    parser.add_argument("--images", type=int, default=256, help="how many to generate (default 256)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else write_jpegs(Path(tmp), args.images)
        ds = ImageNetFolder(root, crop=224, resize=256)
        start = time.perf_counter()
        for path in ds.paths[:64]:
            decode_rgb(os.fsdecode(path))
        decode = min(64, len(ds)) / (time.perf_counter() - start)
        rows = [("decode only, in this process", 1, decode)]
        for train in (True, False):
            for workers in (1, 2):
                what = "train: decode + scale 256-480 + crop 224 + flip" if train else "eval: decode + resize 256 + crop 224"
                rows.append((what, workers, images_per_s(ImageNetFolder(root, 224, 256), workers, train)))
    print(f"{len(ds)} images from {args.data or 'generated 500x375 JPEGs'}; {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} cores, torch {torch.__version__}\n")
    print("| pipeline | workers | images/s | images/s per worker |")
    print("|---|---:|---:|---:|")
    for what, workers, rate in rows:
        print(f"| {what} | {workers} | {rate:.0f} | {rate / workers:.0f} |")


if __name__ == "__main__":
    main()
