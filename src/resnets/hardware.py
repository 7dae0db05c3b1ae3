"""What this machine is, in one line: for the training log, a run's record of its legs, and benchmark tables.

Speed depends on the CPU's vector units far more than on its name: native bf16 (AMX tiles on Intel Xeons,
AVX512-BF16 on AMD Zen 4 and some Xeons) against AVX2-only CPUs such as AMD Zen 3. Every speed figure we
write names these flags.
"""

import os
import platform
from functools import cache

import torch

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


def describe(device: torch.device | None = None) -> str:
    """e.g. "AMD EPYC (avx2 avx512f avx512_bf16), 2 cores" or "NVIDIA H100 80GB HBM3"."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    flags = " ".join(isa_flags()) or "no avx2"
    return f"{cpu_model()} ({flags}), {os.cpu_count()} cores"
