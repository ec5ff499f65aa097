"""How an extraction runs on this machine: batch size, memory layout, decoding workers.

None of these changes what is computed beyond float rounding: codes stay within 1e-5 of
the contiguous, one-image-at-a-time, main-process reference (tests/test_execution.py),
so none is part of the store key. The choice is written beside the parts of a running
extraction and into the store's attributes (``execution``); a resumed run reuses it.

Defaults per device, from ``bench/extract_limit.py`` (results in bench/results/):

- CPU: channels-last memory (oneDNN's preferred layout for convolutions) at a small
  batch; on a CPU the largest batch is not the fastest, as activations fall out of cache.
  Decoding runs in the main process on two cores or fewer, where the forward pass needs
  both, and in worker processes at lowered priority beyond that.
- CUDA: channels-last at batch 32, decoding workers on the spare cores.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data.decode import decoder_name
from ..progress import log

__all__ = ["Execution", "lower_priority", "plan_execution", "reuse_execution"]

CPU_BATCH = 8
CUDA_BATCH = 32  # measured on an H100 (bench/results/extract_gpu.md); not re-tuned since
WORKER_NICE = 10
"""Niceness added to decoding workers on a CPU run: they use what the forward leaves."""

_RECORD = "execution.json"


@dataclass(frozen=True)
class Execution:
    """The execution settings of one extraction.

    Attributes:
        batch_size: images per forward pass.
        channels_last: model and images in channels-last memory format.
        workers: DataLoader decoding processes (0: decode in the main process).
        worker_nice: niceness added to each decoding worker.
        decoder: the JPEG decoder (``pil`` or ``simplejpeg X.Y``).
        threads: torch intra-op threads of the forward pass.
        ranks: extraction processes on this node (torchrun's ``--nproc-per-node``).
    """

    batch_size: int
    channels_last: bool
    workers: int
    worker_nice: int
    decoder: str
    threads: int
    ranks: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_workers(device: torch.device, ranks: int = 1) -> int:
    """Decoding processes of one of ``ranks`` extraction processes on this node: as many as
    its spare cores on GPU; on CPU only beyond two cores."""
    cores = max(1, (os.cpu_count() or 1) // ranks)
    if device.type == "cuda":
        return min(8, max(1, cores - 1))
    return 0 if cores <= 2 else min(4, cores // 2)


def plan_execution(device: torch.device, *, batch_size: int | None = None,
                   workers: int | None = None, ranks: int = 1) -> Execution:
    """The default execution on ``device`` for one of ``ranks`` processes on this node;
    explicit ``batch_size`` / ``workers`` win."""
    cuda = device.type == "cuda"
    return Execution(
        batch_size=batch_size or (CUDA_BATCH if cuda else CPU_BATCH),
        channels_last=True,
        workers=default_workers(device, ranks) if workers is None else workers,
        worker_nice=0 if cuda else WORKER_NICE,
        decoder=decoder_name(),
        threads=torch.get_num_threads(),
        ranks=ranks,
    )


def reuse_execution(folder: Path, planned: Execution, *, explicit: set[str]) -> Execution:
    """The execution recorded in a parts ``folder`` by an earlier, interrupted run, with
    the settings in ``explicit`` (given on this command line) taken from ``planned``;
    ``planned`` itself when nothing is recorded. Records the result for the next resume.
    """
    record = folder / _RECORD
    chosen = planned
    try:
        earlier = json.loads(record.read_text(encoding="utf-8"))
        recorded = Execution(**{key: earlier[key] for key in planned.as_dict()})
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded is not None:
        keep = {key: getattr(planned, key) for key in explicit}
        # The decoder, threads and ranks are what this run has, not a choice to replay.
        chosen = replace(recorded, decoder=planned.decoder, threads=planned.threads,
                         ranks=planned.ranks, **keep)
        if chosen != recorded:
            log("extract", f"resuming with {_differences(recorded, chosen)}")
    folder.mkdir(parents=True, exist_ok=True)
    temporary = record.with_suffix(f".{os.getpid()}.tmp")  # ranks write it side by side
    temporary.write_text(json.dumps(chosen.as_dict(), indent=1), encoding="utf-8")
    os.replace(temporary, record)
    return chosen


def _differences(before: Execution, after: Execution) -> str:
    old, new = before.as_dict(), after.as_dict()
    return ", ".join(f"{key} {new[key]} (was {old[key]})" for key in new if new[key] != old[key])


def lower_priority(nice: int, worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: lower this worker's priority by ``nice``."""
    if nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # not permitted here: normal priority
            os.nice(nice)
