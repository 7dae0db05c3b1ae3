"""Many processes (GPUs, machines) as one run, when launched by torchrun or by `launch_here`.

torchrun starts one process per GPU and tells each in environment variables its RANK among WORLD_SIZE processes,
its LOCAL_RANK on its machine and where to meet the others. `setup` joins them (NCCL between GPUs, gloo between
CPUs); everything else asks `rank()` and `world_size()`, which say 0 and 1 for a plain `resnets` command, where
the collectives below do nothing. Only rank 0 writes files and prints; every rank computes.
"""

import contextlib
import logging
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return planned_world() > 1


def planned_world() -> int:
    """How many processes torchrun started for this run (1 without it), known before they meet."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group if launched by it; the device this process computes on."""
    if not launched():
        return device
    if device.type == "cuda":
        if device.index not in (None, int(os.environ["LOCAL_RANK"])):
            raise UserError(f"run.device={device} under torchrun: use cuda (each process takes its LOCAL_RANK's GPU)")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # The rendezvous address, ranks and world size come from torchrun's environment variables.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def lead() -> bool:
    """Whether this process speaks for its run: the only one, or rank 0 of torchrun's (from its environment, so
    before the processes have met)."""
    return int(os.environ.get("RANK", "0")) == 0


# How long a process other than rank 0 waits, after a mistake, for rank 0 to say so (wait_for_lead).
LEAD_GRACE_S = 30.0


def wait_for_lead() -> None:
    """Give rank 0 the time to meet the mistake this process met and to say so. torchrun stops every process of a
    run as soon as one ends, so a process that ended first with the mistake every process meets would silence
    rank 0; waiting here, this one is stopped when rank 0 ends. Returns after LEAD_GRACE_S if it did not end (a
    mistake of this process alone)."""
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches every process: this one still says what it met
        time.sleep(LEAD_GRACE_S)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_world_size() -> int:
    """Processes on this machine (they share its CPU cores for decoding)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all processes (a new tensor on t's device)."""
    if not dist.is_initialized():
        return t
    # NCCL reduces GPU tensors only; gloo reduces CPU ones.
    where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = t.to(where, copy=True)
    dist.all_reduce(total)
    return total.to(t.device)


def broadcast_object(obj):
    """Rank 0's `obj` (anything picklable) on every rank; `obj` itself outside torchrun."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) everywhere: each rank updated its own from its own images in the
    last step, so before an evaluation or a checkpoint every rank takes the ones rank 0 will save."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with BN statistics computed over all processes' images (nn.SyncBatchNorm, same state_dict keys)."""
    if device.type != "cuda":
        raise UserError("run.sync_bn=true needs GPUs: PyTorch's SyncBatchNorm runs on CUDA devices only")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def launch_here(procs: int, threads: int, argv: list[str]) -> int:
    """`resnets ARGV` as `procs` processes of one run on this machine (what `torchrun --standalone` does), each
    with `threads` threads; returns the exit status of the first that failed, else 0. The processes print their
    own errors, so the launcher's logs and its report of a failed child (a traceback) are kept quiet."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # each sets its own level (torch's LOGLEVEL, WARNING)
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # torchrun would give each process one thread and warn
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={procs}", "--module", "resnets", *argv]))
        return 0
    except ChildFailedError as e:
        return next((f.exitcode for f in e.failures.values() if f.exitcode), 1)
    except SignalException:  # Ctrl-C or a kill: the processes were stopped (and said so)
        return 130
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
