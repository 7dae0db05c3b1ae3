"""Typed training configs: recipe files (TOML) plus `key=value` overrides, checked against dataclasses."""

import math
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from .errors import UserError, close_matches, did_you_mean
from .models import ResNetConfig, model_config
from .schedule import SCHEDULES, ScheduleSection


@dataclass
class ModelSection:
    name: str = "resnet20"
    options: dict = field(default_factory=dict)  # any ResNetConfig field, e.g. {shortcut = "B"}
    # Fine-tuning (resnets.training.finetune): start from these weights instead of random ones: a torchvision weights file,
    # a checkpoint or run directory of ours, a safetensors export, or shipped weights (resnet20:cifar10). "" = scratch.
    init: str = ""
    freeze: int = 0  # freeze the stem and the first N stages, BN statistics included (0: train everything)


@dataclass
class DataSection:
    path: str = "digits"  # the embedded digits, a CIFAR archive/folder, or a root/<class>/<image> folder
    val_split: int = 0  # hold out this many training images for validation (0: use the test split)
    download: bool = False  # fetch CIFAR-10/100 from the official address (MD5-checked) if data.path is missing
    split_seed: int = 0  # which images are held out; the same (val_split, split_seed) always picks the same
    pad: int = 4  # the paper's CIFAR augmentation: zero-pad 4 pixels, random crop back to size ...
    flip: bool = True  # ... and a random horizontal flip
    image_size: int = 0  # image folders: resize + centre-crop every image to this side (0: keep, all equal)
    normalize: str = "pixel_mean"  # the paper subtracts the per-pixel mean; "channel" = per-channel mean/std
    cache_dir: str = "~/.cache/resnets"  # decoded image folders are kept here
    # Image folders: "memory" decodes all images once (fast for small images such as CIFAR's), "stream"
    # decodes each batch in `workers` processes; "auto" streams when the decoded folder would exceed 4 GiB.
    loader: str = "auto"
    workers: int = 0  # decoding processes per training process; 0 = its share of the CPU cores, at most 8
    # ImageNet-style folders of images of any size (He et al. 2015, Sec. 3.4), decoded and cropped image by image
    # in the workers; crop = 0 keeps the fixed-size path above (image_size, pad, loader do not apply otherwise).
    crop: int = 0  # training: a random crop x crop square; evaluation: the centre one (the paper: 224)
    # Training, required with crop: shorter side resized to a random integer in [lo, hi] first ([256, 480]).
    scale: list[int] = field(default_factory=list)
    resize: int = 0  # evaluation: shorter side resized to this before the centre crop (256); 0 = crop
    lighting: float = 0.0  # std of AlexNet's PCA colour noise (the paper's "standard color augmentation": 0.1)
    cutout: int = 0  # side in pixels of the square Cutout (DeVries & Taylor 2017) sets to the mean; 0: none (paper)
    # With model.init: "init" normalises with the mean and std the weights were trained with (the network expects
    # them), "data" estimates new ones from this data as data.normalize says. Without model.init: always "data".
    stats: str = "init"


@dataclass
class OptimSection:
    # Per step. Under torchrun, N processes take N x batch_size images per step, and the lr used is N x lr (the
    # linear scaling rule, Goyal et al. 2017); the run.procs processes of one `resnets train` share batch_size.
    batch_size: int = 128
    lr: float = 0.1  # for batch_size images per step
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    # Weight averaging: an exponential moving average of the weights, updated after every step with this decay
    # (e.g. 0.999: about the last 1,000 steps), evaluated and saved with BN statistics of its own, recomputed on
    # training batches before each evaluation (training/loop.py). 0: off, the paper's.
    ema_decay: float = 0.0
    # The lr of every layer but the classifier, as a fraction of lr: fine-tuning changes trained layers less than
    # the new classifier (resnets.training.optimizer.param_groups).
    backbone_lr_factor: float = 1.0
    # True: every weight decays, BN's too (the paper: Caffe's default); false: the 1-d ones (BN's scales and shifts,
    # biases) do not, a choice of fast recipes.
    decay_bn_and_bias: bool = True


@dataclass
class RunSection:
    seed: int = 0
    eval_every: int = 1000  # iterations (epochs if schedule.unit = "epoch") between evaluations and checkpoints
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | fp32
    channels_last: bool = True
    # Processes `resnets train` starts on this machine, sharing each step's batch_size images (gradients averaged,
    # BN statistics per process, as on the paper's two GPUs): 0 = auto, 2 on a CPU with 2+ threads, else 1.
    # A new run records the number chosen; 0 in a run's config.toml means one process (runtime.training_processes).
    procs: int = 0
    keep_memory: bool = True  # glibc's malloc keeps freed memory for the next step (runtime.keep_freed_memory)
    compile: bool = False  # measured: torch.compile slows CPU training of these nets (benchmarks/train_speed.py)
    keep_checkpoints: int = 2  # the newest N; at least 1, the one a resume starts from
    sync_bn: bool = False  # torchrun on GPUs: BN statistics over all processes' images (nn.SyncBatchNorm)
    tensorboard: bool = False  # also log the metrics to run_dir/tensorboard (needs `pip install tensorboard`)


@dataclass
class PaperSection:
    """What the paper reports for this recipe, so a reproduction report can set our number beside it."""

    top1_error: float = 0.0  # percent; 0 = nothing reported
    source: str = ""  # e.g. "He et al. 2015, Table 6 (CIFAR-10 test set)"


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    run: RunSection = field(default_factory=RunSection)
    paper: PaperSection = field(default_factory=PaperSection)

    def to_dict(self) -> dict:
        return asdict(self)

    def model_config(self, num_classes: int, in_channels: int) -> ResNetConfig:
        for name in ("num_classes", "in_channels"):
            if name in self.model.options:
                raise UserError(f"model.{name} is taken from the data (its classes, its images' channels); drop it")
        return model_config(self.model.name, num_classes, in_channels=in_channels, **self.model.options)


SECTIONS = {f.name: f.type for f in fields(Config)}
# The allowed values of text keys; a table (a dict) stands for its keys, looked up when a value is checked.
CHOICES = {
    "schedule.kind": SCHEDULES,
    "schedule.unit": ("iteration", "epoch"),
    "schedule.warmup": ("constant", "linear"),
    "data.normalize": ("pixel_mean", "channel"),
    "data.loader": ("auto", "memory", "stream"),
    "run.precision": ("auto", "bf16", "fp32"),
    "data.stats": ("init", "data"),
}
# Where each number may lie, in interval notation ("[" and "]" include the end, "(" and ")" exclude it; a list's
# interval holds for each item), checked whatever the value's source (recipe, override, a run's config.toml), so
# that nothing torch refuses or misreads gets past load_config. Besides, every float must be finite and every
# integer fit in 64 bits (_check_plain). Sides in pixels stop at 65536, far beyond any image a network here takes.
# SGD hands lr and weight_decay to its float32 kernels as scalars (param.add_(grad, alpha=-lr)), which refuse one
# beyond float32's largest, 3.4e38, with a traceback at the first step.
RANGES = {
    "data.val_split": "[0, inf)", "data.pad": "[0, 65536]", "data.image_size": "[0, 65536]",
    "data.workers": "[0, 1024]", "data.crop": "[0, 65536]", "data.scale": "[1, 65536]", "data.resize": "[0, 65536]",
    "data.lighting": "[0, inf)", "data.cutout": "[0, 65536]", "model.freeze": "[0, 65536]", "run.procs": "[0, 1024]",
    "optim.batch_size": "[1, inf)", "optim.lr": "(0, 3.4e38]", "optim.momentum": "[0, 1)",
    "optim.weight_decay": "[0, 3.4e38]", "optim.label_smoothing": "[0, 1)", "optim.ema_decay": "[0, 1)",
    "optim.backbone_lr_factor": "(0, 1]",
    "schedule.iterations": "[1, inf)", "schedule.milestones": "[0, inf)", "schedule.gamma": "(0, 1]",
    "schedule.warmup_iterations": "[0, inf)", "schedule.warmup_factor": "[0, 1]", "schedule.patience": "[1, inf)",
    "schedule.min_delta": "[0, 1]",
    "run.eval_every": "[1, inf)", "run.keep_checkpoints": "[1, inf)",
    "paper.top1_error": "[0, 100]",
}


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def _suggest(key: str) -> str:
    """Keys like `key`, written in full or by their name alone (`lrr` -> optim.lr)."""
    by_name = {k.split(".")[1]: k for k in _all_keys()}
    close = close_matches(key, _all_keys(), cutoff=0.6)
    close += [by_name[n] for n in close_matches(key.split(".")[-1], by_name, cutoff=0.6)]
    return did_you_mean(list(dict.fromkeys(close))[:3], "; see `resnets train --help-keys`")


def _check_type(key: str, value, annotation):
    """The value converted to the declared type, or a UserError naming the key and the type or range wanted."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # milestones=32000 means [32000]
        if not isinstance(value, list):
            raise UserError(f"{key} must be a list, got {value!r}")
        return [_check_type(key, v, item) for v in value]
    _check_plain(key, value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise UserError(f"{key} must be {annotation.__name__}, got {value!r}")
    allowed = CHOICES.get(key)
    if allowed and value not in allowed:
        raise UserError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if key in RANGES:
        _check_range(key, value, RANGES[key])
    return value


def _check_plain(key: str, value) -> None:
    """What any value must be: floats finite, integers within TOML's 64 bits, text that config.toml can hold."""
    if isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            _check_plain(key, item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value!r}")
    elif isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise UserError(f"{key}={value} does not fit in 64 bits")
    elif isinstance(value, str) and ("\0" in value or not _utf8(value)):
        # A NUL ends a path in the OS; bytes that are not UTF-8 (an odd file name, as Python reads it) cannot be
        # written to config.toml, which is UTF-8.
        raise UserError(f"{key}={value!r} holds a NUL or bytes that are not UTF-8; rename the file or folder")


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_range(key: str, value, interval: str) -> None:
    low, high = interval[1:-1].split(", ")
    above = value > float(low) or (interval[0] == "[" and value == float(low))
    below = value < float(high) or (interval[-1] == "]" and value == float(high))
    if not (above and below):
        wanted = f"in {interval}" if high != "inf" else f"at least {low}" if interval[0] == "[" else f"above {low}"
        raise UserError(f"{key} must be {wanted}, got {value!r}")


def _set(cfg: Config, key: str, value) -> None:
    section_name, _, name = key.partition(".")
    if key == "model.options":  # a table of model.<field> values
        if not isinstance(value, dict):
            raise UserError(f"model.options must be a table of model options, got {value!r}")
        cfg.model.options = {}
        for option, option_value in value.items():
            _set_model_option(cfg, str(option), option_value)
        return
    if section_name == "model" and name not in _field_names(ModelSection):
        _set_model_option(cfg, name, value)
        return
    section = getattr(cfg, section_name, None) if section_name in SECTIONS else None
    types_ = {f.name: f.type for f in fields(section)} if section is not None else {}
    if name not in types_:
        raise UserError(f"unknown config key {key!r}{_suggest(key)}")
    setattr(section, name, _check_type(key, value, types_[name]))


def _field_names(section) -> set[str]:
    return {f.name for f in fields(section)}


def _set_model_option(cfg: Config, name: str, value) -> None:
    """model.<field> sets a ResNetConfig field (model.shortcut=B, model.zero_init_last=true), which checks it."""
    if name not in ResNetConfig.field_names():
        close = close_matches(name, ResNetConfig.field_names(), cutoff=0.6)
        raise UserError(f"unknown model option {name!r}{did_you_mean(close)}")
    _check_plain(f"model.{name}", value)
    cfg.model.options[name] = value


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full != "model.options":
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def _resolve_key(key: str) -> str:
    """`lr` -> `optim.lr` when exactly one section has such a key."""
    if "." in key:
        return key
    matches = [k for k in _all_keys() if k.split(".")[1] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches and key in ResNetConfig.field_names():
        return f"model.{key}"
    raise UserError(f"unknown config key {key!r}{_suggest(key)}" if not matches
                    else f"{key!r} is ambiguous: write one of {', '.join(matches)}")


def parse_value(text: str):
    """A command-line value read as a TOML literal (0.1, true, [1, 2], "x"); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if "," in text:  # milestones=32000,48000
            return [parse_value(part) for part in text.split(",")]
        return text


def recipe_path(recipe: str) -> Path:
    """A recipe file: a path, or a name of the packaged recipes such as `cifar10/resnet20`."""
    path = Path(recipe)
    if path.is_file():
        return path
    packaged = resources.files("resnets") / "recipes" / f"{recipe.removesuffix('.toml')}.toml"
    if packaged.is_file():
        return Path(str(packaged))
    names = list_recipes()
    hint = did_you_mean(close_matches(recipe, names), f"; packaged recipes: {', '.join(names)}")
    raise UserError(f"no recipe {recipe!r}{hint}")


def list_recipes() -> list[str]:
    root = Path(str(resources.files("resnets") / "recipes"))
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.toml"))


def load_config(recipe: str | None = None, overrides: list[str] | dict = ()) -> Config:
    """Defaults, then the recipe file, then `key=value` overrides; every key and type is checked."""
    cfg = Config()
    if recipe is not None:
        path = recipe_path(recipe)
        try:
            table = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"recipe {path} is not valid TOML: {e}") from None
        _apply(cfg, table)
    items = overrides.items() if isinstance(overrides, dict) else [split_override(o) for o in overrides]
    for key, value in items:
        _set(cfg, _resolve_key(key), parse_value(value) if isinstance(value, str) else value)
    cfg.model_config(num_classes=10, in_channels=3)  # fails now, not after loading data, on a bad model option
    _check_together(cfg)
    return cfg


def from_dict(table: dict) -> Config:
    """A config saved as a table (Config.to_dict(), e.g. a checkpoint's), checked as a recipe is. Keys added since
    it was saved take their defaults, which is what the run that saved it trained with."""
    cfg = Config()
    _apply(cfg, table)
    _check_together(cfg)
    return cfg


def _apply(cfg: Config, table: dict) -> None:
    for key, value in _flatten(table).items():
        _set(cfg, key, value)


def _check_together(cfg: Config) -> None:
    """Values fine one by one but not with each other."""
    if cfg.optim.nesterov and not cfg.optim.momentum:
        raise UserError("optim.nesterov=true needs momentum: set optim.momentum above 0 (the paper's is 0.9)")
    stages = len(cfg.model_config(num_classes=10, in_channels=3).depths)
    if cfg.model.freeze > stages:
        raise UserError(f"model.freeze={cfg.model.freeze} but {cfg.model.name} has {stages} stages; freeze at most "
                        f"{stages} (all of them: only the classifier learns)")
    _check_crop(cfg.data)


def _check_crop(data: DataSection) -> None:
    if not data.crop:
        return
    if len(data.scale) != 2 or not data.crop <= data.scale[0] <= data.scale[1]:
        raise UserError(f"data.crop={data.crop} needs data.scale = [lo, hi] with {data.crop} <= lo <= hi, the range "
                        f"of the shorter side before the crop (the paper: [256, 480]); got {data.scale}")
    if data.resize and data.resize < data.crop:
        raise UserError(f"data.resize={data.resize} is smaller than data.crop={data.crop}")
    if data.pad:
        raise UserError("data.pad is the fixed-size images' augmentation; with data.crop set data.pad=0")


def split_override(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise UserError(f"expected key=value, got {override!r}")
    return key.strip(), value.strip()


def help_keys(cfg: Config) -> str:
    """Every key with the value it has in `cfg` (the recipe a command would train with)."""
    values = cfg.to_dict()
    lines = [f"{key} = {values[section][name]!r}" for key in _all_keys() for section, name in [key.split(".")]]
    lines.append("model.<option> = any of " + ", ".join(ResNetConfig.field_names()))
    return "\n".join(lines)
