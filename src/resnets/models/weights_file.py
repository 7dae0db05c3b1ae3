"""The safetensors file of a trained network: what `resnets export --format safetensors` writes and what the networks
we ship are. The weights and the preprocessing's mean and std are tensors; the model config, the class names and the
rest of the preprocessing are JSON metadata (the same metadata the ONNX and .pt2 exports carry). Read without
unpickling anything, by serving.weights.load_model and by create_model(name, pretrained=...).
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError

FORMAT = "resnets-export-1"  # metadata "format" of every export
STATS = ("mean", "std")  # the preprocessing's tensors; an export stores the rest of it as JSON


def metadata(model_config: dict, classes: list[str], preprocessing: dict, stats: bool) -> dict[str, str]:
    """str -> str metadata of an export; the preprocessing's mean and std as nested lists when `stats` (a
    safetensors file stores them as tensors instead)."""
    pre = {k: (v.tolist() if k in STATS else v) for k, v in preprocessing.items() if stats or k not in STATS}
    return {"format": FORMAT, "model_config": json.dumps(model_config), "classes": json.dumps(classes),
            "preprocessing": json.dumps(pre)}


def write(path: str | Path, state: dict, model_config: dict, classes: list[str], preprocessing: dict) -> None:
    tensors = {k: v.contiguous() for k, v in state.items()}
    tensors |= {f"preprocessing.{k}": preprocessing[k].contiguous() for k in STATS}
    save_file(tensors, str(path), metadata=metadata(model_config, classes, preprocessing, stats=False))


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian), then '{'."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def read(path: Path) -> tuple[dict, dict[str, torch.Tensor], list[str], dict]:
    """(model_config, state_dict, classes, preprocessing dict) of an export; a UserError if it is none or damaged."""
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
