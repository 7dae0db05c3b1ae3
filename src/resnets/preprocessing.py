"""How a decoded image becomes a network's input: one typed object that travels with the weights (checkpoints,
exports, packaged weights), as torchvision's `Weights.transforms` travels with its weights.

Checkpoints and exports store it as the dict `to_dict` gives (mean and std tensors, input_size, resize,
in_channels), the same dict since the first checkpoints; `from_dict` reads every version of it.
"""

from dataclasses import dataclass

import torch

from .errors import UserError

KEYS = ("mean", "std", "input_size", "resize", "in_channels")  # the stored dict's keys, in its order


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """A decoded uint8 (C, H, W) image -> the network's float32 (in_channels, input_size, input_size) input:
    channels converted (data.decode.to_channels), shorter side resized to `resize`, the centre input_size square
    (data.folders.resize_center_crop), then (x / 255 - mean) / std, as training normalised its batches.

    mean and std broadcast against the input: (C, 1, 1) per channel, or (C, S, S) per pixel (the paper's CIFAR-10
    mean image). They are float32 copies on the CPU, never changed in place; equal objects have equal fields.
    """

    mean: torch.Tensor
    std: torch.Tensor
    input_size: int
    resize: int
    in_channels: int

    def __post_init__(self):
        for name in ("mean", "std"):
            object.__setattr__(self, name, _statistic(name, getattr(self, name)))

    @classmethod
    def from_dict(cls, stored: dict) -> "Preprocessing":
        """From a checkpoint's or an export's dict: mean and std as tensors or (nested) lists."""
        missing = [k for k in KEYS if k not in stored and k != "resize"]
        if missing:
            raise UserError(f"the preprocessing lacks {', '.join(missing)}")
        # Checkpoints written before preprocessing recorded `resize` were trained on images of input_size.
        resize = stored.get("resize", stored["input_size"])
        return cls(stored["mean"], stored["std"], int(stored["input_size"]), int(resize), int(stored["in_channels"]))

    def to_dict(self) -> dict:
        """As checkpoints store it (the tensors copied: the dict's owner may change them)."""
        return {k: getattr(self, k) for k in KEYS} | {"mean": self.mean.clone(), "std": self.std.clone()}

    @property
    def shape(self) -> tuple[int, int, int]:
        """The network input's (channels, height, width)."""
        return self.in_channels, self.input_size, self.input_size

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded uint8 (C, H, W) image as uint8 `shape`: everything but the normalisation, which `normalize`
        does on a whole batch (on its device: uint8 is a quarter of float32 to move there)."""
        # Imported here: resnets.data imports torchvision (seconds), and `import resnets` imports this module.
        from .data.decode import to_channels
        from .data.folders import resize_center_crop

        return resize_center_crop(to_channels(image, self.in_channels), self.resize, self.input_size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of `shape` (any leading dimensions) -> float32 (x / 255 - mean) / std, on their device."""
        from .data import normalize

        return normalize(images, self.mean, self.std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One decoded uint8 (C, H, W) image -> the float32 network input of `shape`."""
        return self.normalize(self.crop(image))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Preprocessing):
            return NotImplemented
        return (self._sizes() == other._sizes() and torch.equal(self.mean, other.mean)
                and torch.equal(self.std, other.std))

    def __hash__(self) -> int:
        return hash((self._sizes(), self.mean.numpy().tobytes(), self.std.numpy().tobytes()))

    def _sizes(self) -> tuple[int, int, int]:
        return self.input_size, self.resize, self.in_channels


def _statistic(name: str, value) -> torch.Tensor:
    """A float32 CPU copy of mean or std; a flat list (per channel, as torchvision publishes them) as (C, 1, 1)."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device="cpu").clone()
    tensor = tensor.view(-1, 1, 1) if tensor.dim() == 1 else tensor
    if tensor.dim() != 3:
        raise UserError(f"the preprocessing's {name} has shape {tuple(tensor.shape)}; expected (C, 1, 1) or (C, H, W)")
    return tensor
