"""The machine a run is on: the CPU's model and flags, and whether it multiplies bf16 matrices natively."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: x86 flags (as /proc/cpuinfo names them) with which oneDNN multiplies bf16 matrices in hardware: AVX-512 bf16,
#: AMX and AVX-NE-CONVERT. Without one of them PyTorch still accepts bf16 (on AVX-512 oneDNN reports it supported)
#: but converts every operand: measured 1.5 against 69 GFLOP/s fp32 on an AVX2 AMD EPYC, 59 against 242 on an
#: AVX-512 Intel Xeon (Ice Lake, 2 cores).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "avx_ne_convert"})
#: The same instruction sets in words, for the messages that name what a CPU lacks.
NATIVE_BF16_NAMES = "AVX-512 bf16, AMX or AVX-NE-CONVERT"


def cpu_info() -> dict[str, str]:
    """The first CPU's fields of /proc/cpuinfo (empty where there is none)."""
    path, fields = Path("/proc/cpuinfo"), {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    return frozenset(cpu_info().get("flags", "").split())


def cpu_name() -> str:
    """The CPU in words: its model and core count."""
    model = cpu_info().get("model name") or platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} cores)"


def is_x86() -> bool:
    """Whether this is an x86 CPU, whose bf16 support its flags tell."""
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware. On x86 by its flags (`NATIVE_BF16_FLAGS`; where
    /proc/cpuinfo is missing, PyTorch's own CPU probe for AVX-512 bf16 and AMX); elsewhere (Arm) by oneDNN's check,
    which there asks for the bf16 extension."""
    import torch

    if not is_x86():
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    flags = cpu_flags()
    if flags:
        return bool(flags & NATIVE_BF16_FLAGS)
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
