"""What this machine is and what it does fast: the device and precision every job picks (train, eval and predict
alike), the autocast that precision means, and the one line that says so in the training log, a run's record of
its legs and benchmark tables.

Speed depends on the CPU's vector units far more than on its name: native bf16 (AMX tiles on Intel Xeons,
AVX512-BF16 on AMD Zen 4 and some Xeons) against AVX2-only CPUs such as AMD Zen 3. Every speed figure we
write names these flags.
"""

import contextlib
import ctypes
import os
import platform
import sys
from functools import cache

import torch

from .errors import UserError

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


@cache
def _cpuinfo() -> tuple[str, frozenset]:
    """(model name, flags) from /proc/cpuinfo; the platform's name and no flags where there is none (macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU", frozenset()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name or platform.processor() or "unknown CPU", frozenset(flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def isa_flags() -> list[str]:
    """Which of ISA_FLAGS this CPU has, in that order."""
    return [flag for flag in ISA_FLAGS if flag in _cpuinfo()[1]]


# oneDNN's instruction sets below its first with bf16 dot products (AVX512_CORE_BF16).
_ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def isa_cap() -> str | None:
    """The instruction set oneDNN is capped at (ONEDNN_MAX_CPU_ISA, or DNNL_MAX_CPU_ISA), if any, e.g. "AVX2".
    Capping it (with ATEN_CPU_CAPABILITY for PyTorch's own kernels) stands in for an older CPU on a newer one."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.upper() if cap and cap.upper() != "ALL" else None


def _capped_below_bf16() -> bool:
    return isa_cap() in _ONEDNN_ISAS_WITHOUT_BF16


def describe(device: torch.device | None = None) -> str:
    """e.g. "AMD EPYC (avx2 avx512f avx512_bf16), 2 cores" or "NVIDIA H100 80GB HBM3"."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    flags = " ".join(isa_flags()) or "no avx2"
    cap = f", capped at {isa_cap()}" if isa_cap() else ""
    return f"{cpu_model()} ({flags}{cap}), {os.cpu_count()} cores"


def native_bf16_cpu() -> bool:
    """The CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16) and oneDNN may use it; elsewhere bf16 is
    emulated and slow."""
    if _capped_below_bf16():
        return False
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def pick_device(name: str, option: str = "run.device=") -> torch.device:
    """The device `name` says ("auto": a GPU if there is one); `option` is how the command spells the setting, for
    its one-line errors ("run.device=", "--device ")."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{option}{name} but no CUDA device is available; use {option}cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def precision_reason(precision: str, device: torch.device) -> str:
    """Why use_bf16 decided as it did, for the line a run starts with."""
    if precision != "auto":
        return f"run.precision={precision}"
    if device.type == "cuda":
        return "the GPU " + ("does" if torch.cuda.is_bf16_supported() else "does not do") + " bf16"
    if not native_bf16_cpu():
        return f"oneDNN capped at {isa_cap()}" if _capped_below_bf16() else "no native bf16 on this CPU"
    native = [flag for flag in isa_flags() if flag in ("amx_tile", "avx512_bf16")]
    return f"native bf16: {', '.join(native) or 'the CPU'}"


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware does bf16 natively: AMX / AVX512-BF16 CPUs and recent GPUs."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return native_bf16_cpu()


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` (use_bf16's choice), or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# mallopt's parameter numbers (glibc's malloc.h). M_MMAP_THRESHOLD may not exceed 32 MiB on 64-bit glibc.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees for the next step; False where it cannot (not
    glibc: macOS, musl). By default glibc hands large freed blocks back to the kernel (munmap, heap trimming) and
    the next step takes them again, every page zero-filled by a page fault: thousands of faults per step of
    ResNet-20, 9% of its images/s on an AMD EPYC (docs/SPEED.md). Fixed thresholds keep blocks up to 32 MiB in the
    heap and the heap's free top up to 1 GiB in the process; a step's memory is the same every step, so the
    process grows no further than its first steps took it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def training_processes(procs: int, device: torch.device, batch_size: int, resume: bool) -> tuple[int, str]:
    """How many processes `resnets train` runs on this machine (run.procs; 0 = auto), and why.

    Auto is the paper's layout, two workers of half the batch each, with this process's threads split between
    them, on a CPU with two threads or more: as fast as one process of two threads on an idle CPU and 13 times
    faster on a busy one, where a process's threads wait for each other at every op while the scheduler runs
    something else (docs/SPEED.md, benchmarks/train_speed.py). A resumed run keeps its number: 0 in its config
    means the one process that runs recorded before run.procs existed."""
    if procs or resume:
        return max(procs, 1), f"run.procs={procs}"
    if device.type != "cpu":
        return 1, "one process per GPU; torchrun starts more"
    if not torch.distributed.is_available():
        return 1, "this PyTorch has no torch.distributed"
    if torch.get_num_threads() < 2 or batch_size % 2:
        return 1, f"{torch.get_num_threads()} thread(s), batch {batch_size}"
    return 2, "the paper's two workers; on a busy CPU much faster than one process of 2 threads"
