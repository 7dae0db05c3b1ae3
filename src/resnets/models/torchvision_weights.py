"""Weights interchange with torchvision: same keys and shapes for option-B post-activation presets."""

import pickle
from pathlib import Path

import torch

from ..errors import UserError, first_line
from .registry import create_model
from .resnet import ResNet

# What torchvision's ImageNet weights (IMAGENET1K_V1, the files named <arch>-<hash>.pth) were trained and are
# evaluated with: per-channel mean and std of ImageNet, shorter side resized to 256, centre 224 crop
# (torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()); as preprocessing.Preprocessing.from_dict
# reads it.
PREPROCESSING = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": 224, "resize": 256,
                 "in_channels": 3}


def read_torchvision(path: str | Path) -> dict:
    """The state_dict in a torchvision weights file, loaded with weights_only=True so no code runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # A missing file, a damaged zip, a pickle that is not weights (or wants to run code), an empty file.
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"cannot read torchvision weights {path}: {first_line(e)}") from None


def from_torchvision(name: str, weights: str | Path | dict) -> ResNet:
    """Our `name` preset built as torchvision builds it (stride on the 3x3) with torchvision's weights loaded.

    `weights` is a torchvision state_dict or the path of a torchvision weights file (e.g. resnet50-0676ba61.pth),
    loaded with weights_only=True so no code runs.
    """
    if not isinstance(weights, dict):
        weights = read_torchvision(weights)
    num_classes = weights["fc.weight"].shape[0] if "fc.weight" in weights else None
    model = create_model(name, num_classes, stride_in_1x1=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise UserError(f"these weights do not fit {name}: {first}") from e
    return model
