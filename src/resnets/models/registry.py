"""Look networks up by name: the CLI, recipes and tests all go through here."""

import fnmatch
import re
from dataclasses import replace

from ..errors import UserError, close_matches, did_you_mean
from . import weights_file
from .presets import PRESETS
from .pretrained import packaged_file
from .resnet import ResNet, ResNetConfig


def _natural(name: str) -> list:
    # "resnext29_8x64d" -> ["resnext", 29, "_", 8, "x", 64, "d"]: numbers compare as numbers, so depths and
    # widths sort in order (resnet20 < resnet110, resnext29_8x64d < resnext29_16x64d).
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style pattern, e.g. list_models("plain*"), in natural (depth) order."""
    return sorted((name for name in PRESETS if fnmatch.fnmatch(name, pattern)), key=_natural)


def model_config(name: str, num_classes: int | None = None, **overrides) -> ResNetConfig:
    if name not in PRESETS:
        raise UserError(f"unknown model {name!r}{did_you_mean(close_matches(name, PRESETS))} (see `resnets summary`)")
    fields = ResNetConfig.field_names()
    for key in overrides:
        if key not in fields:
            raise UserError(f"unknown model option {key!r}{did_you_mean(close_matches(key, fields))}")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return replace(PRESETS[name], **overrides)


def create_model(name: str, num_classes: int | None = None, pretrained: str | None = None, **overrides) -> ResNet:
    """Build preset `name`, e.g. create_model("resnet50", shortcut="C") or create_model("resnet20", num_classes=100).

    pretrained="cifar10" loads the weights this project trained and ships (resnets.models.pretrained; offline). The
    network comes in training mode, as every new module does: call .eval() before inference, or use
    resnets.load_model("resnet20:cifar10"), which also returns the classes and preprocessing.
    """
    config = model_config(name, num_classes, **overrides)
    if pretrained is None:
        return ResNet(config)
    shipped, state, _, _ = weights_file.read(packaged_file(f"{name}:{pretrained}"))
    if ResNetConfig(**shipped) != config:
        theirs, ours = ResNetConfig(**shipped).to_dict(), config.to_dict()
        key = next(k for k in ours if ours[k] != theirs[k])
        raise UserError(f"the {name}:{pretrained} weights have {key}={theirs[key]!r}, not {ours[key]!r}: leave "
                        f"{key} out to load them")
    model = ResNet(config)
    model.load_state_dict(state)
    return model
