"""Many processes (GPUs, machines) as one run, when launched by torchrun.

torchrun starts one process per GPU and tells each in environment variables its RANK among WORLD_SIZE processes,
its LOCAL_RANK on its machine and where to meet the others. `setup` joins them (NCCL between GPUs, gloo between
CPUs); everything else asks `rank()` and `world_size()`, which say 0 and 1 for a plain `resnets` command, where
the collectives below do nothing. Only rank 0 writes files and prints; every rank computes.
"""

import os

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


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
