"""Which autocast precision is fast on this machine.

bf16 halves the work only where the hardware computes in it: a bf16-capable GPU, or a CPU with
AVX512-BF16 / AMX. Elsewhere (e.g. AVX2-only CPUs) PyTorch emulates bf16, and a training step of
the default model measured 15x slower than fp32 on one such CPU (AMD EPYC Zen 3: 0.2 vs 3.2 img/s).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

Bf16Setting = bool | Literal["auto"]
_NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list AVX512-BF16 or AMX-BF16 (Linux); False where unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(f in flags for f in _NATIVE_CPU_FLAGS)


def native_bf16(device: torch.device | str) -> bool:
    """Does `device` compute in bf16 natively (so bf16 autocast is the fast path)?"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def autocast_dtype(setting: Bf16Setting, device: torch.device | str) -> torch.dtype | None:
    """bf16 for `true`, fp32 (None) for `false`, and for "auto" bf16 only where it is native."""
    if setting == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if setting and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        return None  # asked for bf16 on a GPU that has none: fp32 rather than an error
    return torch.bfloat16 if setting else None
