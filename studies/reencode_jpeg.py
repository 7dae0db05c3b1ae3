"""Encode an image folder's JPEGs once more, for the gap study of Table 6 (docs/RESULTS.md).

Our CIFAR-10 images were JPEG-encoded once (quality 75, 4:2:0) from the original pixels, which we do not have. To
estimate what that first encoding costs a network, train on images encoded a second time, a fresh loss of the
same kind, and compare. Encoding again on the same 8x8 grid changes almost nothing (the coefficients are
already quantised), so each image is shifted by `--shift` pixels (edges mirrored) before it is encoded and shifted
back after: its blocks and its 2x2 chroma cells then fall across different pixels and are quantised afresh.

    python studies/reencode_jpeg.py /work/data/train /work/data/train-jpeg2 --shift 3 --quality 75

writes the same folder tree (same names, so data.val_split holds out the same images) and prints, per shift, the
PSNR of the new images against the given ones.
"""

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def reencode(rgb: np.ndarray, shift: int, quality: int) -> np.ndarray:
    """`rgb` (H, W, 3) uint8, JPEG-encoded at `quality` with 4:2:0 chroma after a shift of `shift` pixels down and
    right (mirrored edges), decoded and shifted back."""
    h, w, _ = rgb.shape
    padded = np.pad(rgb, ((shift, 0), (shift, 0), (0, 0)), mode="reflect")
    buffer = io.BytesIO()
    Image.fromarray(padded).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return decoded[shift:shift + h, shift:shift + w]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an image folder of JPEGs (class folders inside)")
    parser.add_argument("out", type=Path, nargs="?", help="where to write the re-encoded folder (omit: PSNR only)")
    parser.add_argument("--shift", type=int, default=3, help="pixels the 8x8 grid is moved by (default 3)")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the new encoding (default 75)")
    parser.add_argument("--compare", default="0,1,2,3,4", help="shifts whose PSNR to print (default 0,1,2,3,4; \"\": none)")
    args = parser.parse_args()
    files = sorted(args.source.rglob("*.jpg"))
    if not files:
        print(f"reencode_jpeg: no .jpg files under {args.source}", file=sys.stderr)
        return 2
    sample = files[:: max(1, len(files) // 2000)]  # 2,000 images spread over the classes are enough for a PSNR
    shifts = [int(s) for s in args.compare.split(",") if s]
    if shifts:
        print("| shift (pixels) | PSNR vs the given images, dB (2,000 images) |\n|---:|---:|")
    for shift in shifts:
        values = []
        for path in sample:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            values.append(psnr(rgb, reencode(rgb, shift, args.quality)))
        print(f"| {shift} | {np.mean(values):.2f} |")
    if args.out:
        for i, path in enumerate(files):
            target = args.out / path.relative_to(args.source)
            target.parent.mkdir(parents=True, exist_ok=True)
            rgb = np.asarray(Image.open(path).convert("RGB"))
            # Stored as PNG: the loss is the one encoding above, not a third one on writing.
            Image.fromarray(reencode(rgb, args.shift, args.quality)).save(target.with_suffix(".png"))
            if (i + 1) % 10000 == 0:
                print(f"{i + 1}/{len(files)} written", file=sys.stderr)
        print(f"wrote {len(files)} images to {args.out} (PNG, shift {args.shift}, quality {args.quality})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
