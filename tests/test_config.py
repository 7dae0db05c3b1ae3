"""Issue 16, fix the class: every config value is checked where the config is built (config.load_config), so a bad
one is a one-line UserError before anything is written, and nothing unchecked reaches torch."""

import math
import tomllib
import typing
from dataclasses import fields, replace

import pytest
import tomli_w
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnets.cli import DEFAULT_RECIPE, main
from resnets.config import CHOICES, RANGES, SECTIONS, Config, from_dict, help_keys, list_recipes, load_config
from resnets.errors import UserError
from resnets.models import ResNet, list_models, model_config
from resnets.models.blocks import SHORTCUT_TYPES, STEMS
from resnets.schedule import in_iterations, lr_factor
from resnets.training.optimizer import param_groups


def _keys() -> list[str]:
    """Every key `resnets train --help-keys` lists, each model option (its last line) as model.<option>."""
    *lines, options = help_keys(load_config(DEFAULT_RECIPE)).splitlines()
    return [line.split(" = ")[0] for line in lines] + [f"model.{o}" for o in options.split("any of ")[1].split(", ")]


KEYS = _keys()
# Any character, surrogates (non-UTF-8 bytes of a file name, as Python reads them) and NUL included.
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
SCALARS = st.one_of(
    st.booleans(), st.integers(), st.integers(-3, 70_000), st.floats(), st.floats(-2, 2), TEXT,
    st.sampled_from(["auto", "cpu", "cuda:1", "step", "cosine", "epoch", "linear", "A", "none", "bottleneck",
                     "resnet56", "digits", "stream", "bf16"]),
)
VALUES = st.one_of(st.none(), SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(TEXT, SCALARS, max_size=3))
# Deterministic (derandomize): the suite gives the same verdict on every run; max_examples bounds its time.
BOUNDED = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ in-range values, from the config's own tables

INT64 = (-(2**63), 2**63 - 1)  # config._check_plain: what config.toml (TOML) can hold
# Text that config.toml can hold: UTF-8 (no surrogates), no NUL.
PLAIN_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)
FIELD_TYPES = {f"{section}.{f.name}": f.type for section, cls in SECTIONS.items() for f in fields(cls)}


def _number(key: str, kind: type) -> st.SearchStrategy:
    """A number of type `kind` in the interval RANGES gives `key` ("[0, inf)", "(0, 1]", ...); any 64-bit integer or
    finite float where it gives none."""
    interval = RANGES.get(key, "(-inf, inf)")
    open_low, open_high = interval[0] == "(", interval[-1] == ")"
    low, high = (float(end) for end in interval[1:-1].split(", "))
    if kind is int:
        return st.integers(INT64[0] if math.isinf(low) else int(low) + open_low,
                           INT64[1] if math.isinf(high) else int(high) - open_high)
    low, high = (None if math.isinf(end) else end for end in (low, high))
    return st.floats(low, high, exclude_min=open_low and low is not None, exclude_max=open_high and high is not None,
                     allow_nan=False, allow_infinity=False)


def _in_range(key: str) -> st.SearchStrategy:
    """Any value `key` accepts on its own: one of CHOICES, a number within RANGES, text config.toml can hold."""
    kind = FIELD_TYPES[key]
    if key in CHOICES:
        return st.sampled_from(list(CHOICES[key]))
    if typing.get_origin(kind) is list:
        return st.lists(_number(key, typing.get_args(kind)[0]), max_size=4)
    if kind is bool:
        return st.booleans()
    if kind in (int, float):
        return _number(key, kind)
    return PLAIN_TEXT


# The model: a preset of the registry, with options of ResNetConfig's own tables (a residual shortcut, so that a
# preset with stochastic depth keeps its branches).
MODEL = {
    "model.name": st.sampled_from(list_models()),
    "model.options": st.fixed_dictionaries({}, optional={
        "shortcut": st.sampled_from([name for name, kind in SHORTCUT_TYPES.items() if kind.residual]),
        "zero_init_last": st.booleans(), "dropout": st.floats(0, 1, exclude_max=True)}),
}


@st.composite
def in_range_configs(draw) -> dict:
    """A value for every key of the config, each in its range, and together as config._check_together wants them
    (nesterov with momentum, freeze within the network's stages, crop with its scale, resize and no pad)."""
    values = {key: draw(MODEL.get(key, _in_range(key))) for key in FIELD_TYPES}
    values["optim.nesterov"] &= values["optim.momentum"] > 0
    stages = len(model_config(values["model.name"], 10, **values["model.options"]).depths)
    values["model.freeze"] = draw(st.integers(0, stages))
    if values["data.crop"]:
        values["data.scale"] = sorted(draw(st.lists(st.integers(values["data.crop"], 65536), min_size=2,
                                                    max_size=2)))
        values["data.resize"] = draw(st.just(0) | st.integers(values["data.crop"], 65536))
        values["data.pad"] = 0
    return values


def test_help_keys_lists_every_key_and_a_model_option():
    assert len(KEYS) > 50 and {"optim.lr", "data.workers", "model.options", "model.dropout"} <= set(KEYS)


@settings(BOUNDED, max_examples=100)
@given(in_range_configs())
def test_every_key_in_its_range_is_accepted_round_trips_and_is_taken_by_torch(overrides):
    """The other side of the hostile tests below: a load_config that refused too much would pass them."""
    cfg = load_config(DEFAULT_RECIPE, {key: _typed(value) for key, value in overrides.items()})
    assert {key: _flat(cfg.to_dict())[key] for key in overrides} == overrides
    _round_trips_and_torch_takes_it(cfg)


# The hostile strategies, each key's value either hostile or in range: a share of the examples is valid, so that
# both branches of _valid_or_one_line are taken (with hostile values alone, 20 examples of 600 were valid).
IN_RANGE = {key: MODEL.get(key, _in_range(key)) for key in FIELD_TYPES}
FLOOR = 0.2  # the least share of valid examples each hostile test must see (measured: 0.33 typed, 0.26 as text)


def _pairs(hostile: st.SearchStrategy, typed=lambda value: value) -> st.SearchStrategy:
    """1 to 3 (key, value) pairs: any key --help-keys lists, with a hostile value or, as often, an in-range one
    passed through `typed`."""
    def value(key: str) -> st.SearchStrategy:
        return st.booleans().flatmap(lambda valid: IN_RANGE[key].map(typed) if valid and key in IN_RANGE else hostile)

    pair = st.sampled_from(KEYS).flatmap(lambda key: st.tuples(st.just(key), value(key)))
    return st.lists(pair, min_size=1, max_size=3)


def _literal(value) -> str:
    """`value` as a TOML literal, as a user would type it on the command line."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_literal(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def _typed(value):
    """`value` as the Python API takes it: text quoted, as load_config reads a dict's text as the command line's."""
    return _literal(value) if isinstance(value, str) else value


def _enough_valid(outcomes: list[bool]) -> None:
    assert len(outcomes) >= 100 and sum(outcomes) >= FLOOR * len(outcomes), f"{sum(outcomes)} of {len(outcomes)} valid"


def test_any_typed_values_give_a_valid_config_or_one_line():
    """Values as a recipe file or the Python API hands them over."""
    outcomes = []

    @BOUNDED
    @given(_pairs(VALUES, _typed))
    def check(pairs):
        outcomes.append(_valid_or_one_line(dict(pairs)))

    check()
    _enough_valid(outcomes)


def test_any_command_line_text_gives_a_valid_config_or_one_line():
    """Values as `resnets train KEY=VALUE` hands them over (read as TOML literals)."""
    hostile, outcomes = TEXT | st.sampled_from(["nan", "-inf", "1e999", "-1", "0"]), []

    @BOUNDED
    @given(_pairs(hostile, _literal))
    def check(pairs):
        outcomes.append(_valid_or_one_line([f"{key}={text}" for key, text in pairs]))

    check()
    _enough_valid(outcomes)


def _valid_or_one_line(overrides) -> bool:
    """Whether the overrides gave a valid config (checked further) rather than a one-line UserError."""
    try:
        cfg = load_config(DEFAULT_RECIPE, overrides)
    except UserError as e:
        assert str(e) and "\n" not in str(e) and "\r" not in str(e)
        return False
    _round_trips_and_torch_takes_it(cfg)
    return True


def _round_trips_and_torch_takes_it(cfg: Config) -> None:
    # It can be written as the run's config.toml and read back unchanged ...
    assert _reloaded(cfg).to_dict() == cfg.to_dict()
    # ... and torch takes every value the training loop hands it. (Not that the weights stay finite: an lr of
    # 1e300 is in range, and the loop stops the diverged run.)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)
    loss = F.cross_entropy(weight[None], torch.tensor([0]), label_smoothing=cfg.optim.label_smoothing)
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    schedule = in_iterations(cfg.schedule, 7)
    for it in {0, schedule.warmup_iterations, schedule.iterations - 1}:
        assert 0 <= lr_factor(schedule, it) <= 1
    torch.Generator().manual_seed(cfg.run.seed)
    torch.Generator().manual_seed(cfg.data.split_seed)
    # The network, frozen as asked, with its optimizer: on the meta device and one block per stage (more blocks
    # repeat the same layers), so that no weight is computed and ResNet-1202 costs what ResNet-20 does.
    config = cfg.model_config(num_classes=10, in_channels=3)
    with torch.device("meta"):
        model = ResNet(replace(config, depths=(1,) * len(config.depths)))
    model.freeze(cfg.model.freeze)
    torch.optim.SGD(param_groups(model, cfg.optim, cfg.optim.lr), lr=cfg.optim.lr)


def _reloaded(cfg: Config) -> Config:
    """`cfg` written as config.toml and read back as a run reads it (as a recipe file, its text values as text)."""
    return from_dict(tomllib.loads(tomli_w.dumps(cfg.to_dict())))


def _flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and f"{prefix}{key}" != "model.options":
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("args, message", [
    (["lr=-1"], "optim.lr must be in (0, 3.4e38], got -1.0"),
    (["lr=nan"], "optim.lr must be a finite number, got nan"),
    (["lr=inf"], "optim.lr must be a finite number, got inf"),
    (["optim.momentum=-1"], "optim.momentum must be in [0, 1), got -1.0"),
    (["optim.weight_decay=-1"], "optim.weight_decay must be in [0, 3.4e38], got -1.0"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true needs momentum: set optim.momentum above 0"),
    (["optim.label_smoothing=5"], "optim.label_smoothing must be in [0, 1), got 5.0"),
    (["data.image_size=-3"], "data.image_size must be in [0, 65536], got -3"),
    (["data.workers=-2"], "data.workers must be in [0, 1024], got -2"),
    (["schedule.gamma=0"], "schedule.gamma must be in (0, 1], got 0.0"),
    (["model.options={depths = 3}"], "depths must be a list of positive integers, got 3"),
    (["run.seed=99999999999999999999"], "run.seed=99999999999999999999 does not fit in 64 bits"),
    (["model.freeze=-1"], "model.freeze must be in [0, 65536], got -1"),
    (["model.freeze=4"], "model.freeze=4 but resnet20 has 3 stages; freeze at most 3"),
    (["optim.backbone_lr_factor=0"], "optim.backbone_lr_factor must be in (0, 1], got 0.0"),
    (["data.stats=mean"], "data.stats='mean' is not one of init, data"),
    (["model.init=[1]"], "model.init must be str, got [1]"),
])
def test_the_issues_bad_values_are_one_line_exit_2_before_anything_is_written(args, message, tmp_path, monkeypatch,
                                                                              capsys):
    """Each of these reached torch before (a traceback from SGD or at the first step, a run directory left behind)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_in_a_recipe_file_is_refused_too(tmp_path):
    (tmp_path / "r.toml").write_text("[optim]\nlr = nan\n")
    with pytest.raises(UserError, match="optim.lr must be a finite number, got nan"):
        load_config(tmp_path / "r.toml")


# The top-1 errors (%) the papers report for the networks of the recipes that cite them: He et al. 2015, Table 6
# (CIFAR-10), Tables 2 and 3 (ImageNet val, 10-crop); Huang et al. 2016, Table 1; Xie et al. 2017, Table 7;
# Zagoruyko & Komodakis 2016. The plain CIFAR nets have curves only (Figure 6), the other recipes no paper.
PAPER_ERRORS = {
    "cifar10/resnet20": 8.75, "cifar10/resnet32": 7.51, "cifar10/resnet44": 7.17, "cifar10/resnet56": 6.97,
    "cifar10/resnet110": 6.43, "cifar10/resnet1202": 7.93, "cifar10/resnet110_stochastic_depth": 5.25,
    "cifar10/resnext29_8x64d": 3.65, "cifar10/wrn28_10": 4.0,
    "imagenet/plain18": 27.94, "imagenet/plain34": 28.54, "imagenet/resnet18": 27.88, "imagenet/resnet34": 24.52,
    "imagenet/resnet50": 22.85, "imagenet/resnet101": 21.75, "imagenet/resnet152": 21.43,
}


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_loads(recipe):
    """Every packaged recipe builds its network with the stem its images need, has a schedule whose steps fall
    within the run, and cites the paper's number for its network (or none)."""
    cfg = load_config(recipe, {"data.path": "somewhere"})
    model = cfg.model_config(7, 3)
    assert recipe.split("/")[1].startswith(cfg.model.name) and model.num_classes == 7
    # ImageNet-style crops take the ImageNet stem, at its input size; small fixed-size images the CIFAR stem.
    assert model.stem == ("imagenet" if cfg.data.crop else "cifar")
    assert cfg.data.crop in (0, STEMS[model.stem].input_size)
    s = cfg.schedule
    assert s.warmup_iterations < s.iterations and cfg.run.eval_every <= s.iterations
    if s.kind == "step":
        assert s.milestones == sorted(set(s.milestones)) and s.warmup_iterations < s.milestones[0]
        assert s.milestones[-1] < s.iterations
    assert cfg.paper.top1_error == PAPER_ERRORS.get(recipe, 0) and bool(cfg.paper.source) == (recipe in PAPER_ERRORS)
