"""Weights interchange with torchvision: same keys and shapes for option-B post-activation presets."""

from pathlib import Path

import torch

from ..errors import UserError
from .registry import create_model
from .resnet import ResNet


def from_torchvision(name: str, weights: str | Path | dict) -> ResNet:
    """Our `name` preset built as torchvision builds it (stride on the 3x3) with torchvision's weights loaded.

    `weights` is a torchvision state_dict or the path of a torchvision weights file (e.g. resnet50-0676ba61.pth),
    loaded with weights_only=True so no code runs.
    """
    if not isinstance(weights, dict):
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise UserError(f"cannot read torchvision weights {weights}: {e}") from e
    num_classes = weights["fc.weight"].shape[0] if "fc.weight" in weights else None
    model = create_model(name, num_classes, stride_in_1x1=False)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise UserError(f"these weights do not fit {name}: {first}") from e
    return model
