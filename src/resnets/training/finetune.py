"""Fine-tuning: a training run that starts from trained weights (model.init) instead of random ones.

model.init names a torchvision weights file (a plain state_dict, read with weights_only=True) or anything
`resnets.load_model` reads: a checkpoint or run directory of ours, a safetensors export. The recipe's network must be
the weights' own: every tensor but the classifier's is there with its shape, and where the weights carry their model
config (ours) it agrees on what no tensor shows (shortcut A and plain nets hold the same tensors). The classifier is
kept when the data's classes are the weights' own; otherwise the run's new one, freshly initialised, takes its place.

The preprocessing travels with the weights: the run normalises with the mean and std they were trained with (ours:
the checkpoint's; torchvision's: its published ImageNet values), not with new estimates from the new data, unless
data.stats = "data". The backbone may train at a smaller lr than the classifier (optim.backbone_lr_factor, see
training/optimizer.py); freezing is the model's own (ResNet.freeze, model.freeze).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..config import Config
from ..errors import UserError, few
from ..models import ResNet, ResNetConfig
from ..models.torchvision_weights import PREPROCESSING, read_torchvision
from ..models.weights_file import is_safetensors
from ..preprocessing import Preprocessing
from ..serving.weights import load_model
from ..terminal import shown

# ResNetConfig fields that decide what the network computes; the others are the classifier's size or act only in
# training (dropout, drop_path, zero_init_last's initialisation), which fine-tuning may change.
CHANNELS = {1: "1-channel (grey)", 3: "RGB"}  # how messages name a network's input
ARCHITECTURE = ("block", "depths", "widths", "stem", "stem_width", "shortcut", "preact", "stride_in_1x1",
                "in_channels", "groups", "width_per_group")


@dataclass
class Init:
    """Trained weights to start from, and what they were trained with."""

    source: str  # how messages name them
    state: dict  # state_dict
    classes: list[str] | None  # None: torchvision's, whose file names none (ImageNet's 1000)
    preprocessing: Preprocessing
    config: ResNetConfig | None  # None: torchvision's, whose file has none


def read(spec: str) -> Init:
    """The weights model.init names; a one-line UserError if they cannot be read."""
    path = Path(spec).expanduser()
    # Not a safetensors export: torch.load reads those too, as a bare state_dict without their metadata.
    state = _plain_state_dict(path) if path.is_file() and not is_safetensors(path) else None
    if state is not None:
        return Init(f"torchvision weights {path}", state, None, Preprocessing.from_dict(PREPROCESSING), None)
    # Checkpoints, run directories, safetensors exports (and whatever names load_model learns to read).
    model, info = load_model(path if path.exists() else spec)
    return Init(spec, model.state_dict(), info["classes"], info["preprocessing"], ResNetConfig(**info["model_config"]))


def _plain_state_dict(path: Path) -> dict | None:
    """The file's tensors if it is a bare state_dict, torchvision's format; None for anything else, which
    load_model then reads or explains (a checkpoint of ours holds more than tensors)."""
    try:
        state = read_torchvision(path)
    except UserError:
        return None
    plain = isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())
    return state if plain else None


def start(cfg: Config, model: ResNet, train_set, init: Init | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cfg.model.init's weights (`init`, if read already) into `model` (built for the data's classes), saying what
    was loaded and what is new; returns the (mean, std) the weights were trained with, or None when data.stats =
    "data" asks for new ones."""
    init = init or read(cfg.model.init)
    new = load_weights(init, model, train_set.classes, cfg.model.name)
    stats = None if cfg.data.stats == "data" else weights_stats(init, train_set.image_shape)
    if distributed.rank() == 0:
        print(shown(_loaded(init, model, new, train_set.classes)))  # names from files
        print("model.init: normalising with " + ("new statistics of this data (data.stats=data)" if stats is None
                                                 else f"the weights' own statistics ({_describe(init)})"))
    return stats


def load_weights(init: Init, model: ResNet, classes: list[str], name: str) -> list[str]:
    """init's tensors into `model`; returns the names of the model's tensors left as they were (the classifier's,
    when the data's classes are not the weights'). UserError naming the first tensor that does not fit."""
    theirs, ours = init.preprocessing.in_channels, model.config.in_channels
    if theirs != ours:  # no model option changes this: the network is built for the data's channels
        raise UserError(f"model.init {init.source} was trained on {CHANNELS.get(theirs, theirs)} images and the "
                        f"data holds {CHANNELS.get(ours, ours)} ones: a run trains on its data's channels (eval and "
                        "predict convert images, training does not); start from weights trained on such images")
    own = model.state_dict()
    same_classes = (init.classes == list(classes) if init.classes is not None
                    else init.state.get("fc.weight", torch.empty(0)).shape[:1] == (len(classes),))
    new = [] if same_classes else [k for k in own if k.startswith("fc.")]
    problem = _first_misfit({k: v for k, v in init.state.items() if k not in new},
                            {k: v for k, v in own.items() if k not in new}, name)
    problem = problem or _config_misfit(init, model.config)
    if problem:
        raise UserError(f"model.init {init.source} does not fit {name}: {problem}; set model.name (and model "
                        "options) to the weights' network")
    model.load_state_dict({**own, **{k: v for k, v in init.state.items() if k not in new}})
    return new


def _first_misfit(theirs: dict, ours: dict, name: str) -> str:
    """"" if both have the same tensor names and shapes, else what differs for the first tensor that does. BN's
    step counters may be missing: files older than them (torchvision's first weights) load as load_state_dict
    loads them, with ours kept."""
    for key, tensor in ours.items():
        if key not in theirs:
            if key.endswith("num_batches_tracked"):
                continue
            return f"they have no {key}"
        if theirs[key].shape != tensor.shape:
            return f"their {key} is {tuple(theirs[key].shape)}, {name}'s {tuple(tensor.shape)}"
    extra = next((key for key in theirs if key not in ours), None)
    return f"they hold {extra}, which {name} lacks" if extra else ""


def _config_misfit(init: Init, config: ResNetConfig) -> str:
    """What the tensors cannot show: a model config field that differs (ours), or torchvision's stride placement."""
    if init.config is None:
        if config.block == "bottleneck" and config.stride_in_1x1:
            return ("torchvision's bottleneck networks have their stride on the 3x3 (\"v1.5\"), this one on the 1x1: "
                    "set model.stride_in_1x1=false")
        return ""
    field = next((f for f in ARCHITECTURE if getattr(init.config, f) != getattr(config, f)), None)
    if field is None:
        return ""
    return f"they were trained as {field}={getattr(init.config, field)!r}, this run builds {getattr(config, field)!r}"


def weights_stats(init: Init, image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std the weights were trained with, for images of `image_shape`. A per-pixel mean fits only
    images of its own size (a different size trains on with per-channel statistics, which hold at any size)."""
    mean, std = init.preprocessing.mean, init.preprocessing.std
    _, size, _ = image_shape
    if mean.shape[-1] > 1 and mean.shape[-2:] != (size, size):
        side = mean.shape[-1]
        raise UserError(f"model.init {init.source} was trained with a per-pixel mean of {side}x{side} images, and "
                        f"this data gives {size}x{size}: resize it (data.image_size={side}) or estimate new "
                        "statistics (data.stats=data)")
    return mean, std


def _loaded(init: Init, model: ResNet, new: list[str], classes: list[str]) -> str:
    loaded = sum(v.numel() for k, v in init.state.items() if k not in new and k in dict(model.named_parameters()))
    text = f"model.init: {len(init.state) - len(new)} tensors ({loaded:,} parameters) from {init.source}"
    if not new:
        return text + f"; classifier kept (the same {len(classes)} classes)"
    if init.classes is not None:
        why = f"the data's classes {few(classes)} are not the weights' {few(init.classes)}"
    else:
        had = init.state["fc.weight"].shape[0] if "fc.weight" in init.state else "none"
        why = f"{len(classes)} classes; the weights' classifier had {had}"
    return text + f"; new, freshly initialised: {', '.join(new)} ({why})"


def _describe(init: Init) -> str:
    pre = init.preprocessing
    side = pre.mean.shape[-1]
    kind = f"per-pixel mean of {side}x{side} images" if side > 1 else "per-channel"
    resized = f" (shorter side resized to {pre.resize} first)" if pre.resize != pre.input_size else ""
    return f"{kind}; trained on {pre.input_size}x{pre.input_size} inputs{resized}"


def frozen(model: ResNet) -> str:
    """"" or what model.freeze fixed, for the run's first lines."""
    if not model.frozen_stages:
        return ""
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    stages = ", ".join(model.stage_names[: model.frozen_stages])
    return f"model.freeze={model.frozen_stages}: stem and {stages} frozen ({fixed:,} of {total:,} parameters, BN statistics too)"
