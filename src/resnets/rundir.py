"""A run directory and the training state its checkpoints hold: the one module that knows a run's files.

    <run>/config.toml       the resolved config (itself a recipe), written first
    <run>/metrics.jsonl     one JSON line per evaluation
    <run>/legs.jsonl        one line per process that trained the run: from which iteration, when, on what machine
    <run>/iter-NNNNNNN.pt   checkpoints, the newest run.keep_checkpoints of them
    <run>/curves.png        metrics.jsonl as a picture

Every file is replaced atomically (files.replacing) and one process at a time holds the directory (RunDir.lock),
so a run killed at any moment resumes with nothing lost (docs/RELIABILITY.md). Checkpoints are read without
running code (weights_only=True) and their zip CRCs are checked first.
"""

import contextlib
import fcntl
import json
import os
import pickle
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
import torch
from torch.optim.swa_utils import AveragedModel

from . import files
from .config import Config, from_dict, load_config
from .errors import EnvironmentFailure, UserError, few, first_line
from .models import ResNet
from .preprocessing import Preprocessing
from .schedule import scheduled_steps
from .terminal import shown

FORMAT = "resnets-checkpoint-2"
# Format 1 also held a LambdaLR's state; the lr is now a function of the iteration, so nothing else differs.
READABLE = ("resnets-checkpoint-1", FORMAT)
CHECKPOINT = re.compile(r"iter-(\d+)\.pt")


class RunDir:
    """The files of one run, by name; nothing is read or created until asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.toml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.legs_file = self.path / "legs.jsonl"
        self.curves_file = self.path / "curves.png"

    def __str__(self) -> str:
        return str(self.path)

    def is_run(self) -> bool:
        """Whether a run started here (config.toml is its first write)."""
        return self.config_file.is_file()

    def config(self, overrides: list[str] | dict = ()) -> Config:
        """The run's own config (with `overrides`); a UserError that says what to do if no run started here."""
        if self.path.is_file() and CHECKPOINT.fullmatch(self.path.name):
            raise UserError(f"{self.path} is a checkpoint, not a run directory: resume its run with --resume "
                            f"{self.path.parent}, which goes on from the newest usable checkpoint")
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a run directory: " + ("it is a file" if self.path.exists()
                                                                       else "it does not exist"))
        if not self.is_run():  # what a run killed before its first write leaves: nothing to resume from
            raise UserError(f"{self.path} has no config.toml: not a run directory, or its run was stopped before it "
                            f"started; start it again with the command that started it, with --out {self.path}")
        return load_config(self.config_file, overrides)

    def metrics(self) -> list[dict]:
        return _json_lines(self.metrics_file)

    def legs(self) -> list[dict]:
        return _json_lines(self.legs_file)

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints, oldest first."""
        found = [(int(m[1]), p) for p in self.path.glob("iter-*.pt") if (m := CHECKPOINT.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path:
        found = self.checkpoints()
        if not found:
            raise UserError(f"no checkpoint in {self.path}")
        return found[-1]

    def checkpoint_file(self, iteration: int) -> Path:
        return self.path / f"iter-{iteration:07d}.pt"

    def state(self, cfg: Config) -> str:
        """"new", "interrupted" or "finished" for a run of `cfg`; a UserError if the run here has another config."""
        found = self.checkpoints() if self.path.is_dir() else []
        if not self.is_run() or not found:
            return "new"
        self.check_config(cfg)
        total = scheduled_steps(cfg.schedule, self.metrics())
        return "finished" if total is not None and iteration_of(found[-1]) >= total else "interrupted"

    def check_config(self, cfg: Config) -> None:
        """Refuse a config other than the run's own: its checkpoints are the state of that one."""
        changed = config_differences(self.config().to_dict(), cfg.to_dict())
        if changed:
            raise UserError(f"{self.path} was started with a different config ({', '.join(changed[:3])}); resume "
                            "with the run's own config.toml, or start a new run with --out")

    @contextlib.contextmanager
    def lock(self):
        """Hold the directory (created if need be) for one run; a second run pointed at it gets a UserError.

        flock(2) on the folder itself: nothing to clean up, and the OS drops it when the holder dies, SIGKILL
        included, so a killed run can be resumed at once. The holder first removes the temp files a killed writer
        left (files.replacing). If the run fails before writing anything, the folders it created go again.
        """
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # innermost first
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
        except (FileExistsError, NotADirectoryError):  # the command's mistake, not the machine's
            raise UserError(f"cannot create the run directory {self.path}: a file is in the way; choose another "
                            "--out") from None
        except OSError as e:
            raise EnvironmentFailure(f"cannot create the run directory {self.path} ({e.strerror}); choose another "
                                     "--out") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another run is writing to {self.path}; wait for it to end or choose another --out"
                                ) from None
            for tmp in self.path.glob(files.TEMP_GLOB):
                with contextlib.suppress(OSError):  # a read-only disk keeps it; the run's first write says why
                    tmp.unlink()
            yield self
        except BaseException:
            for folder in created:
                with contextlib.suppress(OSError):  # not empty: the run wrote something worth keeping
                    folder.rmdir()
            raise
        finally:
            os.close(fd)

    def write_config(self, cfg: Config) -> None:
        files.write_text(self.config_file, tomli_w.dumps(cfg.to_dict()))

    def write_metrics(self, history: list[dict]) -> None:
        """Rewritten whole (never half a line, whenever the run is killed; lines past the checkpoint go)."""
        files.write_text(self.metrics_file, "".join(json.dumps(m) + "\n" for m in history))

    def record_leg(self, iteration: int, machine: str) -> None:
        """A line for this process's leg: where it starts and on what machine. Legs that started at or after this
        one's iteration saved nothing (their work is redone now) and are dropped."""
        legs = [leg for leg in self.legs() if leg["from_iteration"] < iteration]
        legs.append({"from_iteration": iteration, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "machine": machine})
        files.write_text(self.legs_file, "".join(json.dumps(leg) + "\n" for leg in legs))

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` checkpoints."""
        for old in self.checkpoints()[:-keep]:
            old.unlink()


def iteration_of(checkpoint_file: Path) -> int:
    return int(CHECKPOINT.fullmatch(checkpoint_file.name)[1])


# Where a run finds its images and what runs its steps, not what it trains: a run moved to another machine (a GPU
# run finished on a CPU, the images in another folder there) may change these when it resumes.
MOVABLE = {("data", "path"), ("data", "cache_dir"), ("data", "workers"), ("data", "loader"), ("run", "device"),
           ("run", "compile"), ("run", "tensorboard")}


def config_differences(theirs: dict, ours: dict) -> list[str]:
    """"section.key=theirs (now ours)" for each key of `ours` that `theirs` holds otherwise, MOVABLE keys aside; []
    if the same. Both go through from_dict: keys added since `theirs` was written take the defaults it ran with."""
    theirs, ours = from_dict(theirs).to_dict(), from_dict(ours).to_dict()
    return [f"{s}.{k}={theirs[s].get(k)!r} (now {v!r})" for s in ours for k, v in ours[s].items()
            if theirs[s].get(k) != v and (s, k) not in MOVABLE]


def find_runs(paths: list[str]) -> list[RunDir]:
    """Run directories among `paths`; a folder of runs (an experiment's output) stands for its runs."""
    runs = []
    for path in map(Path, paths):
        if RunDir(path).is_run():
            runs.append(RunDir(path))
        elif path.is_dir() and (inner := sorted(p.parent for p in path.glob("*/config.toml"))):
            runs.extend(map(RunDir, inner))
        else:
            raise UserError(f"{path} is neither a run directory nor a folder of runs (no config.toml)")
    return runs


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# Checkpoint files ------------------------------------------------------------------------------------------------

def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save `obj` to `path` through the one atomic writer (files.replacing)."""
    # Into a Python file, not by name: torch's own file writer loses the OSError of a full disk ("iostream error").
    with files.replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents (a run directory: its newest); a one-line UserError if missing, damaged or foreign."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).latest()
    try:
        # torch.load does not check the zip's CRC-32s: a flipped bit in a tensor would load as a wrong weight.
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged:
            raise UserError(f"checkpoint {path} is corrupt ({damaged} fails its CRC-32 check)")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except UserError:
        raise
    except pickle.UnpicklingError as e:  # weights_only refused an object; torch's message is about its own options
        named = re.search(r"GLOBAL (\S+)", str(e))
        raise UserError(f"checkpoint {path} was refused: it holds Python objects other than tensors "
                        f"({named[1] if named else 'pickled code'}), and loading them could run code, which resnets "
                        "never does; a resnets checkpoint holds only tensors and plain values") from None
    except Exception as e:  # truncated zip, flipped bytes, a pickle that wants to run code: all refused
        raise UserError(f"checkpoint {path} is corrupt or not a resnets checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE:
        raise UserError(f"{path} is not a resnets checkpoint")
    return ckpt


# The training state ----------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """What a checkpoint restores: the weights, the optimizer's momentum, where the run is, its evaluations so far
    and the preprocessing it trains with. The random generator's state goes in and out with it; every other random
    choice is a function of (seed, epoch, batch), so a resumed run is bit-identical to an uninterrupted one (CPU)."""

    model: ResNet
    optimizer: torch.optim.Optimizer
    iteration: int = 0
    history: list[dict] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    # optim.ema_decay: the averaged weights, which are what the run evaluates and serves ("model" in a checkpoint);
    # the weights SGD steps are then "sgd_model".
    average: AveragedModel | None = None

    def save(self, run: RunDir, cfg: Config, classes: list[str], world: int) -> None:
        """A checkpoint of this state at its iteration, also holding what eval/predict/export need."""
        averaged = {}
        if self.average:
            averaged = {"sgd_model": self.model.state_dict(), "n_averaged": int(self.average.n_averaged)}
        save_checkpoint({
            "format": FORMAT, "iteration": self.iteration, "config": cfg.to_dict(), "world_size": world, **averaged,
            "model_config": self.model.config.to_dict(), "model": self.served().state_dict(), "classes": list(classes),
            "preprocessing": self.preprocessing.to_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(), "history": self.history,
            # Dropout and stochastic depth draw from the device's generator too.
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }, run.checkpoint_file(self.iteration))
        run.prune(cfg.run.keep_checkpoints)

    def restore(self, path: Path, cfg: Config, world: int, classes: list[str]) -> None:
        """Checkpoint `path` into the live objects, for data of `classes`; a UserError if it is another run's or
        another network's, OtherData if the data is not the one it was trained on."""
        ckpt = load_checkpoint(path)
        if config_differences(ckpt.get("config") or {}, cfg.to_dict()):
            raise UserError(f"{path} was written with a different config")
        trained = ckpt.get("classes")
        if trained is not None and list(trained) != list(classes):
            raise OtherData(f"data.path {cfg.data.path} holds {len(classes)} classes ({few(classes)}) but the run "
                            f"was trained on {len(trained)} ({few(trained)}): resume it with the data it was trained "
                            "on")
        theirs, ours = ckpt.get("model_config") or {}, self.model.config
        if theirs.get("num_classes") != ours.num_classes:
            raise UserError(f"{path} is for {theirs.get('num_classes')} classes but the data has {ours.num_classes}")
        if theirs != ours.to_dict():
            raise UserError(f"{path} holds another network than the config builds")
        if ckpt.get("world_size", 1) != world:  # another world size would mean other batches and another lr
            raise UserError(f"{path} was trained by {ckpt.get('world_size', 1)} processes; resume it with as many "
                            f"(torchrun --nnodes x --nproc_per_node), not {world}")
        try:
            self.model.load_state_dict(ckpt["sgd_model" if self.average else "model"])
            if self.average:
                self.average.module.load_state_dict(ckpt["model"])
                self.average.n_averaged.fill_(ckpt["n_averaged"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"])
            if ckpt["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            self.iteration, self.history = ckpt["iteration"], ckpt["history"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{path} does not fit the network ({first_line(e)})") from None
        # The mean and std it was trained with, not a new estimate (none: from before they were saved).
        stored = ckpt.get("preprocessing")
        self.preprocessing = Preprocessing.from_dict(stored) if stored else None

    def served(self) -> ResNet:
        """The network the run evaluates and saves as its weights: the average of the weights, if it keeps one."""
        return self.average.module if self.average else self.model

    def resume(self, run: RunDir, cfg: Config, world: int, classes: list[str]) -> Path | None:
        """From the newest usable checkpoint of `run` (returned; None if the run stopped before its first, which
        starts from iteration 0), falling back past damaged or foreign ones; for data of `classes`, which none of
        them is asked to fit if it is not the run's (OtherData). The caller has checked `cfg` against the run's
        config.toml."""
        problems = []
        for path in reversed(run.checkpoints()):
            try:
                self.restore(path, cfg, world, classes)
                return path
            except OtherData:
                raise
            except UserError as e:
                print(f"warning: {shown(e)}; trying the previous checkpoint")
                problems.append(str(e))
        if problems:
            raise UserError(f"no usable checkpoint in {run}; the newest: {problems[0]}")
        return None


class OtherData(UserError):
    """The data a run resumes with is not the one it was trained on: no checkpoint of it fits, so said once."""
