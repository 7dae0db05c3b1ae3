"""Networks this project trained to the end of a paper recipe, shipped inside the package, e.g. "resnet20:cifar10".

Each is a safetensors export (`resnets export`: fp32 weights, classes and preprocessing as metadata, read
without unpickling) under `resnets/models/weights/`, one row of `PRETRAINED` with what its model card in
docs/PRETRAINED.md says: the held-out error that `resnets eval` computes on the images the run held out.
"""

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserError

NAME = re.compile(r"([a-z][\w.-]*):([a-z][\w.-]*)")  # network:dataset, e.g. resnet20:cifar10


@dataclass(frozen=True)
class Pretrained:
    file: str  # under resnets/models/weights/
    sha256: str  # of that file: a damaged install is refused, not run
    heldout_top1_error: float  # `resnets eval NAME --data <cifar10-jpg train> --val-split 5000`, fp32
    val_split: int  # the run held out this many training images...
    split_seed: int  # ...chosen with this seed (data.val_split / data.split_seed)


PRETRAINED: dict[str, Pretrained] = {
    "resnet20:cifar10": Pretrained("resnet20-cifar10.safetensors",
                                   "086cf24185918acc430063a52181bfa8363061756d8db523e0f5b5e5d92f42f0",
                                   heldout_top1_error=0.1208, val_split=5000, split_seed=0),
    "resnet32:cifar10": Pretrained("resnet32-cifar10.safetensors",
                                   "d3d72443635cce2b04d84bacaae9972272f20fd03da32bf7570c91637d301bff",
                                   heldout_top1_error=0.1100, val_split=5000, split_seed=0),
    "resnet56:cifar10": Pretrained("resnet56-cifar10.safetensors",
                                   "6a3e5d7095a6c8bd2cf697b825b4a4c61864b390333005f02928ccdfed46aad7",
                                   heldout_top1_error=0.1120, val_split=5000, split_seed=0),
}


def is_name(text: str) -> bool:
    """Whether `text` looks like "network:dataset" rather than a path (an existing file of that name wins)."""
    return bool(NAME.fullmatch(text)) and not Path(text).exists()


def packaged_file(name: str) -> Path:
    """The packaged safetensors file of `name` ("resnet20:cifar10"), checked against its sha256."""
    if name not in PRETRAINED:
        shipped = ", ".join(PRETRAINED) or "none yet"
        raise UserError(f"no packaged weights named {name!r} (shipped: {shipped}; see docs/PRETRAINED.md)")
    entry = PRETRAINED[name]
    path = Path(str(resources.files("resnets.models") / "weights" / entry.file))
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"the packaged weights of {name} are missing ({e.strerror}): reinstall resnets") from None
    if digest != entry.sha256:
        raise UserError(f"the packaged weights of {name} are damaged ({path} fails its sha256): reinstall resnets")
    return path
