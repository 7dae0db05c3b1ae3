"""ImageNet-style folders: images of any size decoded and cropped one by one in DataLoader workers.

Training items are (index, side, u, v, mirror): the paper's augmentation (He et al. 2015, Sec. 3.4) with its
random numbers drawn by the BatchLoader from (seed, epoch, batch), so workers hold no random state and a resumed
or N-process run sees the very same crops. Evaluation items are plain indices, turned into the views of a test
protocol: the centre crop, ten crops, or the whole image at several scales.
"""

import copy

import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from .arrays import ArrayDataset
from .folders import StreamedFolder, resize_center_crop

# Krizhevsky et al. 2012 (Sec. 4.1): PCA of ImageNet's RGB pixel values (in [0, 1]); the constants of
# fb.resnet.torch's Lighting transform, which the authors' released models were trained with.
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
PROTOCOLS = ("center", "10crop", "multiscale")
PAPER_SCALES = (224, 256, 384, 480, 640)  # shorter sides of the paper's multi-scale testing


def scale_crop_flip(image: torch.Tensor, crop: int, side: int, u: float, v: float, mirror: bool) -> torch.Tensor:
    """The paper's training augmentation of one image: shorter side resized to `side`, a crop x crop square at
    relative position (u, v) in [0, 1) (top, left), mirrored left-right if `mirror`.

    The square is cut from the original and resized (torchvision's resized_crop), which is cheaper than resizing
    the whole image first; its side in original pixels is rounded to a whole number (a scale error below 0.5%).
    """
    h, w = image.shape[-2:]
    region = max(1, min(h, w, round(crop * min(h, w) / side)))
    top, left = int(u * (h - region + 1)), int(v * (w - region + 1))
    out = TF.resized_crop(image, top, left, region, region, [crop, crop], antialias=True)
    return out.flip(-1) if mirror else out


def lighting(x: torch.Tensor, alpha: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """AlexNet's colour augmentation of a normalised (B, 3, H, W) batch: image b gets EIGVEC @ (alpha[b] * EIGVAL)
    added to every pixel, with alpha ~ N(0, sigma^2) per image and component (sigma = data.lighting).

    Done on the device after normalisation, where x = (pixel - mean) / std: the shift is divided by std.
    """
    shift = (alpha * EIGVAL) @ EIGVEC.T  # (B, 3) in pixel units of [0, 1]
    return x + (shift.to(x.device) / std.reshape(1, -1).to(x.device))[:, :, None, None]


class ImageNetFolder(StreamedFolder):
    """A root/<class>/<image> folder of images of any size, streamed from disk.

    Training crops crop x crop squares (see scale_crop_flip); evaluation resizes the shorter side to `resize` and
    takes the views of `protocol`: "center" (the centre crop), "10crop" (the four corners and the centre, and
    their mirror images) or "multiscale" (the whole image with its shorter side at each of `scales`).

    An unreadable file never ends a run: in training the next readable file stands in for it, so batches keep
    their size; in evaluation it is counted out (label -1).
    """

    def __init__(self, root, crop: int, resize: int, protocol: str = "center", scales=PAPER_SCALES):
        super().__init__(root)
        self.crop, self.resize, self.protocol, self.scales = crop, resize, protocol, tuple(scales)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, self.crop, self.crop

    def __getitem__(self, item) -> tuple:
        """(image or views, label, (path, why) of each file met that cannot be used) of an index or a training
        tuple."""
        if isinstance(item, tuple):
            index, *params = item
            image, label, skipped = self._first_readable(index)
            return scale_crop_flip(image, self.crop, *params), label, skipped
        image, label, skipped = self._read(item)
        if image is None:  # counted out; a placeholder keeps the batch's shape
            image = torch.zeros(3, self.crop, self.crop, dtype=torch.uint8)
        return self.views(image), label, skipped

    def views(self, image: torch.Tensor):
        """The test protocol's views of one decoded image: a tensor, a stack of ten, or a list (sizes differ)."""
        if self.protocol == "multiscale":
            return [TF.resize(image, [s], antialias=True) for s in self.scales]
        if self.protocol == "center":
            return resize_center_crop(image, self.resize, self.crop)
        # The five crops and their mirror images (ten_crop would mirror the image first, moving an odd-margin
        # centre by a pixel).
        crops = TF.five_crop(TF.resize(image, [self.resize], antialias=True), [self.crop, self.crop])
        return torch.stack([*crops, *(c.flip(-1) for c in crops)])  # (10, 3, crop, crop)

    def with_protocol(self, protocol: str, scales=PAPER_SCALES) -> "ImageNetFolder":
        if protocol not in PROTOCOLS:
            raise UserError(f"unknown test protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        part = copy.copy(self)
        part.protocol, part.scales = protocol, tuple(scales)
        return part

    def for_evaluation(self) -> "ImageNetFolder":
        return self  # its evaluation items (indices, not training tuples) count unreadable files out already

    def sample(self, n: int, workers: int = 0) -> ArrayDataset:
        """n centre crops spread over the folder, whatever this object's protocol (see StreamedFolder.sample)."""
        return StreamedFolder.sample(self.with_protocol("center"), n, workers)
