"""Process- and device-level settings for inference and training.

:func:`amp_dtype` is the one answer to "which half precision on this device".

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` on free, and trims the heap top after frees.
A CNN's activations at batch 32 are tens of MiB each, so every forward pass page-faults
all of its activation memory anew: measured here, EfficientNet-Lite0 on 2 cores ran at
39 images/s at batch 32 against 130 with the thresholds raised (bench/results/). Raising
both thresholds keeps freed blocks in the heap for reuse; the cost is that the process
keeps its peak memory until it exits, which suits a batch job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

__all__ = ["amp_dtype", "tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30
_tuned: bool | None = None


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype for ``--amp`` on ``device``: bfloat16 where the hardware has it
    (CPUs, recent GPUs), float16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when applied.

    Does nothing off Linux/glibc, or when ``CNNCODES_NO_MALLOC_TUNING=1`` is set.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not sys.platform.startswith("linux") or os.environ.get("CNNCODES_NO_MALLOC_TUNING") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
    )
    return _tuned
