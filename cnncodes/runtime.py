"""Process- and device-level settings for inference and training.

:func:`setup_runtime` is the one device and precision set-up that extraction and
fine-tuning share: which device, which autocast dtype (:func:`amp_dtype` is the one answer
to "which half precision on this device"), channels-last on CUDA, and the CPU allocator
tuning below.

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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .errors import CnnCodesError
from .progress import log

__all__ = ["Runtime", "amp_dtype", "cpu_has_native_bf16", "resolve_device", "setup_runtime", "tune_cpu_allocator"]

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


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is checked and used."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise CnnCodesError(
            f"Device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N."
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CnnCodesError(
            f"Device {device!r} was asked for but CUDA is not available here; use --device cpu."
        )
    return chosen


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision a model runs.

    Attributes:
        device: the torch device.
        precision: ``torch.float32``, or the autocast dtype when mixed precision is on.
        memory_format: ``auto`` (channels-last on CUDA), ``channels_last`` or ``contiguous``.
    """

    device: torch.device
    precision: torch.dtype
    memory_format: str = "auto"

    @property
    def channels_last(self) -> bool:
        """Channels-last memory: ``memory_format`` ``channels_last``, or ``auto`` on CUDA.

        Extraction chooses it on CPUs too (:mod:`cnncodes.extraction.execution`);
        training on a CPU keeps the contiguous layout.
        """
        if self.memory_format == "auto":
            return self.device.type == "cuda"
        return self.memory_format == "channels_last"

    @property
    def precision_name(self) -> str:
        return str(self.precision).removeprefix("torch.")

    def autocast(self) -> AbstractContextManager[object]:
        """Mixed precision around a forward pass, or nothing for float32."""
        if self.precision == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move ``module`` to the device (channels-last on CUDA)."""
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        """Move a batch of images to the device, in the memory format of the model."""
        batch = batch.to(self.device, non_blocking=True)
        if batch.dim() == 4:
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            batch = batch.contiguous(memory_format=layout)
        return batch


def setup_runtime(device: str = "auto", amp: bool | None = None) -> Runtime:
    """Resolve ``device``, choose the precision (``amp`` None: on for CUDA, off on CPU)
    and tune the CPU allocator when running on the CPU.

    Raises:
        CnnCodesError: a device that is not one, or CUDA asked for where there is none.
    """
    chosen = resolve_device(device)
    use_amp = chosen.type == "cuda" if amp is None else amp
    if chosen.type == "cpu":
        tune_cpu_allocator()
        if use_amp and not cpu_has_native_bf16():
            if os.environ.get("CNNCODES_CPU_BF16") == "1":
                log("runtime", "bfloat16 emulated on a CPU without native bfloat16 "
                    "(CNNCODES_CPU_BF16=1): many times slower than float32")
            else:
                use_amp = False
                log("runtime", "--amp ignored: this CPU has no native bfloat16 (AVX512-BF16 "
                    "or AMX), where emulated bfloat16 ran 23x slower than float32 "
                    "(bench/results/extract_limit.md); running float32")
    return Runtime(chosen, amp_dtype(chosen) if use_amp else torch.float32)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
