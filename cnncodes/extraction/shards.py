"""Sharded extraction under ``torchrun``: which parts each rank encodes, and how ranks meet.

``torchrun --nproc-per-node N -m cnncodes extract DATA ...`` starts N copies of the same
command; torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
(and the rendezvous for several nodes). Every rank lists the source itself (the listing
is sorted, so every rank sees the same positions), and the positions are cut into the
same parts of ``part_size`` images a single process writes. Part ``k`` belongs to rank
``k % WORLD_SIZE``: shards are disjoint, deterministic, aligned with part boundaries and
interleaved, so ranks finish at about the same time even when the source is sorted by
class. Each rank writes its own part files into the shared parts folder (a resumed run,
with any number of ranks or none, encodes only the parts still missing); when every rank
is done, rank 0 joins the parts into the store, as a single process would.

Ranks meet twice through ``torch.distributed`` (``gloo`` on CPU, ``nccl`` on GPU): after
encoding, to learn whether every rank succeeded (a failed rank is named in one line on
every rank, and nothing is written under the final name), and after the join, so that
every rank returns the finished store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Shard", "missing_ranges", "owned_parts", "shard_from_env"]


@dataclass(frozen=True)
class Shard:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world}"


def shard_from_env() -> Shard:
    """The shard torchrun's environment describes; rank 0 of 1 without torchrun."""
    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    world = max(1, number("WORLD_SIZE", 1))
    if world == 1:
        return Shard()
    local_world = max(1, number("LOCAL_WORLD_SIZE", world))
    return Shard(number("RANK", 0), world, number("LOCAL_RANK", 0), local_world)


def owned_parts(total: int, part_size: int, shard: Shard) -> list[tuple[int, int]]:
    """The ``[start, end)`` position ranges of the parts ``shard`` encodes, in order."""
    return [
        (start, min(total, start + part_size))
        for index, start in enumerate(range(0, total, part_size))
        if index % shard.world == shard.rank
    ]


def missing_ranges(wanted: Sequence[tuple[int, int]], done: Sequence[tuple[int, int]]
                   ) -> list[tuple[int, int]]:
    """The parts of the ``wanted`` ranges that no ``done`` range covers, in order.

    Finished parts of an earlier run with another ``part_size`` may cover a wanted range
    only in part: what is left of it becomes a smaller range of its own.
    """
    done = sorted(done)
    missing = []
    for start, end in wanted:
        cursor = start
        for done_start, done_end in done:
            if done_end <= cursor or done_start >= end:
                continue
            if done_start > cursor:
                missing.append((cursor, done_start))
            cursor = max(cursor, done_end)
        if cursor < end:
            missing.append((cursor, end))
    return missing


def thread_budget(shard: Shard) -> int:
    """Intra-op threads of one rank: this node's cores shared by its ranks."""
    return max(1, (os.cpu_count() or 1) // shard.local_world)


@contextlib.contextmanager
def process_group(shard: Shard, device: torch.device) -> Iterator[None]:
    """The torch.distributed group of the job while the block runs (nothing when alone)."""
    if not shard.distributed:
        yield
        return
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=shard.rank, world_size=shard.world,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def gather_errors(shard: Shard, error: str) -> list[tuple[int, str]]:
    """Every rank's error (``""`` for success), gathered on every rank: ``(rank, error)``
    for the ranks that failed, in rank order."""
    if not shard.distributed:
        return [(0, error)] if error else []
    import torch.distributed as dist

    errors: list[str] = [""] * shard.world
    dist.all_gather_object(errors, error)
    return [(rank, text) for rank, text in enumerate(errors) if text]
