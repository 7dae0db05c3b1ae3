"""The one model loader: a trained network and what it was trained with, from wherever weights are kept.

`load_model` reads a checkpoint (or a run directory's newest), a safetensors export (`resnets export`) or the
name of packaged weights; eval, predict, embed, export, fine-tuning and the paper's commands all load through it.
"""

from pathlib import Path

import torch

from ..errors import UserError, first_line
from ..models import ResNet, ResNetConfig, pretrained, weights_file
from ..preprocessing import Preprocessing
from ..rundir import load_checkpoint

# The exports `resnets export` writes but resnets does not load (serving.export.FORMATS takes its checkers from
# here), by extension, with what runs them.
RUN_ELSEWHERE = {".onnx": "onnxruntime", ".pt2": "torch.export.load"}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResNet, dict]:
    """(network in eval mode, info) from a checkpoint, a run directory (its newest checkpoint), a safetensors
    export or the name of packaged weights ("resnet20:cifar10", see resnets.models.pretrained). info = {"classes",
    "preprocessing" (a preprocessing.Preprocessing), "model_config"}. Nothing is unpickled beyond tensors
    (checkpoints: weights_only=True).
    """
    path = pretrained.packaged_file(path) if pretrained.is_name(str(path)) else Path(path)
    if weights_file.is_safetensors(path):
        config, state, classes, pre = weights_file.read(path)
    elif path.suffix == ".safetensors" and path.is_file():
        raise UserError(f"{path} is not a safetensors file")
    else:
        ckpt = _checkpoint(path)
        missing = [k for k in ("model_config", "model", "classes", "preprocessing") if k not in ckpt]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}: not a complete resnets checkpoint")
        config, state, classes, pre = ckpt["model_config"], ckpt["model"], ckpt["classes"], ckpt["preprocessing"]
    try:
        model = ResNet(ResNetConfig(**config))
        model.load_state_dict(state)
    except (TypeError, RuntimeError) as e:
        raise UserError(f"{path}: the weights do not fit the model config ({first_line(e, 200)})") from None
    if len(classes) != model.config.num_classes:
        raise UserError(f"{path} names {len(classes)} classes for a network of {model.config.num_classes} outputs")
    info = {"classes": list(classes), "preprocessing": Preprocessing.from_dict(pre),
            "model_config": model.config.to_dict()}
    return model.to(device).eval(), info


def _checkpoint(path: Path) -> dict:
    """load_checkpoint's contents; where `path` is not a checkpoint, a one-line error that says what it is."""
    try:
        return load_checkpoint(path)
    except UserError:
        if path.suffix in RUN_ELSEWHERE and path.is_file():
            raise UserError(f"{path} is a {path.suffix[1:]} export, which resnets does not read back: run it with "
                            f"{RUN_ELSEWHERE[path.suffix]}, or give resnets the checkpoint, run directory or "
                            ".safetensors export it came from") from None
        if not path.exists() and path.name == str(path) and not path.suffix:  # a bare word: a network's name?
            raise UserError(f"{path} does not exist; packaged weights are named NETWORK:DATASET "
                            f"({', '.join(pretrained.PRETRAINED)}; docs/PRETRAINED.md)") from None
        raise
