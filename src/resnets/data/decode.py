"""The one image decoder: every image file that training folders, eval and predict read is decoded here, with one
decompression-bomb check and one-line reasons for files that cannot be read.

`decode_rgb` gives 8-bit RGB, as the networks of image folders train on it; `to_channels` brings a decoded image to
a network's channels (grey: ITU-R 601 luma, exactly as Pillow's convert("L") computes it).
"""

import contextlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, read_file

from ..errors import first_line

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Images with more pixels are refused as possible decompression bombs (a 100-byte PNG can claim 10^10 pixels,
# 10 GB once decoded). 50 MP admits photos of all but medium-format cameras; Pillow's own default is 89 MP.
MAX_PIXELS = 50_000_000
# Pillow's convert("L") in integers: (R * 19595 + G * 38470 + B * 7471 + 2^15) >> 16 (its Convert.c, the ITU-R
# 601-2 weights 0.299, 0.587, 0.114 scaled by 2^16); the same byte for every one of the 2^24 colours.
LUMA = (19595, 38470, 7471)


class ImageError(Exception):
    """One file that cannot be decoded: its one-line reason."""

    kind = "unreadable"  # what training folders call such files when they count them


class TooManyPixels(ImageError):
    """A file whose header claims more pixels than allowed: readable perhaps, but refused before it is decoded."""

    kind = f"over {MAX_PIXELS:,} pixels, refused as a possible decompression bomb"


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` as 8-bit "L" or "RGB" (the files torchvision cannot decode are read this way).

    Alpha is dropped, not composited: torchvision's decoder (ImageReadMode.RGB) drops it too, so a transparent
    PNG decodes alike either way. 16-bit (and 32-bit integer) grey is scaled to 0..255 (Pillow's own
    convert("L") clips everything above 255 to white). Palette, 1-bit, CMYK and YCbCr go through Pillow's
    conversions; RGB -> L is Pillow's ITU-R 601 luma.
    """
    if image.mode in SIXTEEN_BIT or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)  # exact up to 2^24
        # "I" also holds 8-bit data (e.g. converted from L); only values above 255 mean a 16-bit range.
        top = 65535 if image.mode in SIXTEEN_BIT or values.max() > 255 else 255
        image = Image.fromarray(np.rint(values.clip(0, top) * (255 / top)).astype(np.uint8))
    elif image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")
    return image.convert(mode)


@contextlib.contextmanager
def _pillow():
    """Pillow with its own pixel limit off (decode_rgb checks the size, with a clearer message) and without its
    warning about palette images with a transparent colour (whose alpha is dropped anyway)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def decode_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """(3, H, W) uint8 RGB of an image file in any mode (grey, CMYK, RGBA, palette, 16-bit); ImageError with the
    reason if it cannot be read or has more than `max_pixels` pixels."""
    try:
        kind = os.stat(path).st_mode
        if stat.S_ISDIR(kind):
            raise ImageError("is a folder")
        if not stat.S_ISREG(kind):  # opening a named pipe waits for a writer, reading a device may never end
            raise ImageError("not a regular file (a named pipe, socket or device): not read")
        # The header only (well under 0.1 ms, a few percent of decoding a 500x375 JPEG): torchvision would allocate
        # the size a file claims before decoding a single pixel.
        with _pillow(), Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:  # before a single pixel is decoded
                # The hint names the one place the limit is an option; training folders only list skipped files.
                raise TooManyPixels(f"{width}x{height} is {width * height:,} pixels, over the limit of "
                                    f"{max_pixels:,} (--max-pixels): refused as a possible decompression bomb")
            try:
                return _torchvision(path)
            except RuntimeError:
                # torchvision reads JPEG, PNG, GIF and WebP; Pillow the rest (BMP, TIFF) and is the second opinion.
                return torch.from_numpy(np.array(to_mode(image, "RGB"))).permute(2, 0, 1).contiguous()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except UnidentifiedImageError:  # torchvision is not tried either: no file is decoded with its size unchecked
        raise ImageError("not an image (or a format Pillow cannot read)") from None
    except Exception as e:  # truncated or damaged data; whatever a decoder raises, it is this file's problem
        raise ImageError(f"unreadable image ({first_line(e, 200)})") from None


def _torchvision(path: str | Path) -> torch.Tensor:
    """Fast decoding (libjpeg-turbo, libpng): the decoder of training folders since the start."""
    image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    if image.dtype == torch.uint16:  # a 16-bit PNG: to 0..255 as to_mode scales it, not a uint16 among uint8s
        image = (image.float() * (255 / 65535)).round().to(torch.uint8)
    return image


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Decoded uint8 (..., 1 or 3, H, W) images with `channels` channels: grey as Pillow's convert("L") makes it
    from RGB, RGB as convert("RGB") makes it from grey (three equal channels). The one rule of eval and predict:
    images are brought to the network's channels (training takes the data's: a new network is built for them)."""
    if channels == 1 and image.shape[-3] == 3:
        weights = torch.tensor(LUMA, dtype=torch.int32, device=image.device).view(3, 1, 1)
        return ((image.int() * weights).sum(-3, keepdim=True) + 2**15).bitwise_right_shift(16).to(torch.uint8)
    if channels != 1 and image.shape[-3] == 1:  # every network of other than 1 channel takes RGB, as predict fed it
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous()
    return image
