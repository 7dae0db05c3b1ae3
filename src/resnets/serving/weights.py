"""The one model loader: a trained network and what it was trained with, from wherever weights are kept.

`load_model` reads a checkpoint (or a run directory's newest), a safetensors export (`resnets export`) or the
name of packaged weights; eval, predict, embed, export, fine-tuning and the paper's commands all load through it.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import UserError, first_line
from ..models import ResNet, ResNetConfig, pretrained
from ..training.run import load_checkpoint
from .preprocessing import Preprocessing

FORMAT = "resnets-export-1"  # metadata "format" of every export (serving.export writes it)
STATS = ("mean", "std")  # the preprocessing's tensors; an export stores the rest of it as JSON


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ResNet, dict]:
    """(network in eval mode, info) from a checkpoint, a run directory (its newest checkpoint), a safetensors
    export or the name of packaged weights ("resnet20:cifar10", see resnets.models.pretrained). info = {"classes",
    "preprocessing" (a serving.preprocessing.Preprocessing), "model_config"}. Nothing is unpickled beyond tensors
    (checkpoints: weights_only=True).
    """
    path = pretrained.weights_file(path) if pretrained.is_name(str(path)) else Path(path)
    if is_safetensors(path):
        config, state, classes, pre = _read_safetensors(path)
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
        from .export import FORMATS  # export reads weights through this module: imported here, when needed

        export = next((name for name, f in FORMATS.items() if path.suffix == f.extension), None)
        if export and path.is_file():
            raise UserError(f"{path} is a {export} export, which resnets does not read back: run it with "
                            f"{FORMATS[export].checker}, or give resnets the checkpoint, run directory or .safetensors "
                            "export it came from") from None
        if not path.exists() and path.name == str(path) and not path.suffix:  # a bare word: a network's name?
            raise UserError(f"{path} does not exist; packaged weights are named NETWORK:DATASET "
                            f"({', '.join(pretrained.PRETRAINED)}; docs/PRETRAINED.md)") from None
        raise


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian), then '{'."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> tuple[dict, dict, list[str], dict]:
    """(model_config, state_dict, classes, preprocessing dict) of a safetensors export."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise UserError(f"{path} is a safetensors file but not a resnets export (no format={FORMAT} metadata)")
        state = load_file(path)
        pre = json.loads(meta["preprocessing"]) | {k: state.pop(f"preprocessing.{k}") for k in STATS}
        return json.loads(meta["model_config"]), state, json.loads(meta["classes"]), pre
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} is a damaged resnets safetensors export ({str(e).strip()[:120]})") from None
