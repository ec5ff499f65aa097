"""How an extraction runs on this machine: batch size, memory layout, decoding workers.

None of these changes what is computed beyond float rounding: codes stay within 1e-5 of
the contiguous, one-image-at-a-time, main-process reference (tests/test_execution.py),
so none is part of the store key. The choice is written beside the parts of a running
extraction and into the store's attributes (``execution``); a resumed run reuses it.

Defaults per device, from ``bench/extract_limit.py`` (results in bench/results/):

- Everywhere: batch norms folded into the convolutions before them (the same function,
  rounded differently; one pass over each activation map fewer).
- CPU: channels-last memory (oneDNN's preferred layout for convolutions) at a small
  batch; on a CPU the largest batch is not the fastest, as activations fall out of cache.
  Decoding runs in the main process on two cores or fewer, where the forward pass needs
  both, by as many threads as the forward pass has (each batch is decoded on every core,
  then encoded on every core), and in worker processes at lowered priority beyond that.
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

__all__ = ["Execution", "ThreadGovernor", "lower_priority", "plan_execution", "reuse_execution"]

CPU_BATCH = 8  # the best or within 1% of it for lite0 and resnet18 here (bench/results/extract_limit.md)
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
        fold_norms: eval batch norms folded into the convolutions before them
            (:meth:`~cnncodes.nets.layers.CodeExtractor.folded`).
        decode_threads: threads that decode a batch in the main process (with no
            workers): as many as the forward pass has, so that both phases of the loop,
            decoding a batch and encoding it, use every core.
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
    decode_threads: int = 1
    fold_norms: bool = False

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
    workers = default_workers(device, ranks) if workers is None else workers
    threads = torch.get_num_threads()
    return Execution(
        batch_size=batch_size or (CUDA_BATCH if cuda else CPU_BATCH),
        channels_last=True,
        workers=workers,
        worker_nice=0 if cuda else WORKER_NICE,
        decoder=decoder_name(),
        threads=threads,
        ranks=ranks,
        decode_threads=_decode_threads(workers, threads),
        fold_norms=True,
    )


def _decode_threads(workers: int, threads: int) -> int:
    """Threads decoding a batch in the main process: the forward pass's with no decoding
    workers, else one (each worker decodes its own batches)."""
    return 1 if workers else threads


def reuse_execution(folder: Path, planned: Execution, *, explicit: set[str]) -> Execution:
    """The execution recorded in a parts ``folder`` by an earlier, interrupted run, with
    the settings in ``explicit`` (given on this command line) taken from ``planned``;
    ``planned`` itself when nothing is recorded. Records the result for the next resume.
    """
    record = folder / _RECORD
    chosen = planned
    try:
        earlier = json.loads(record.read_text(encoding="utf-8"))
        # A record from an older version lacks the newer settings: their defaults are
        # what that run did (e.g. no folded norms), so the resumed parts match its own.
        recorded = Execution(**{key: earlier[key] for key in planned.as_dict() if key in earlier})
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded is not None:
        keep = {key: getattr(planned, key) for key in explicit}
        # The decoder, threads and ranks are what this run has, not a choice to replay.
        workers = keep.get("workers", recorded.workers)
        chosen = replace(recorded, decoder=planned.decoder, threads=planned.threads,
                         ranks=planned.ranks,
                         decode_threads=_decode_threads(workers, planned.threads), **keep)
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


class ThreadGovernor:
    """Keeps a CPU forward pass on as many threads as the machine has cores free for it.

    A forward pass on every core is the fastest while nothing else runs, and collapses as
    soon as another process wants one of those cores: OpenMP threads wait for each other
    at every layer, and one that lost its core holds up the rest. Measured here, 2 threads
    ran a few img/s beside one busy process, where 1 thread ran about 45; whole
    ``cnncodes extract`` runs of 1,000 photos beside a busy process ran 26.6 img/s with
    the governor against 17.8 without (bench/results/extract_limit.md has the bench).

    So the governor times each forward pass. While on ``most`` threads it only watches:
    when the rate falls below ``drop`` times the best it has seen there, for ``patience``
    passes in a row, it tries half the threads and keeps whichever ran faster (one
    warm-up pass, one timed pass). While on fewer threads it tries ``most`` again after
    ``retry`` passes, backing off (up to 8x) while the other work goes on, so it returns
    once that work is gone. On a quiet machine it never leaves ``most`` and costs nothing.
    The thread count changes float rounding only (codes within 1e-5, tests).
    ``CNNCODES_FIXED_THREADS=1`` keeps every pass on ``most`` threads.
    """

    def __init__(self, most: int, *, drop: float = 0.7, patience: int = 3,
                 retry: int = 32) -> None:
        self.most, self.fewer = most, max(1, most // 2)
        self.drop, self.patience, self.retry = drop, patience, retry
        self.best = 0.0  # the best rate on ``most`` threads under the present load
        self.current = most
        self.slow = 0  # passes in a row below drop x best on ``most`` threads
        self.trying: int | None = None  # the thread count on trial, if any
        self.trial_passes = 0
        self.baseline = 0.0  # the rate the trial has to beat
        self.wait = retry  # passes on fewer threads before trying ``most`` again
        self.since_choice = 0
        self.passes_on: dict[int, int] = {}

    @property
    def active(self) -> bool:
        return self.most > 1 and os.environ.get("CNNCODES_FIXED_THREADS") != "1"

    def record(self, images: int, seconds: float) -> None:
        """Account one forward pass of ``images`` that took ``seconds``; maybe switch."""
        if not self.active or seconds <= 0:
            return
        rate = images / seconds
        self.passes_on[self.current] = self.passes_on.get(self.current, 0) + 1
        if self.trying is not None:
            self.trial_passes += 1
            if self.trial_passes > 1:  # the first pass after a switch is a warm-up
                self._decide(rate)
            return
        self.since_choice += 1
        if self.current == self.most:
            self.slow = self.slow + 1 if rate < self.drop * self.best else 0
            self.best = max(self.best, rate)
            if self.slow >= self.patience:
                self._start_trial(self.fewer, baseline=rate)
        elif self.since_choice >= self.wait:
            self._start_trial(self.most, baseline=rate)

    def _start_trial(self, threads: int, *, baseline: float) -> None:
        self.baseline, self.trying, self.trial_passes = baseline, threads, 0
        self._use(threads)

    def _decide(self, rate: float) -> None:
        """End a trial: keep the thread count on trial if it beat the baseline."""
        trying, self.trying = self.trying, None
        self.slow = self.since_choice = 0
        if trying == self.most:
            back = rate > self.baseline
            # Trying every core again costs passes at the collapsed rate: back off while
            # the other work goes on, and listen closely again once it has stopped.
            self.wait = self.retry if back else min(8 * self.retry, 2 * self.wait)
            if back:
                self.best = rate  # what the machine gives now
            self._use(self.most if back else self.fewer)
        else:
            stay = rate <= self.baseline
            if stay:  # slower input, not contention: the slower rate is the new normal
                self.best = self.baseline
            self._use(self.most if stay else self.fewer)

    def _use(self, threads: int) -> None:
        self.current = threads
        torch.set_num_threads(threads)

    def summary(self) -> str:
        """One line on how the passes were spread over thread counts (``""`` if never changed)."""
        if set(self.passes_on) <= {self.most}:
            return ""
        spread = ", ".join(f"{n} on {t} thread(s)" for t, n in sorted(self.passes_on.items(),
                                                                       reverse=True))
        return f"forward passes: {spread} (fewer while other processes used the cores)"
