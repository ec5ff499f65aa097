"""``fit --stream --scheduler ADDRESS``: the streamed fit's chunk work on a Dask cluster.

h5py objects cannot travel to other processes, so a task gets the store's path, not the
store: each opens it read-only on its worker and reads its own row chunk. The store must
therefore be on a filesystem that this process and every worker share, at the same path;
:func:`dask_chunks` checks that on every worker before the fit starts. This process keeps
what is small (labels, splits, the models) and sends each task the slices and models it
needs. Scaler moments, held-out counts and predictions are independent per chunk and run
on all the workers at once. An epoch is one chain of tasks per training set (each CV
fold's complement, and all of train), chunk after chunk in the seeded order that the
local fit uses, passing the training set's models from task to task: the chains run side
by side, and every model is the one the local fit trains.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

from ..data.store import DIGEST_ATTR, CodeStore
from ..errors import CnnCodesError
from .chunks import Call, Group, Plan, train_chunk

__all__ = ["DaskChunks", "dask_chunks"]

INSTALL = "pip install 'cnncodes[dask]'"


def open_on_worker(path: str, worker: str) -> CodeStore:
    """The store at ``path`` as worker ``worker`` sees it, or one line saying that it
    cannot see it there."""
    if not os.path.isfile(path):
        raise CnnCodesError(
            f"Dask worker {worker} cannot open the code store {path!r}: there is no such file "
            "there. The store must be on a filesystem that this machine and every worker "
            "share, at the same path."
        )
    return CodeStore(path)


def _fingerprint(path: str, dask_worker: Any = None) -> Any:
    """Run on every worker before the fit: the store's attribute digest as it sees it."""
    with open_on_worker(path, dask_worker.address) as store:
        return store.attrs.get(DIGEST_ATTR)


def _codes(path: str, layer: str, start: int, stop: int) -> np.ndarray:
    from distributed import get_worker

    with open_on_worker(path, get_worker().address) as store:
        return store.code_rows(layer, start, stop)


def _on_chunk(
    path: str, layer: str, start: int, stop: int, function: Callable[..., Any], *args: Any
) -> Any:
    return function(_codes(path, layer, start, stop), *args)


def _train_on_chunk(
    path: str,
    layer: str,
    start: int,
    stop: int,
    order: np.ndarray,
    members: np.ndarray,
    labels: np.ndarray,
    scaler: StandardScaler,
    models: list[SGDClassifier],
    classes: np.ndarray,
) -> list[SGDClassifier]:
    # A task must not change its inputs: the previous task's result may be kept (and
    # reused, should a worker be lost) on this worker.
    models = copy.deepcopy(models)
    codes = _codes(path, layer, start, stop)
    return train_chunk(codes, order, [(members, labels, scaler, models)], classes)[0]


class DaskChunks:
    """The chunk functions of :mod:`cnncodes.probe.chunks` as tasks on a Dask cluster."""

    def __init__(self, client: Any, path: str, layer: str) -> None:
        self.client = client
        self.path = path
        self.layer = layer

    def describe(self) -> str:
        workers = self.client.scheduler_info()["workers"].values()
        threads = sum(worker["nthreads"] for worker in workers)
        return f"{len(workers)} workers, {threads} threads"

    def share(self, value: Any) -> Any:
        # Sent to every worker once, rather than once per task that uses it.
        return self.client.scatter([value], broadcast=True, hash=False)[0]

    def map(self, function: Callable[..., Any], calls: Iterable[Call]) -> Iterator[Any]:
        futures = [
            self.client.submit(
                _on_chunk, self.path, self.layer, start, stop, function, *args, pure=False
            )
            for start, stop, args in calls
        ]
        futures.reverse()
        while futures:  # in order, each result dropped on the cluster once taken
            yield futures.pop().result()

    def train_epoch(
        self, plan: Plan, groups: list[Group], y: np.ndarray, classes: np.ndarray
    ) -> None:
        chains = []
        for group in groups:
            scaler, state = self.share(group.scaler), group.models
            for start, stop, order in plan:
                members = group.train[start:stop]
                if members.any():
                    state = self.client.submit(
                        _train_on_chunk,
                        self.path,
                        self.layer,
                        start,
                        stop,
                        order,
                        members,
                        y[start:stop],
                        scaler,
                        state,
                        classes,
                        pure=False,
                    )
            chains.append(state)
        for group, models in zip(groups, self.client.gather(chains)):
            group.models = models


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise CnnCodesError(
            f"--scheduler {address!r} fits on Dask, which is not installed; run {INSTALL}."
        ) from None
    try:
        return Client(address)
    except (OSError, TimeoutError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CnnCodesError(
            f"Cannot reach the Dask scheduler at {address!r} ({reason}); start one with "
            f"'dask scheduler' and workers with 'dask worker ADDRESS', or leave --scheduler "
            "out to fit in this process."
        ) from None


def _check_workers(client: Any, address: str, path: str, digest: Any) -> None:
    """Every worker opens the store at ``path`` and sees this one (the same digest)."""
    found = client.run(_fingerprint, path, on_error="return")
    if not found:
        raise CnnCodesError(
            f"The Dask scheduler at {address!r} has no workers; start some with "
            f"'dask worker {address}' on machines that see the store."
        )
    for worker, seen in sorted(found.items()):
        if isinstance(seen, CnnCodesError):
            raise CnnCodesError(str(seen))
        if isinstance(seen, BaseException):
            raise CnnCodesError(
                f"Dask worker {worker} failed to open the code store {path!r} "
                f"({type(seen).__name__}: {seen}); every worker needs this cnncodes "
                f"installed ({INSTALL})."
            )
        if seen != digest:
            raise CnnCodesError(
                f"Dask worker {worker} sees another code store at {path!r} than this "
                "machine does; the store must be on a filesystem that this machine and "
                "every worker share, at the same path."
            )


@contextmanager
def dask_chunks(address: str, store: CodeStore, layer: str) -> Iterator[DaskChunks]:
    """A runner on the cluster of the scheduler at ``address``, its workers checked."""
    path = os.path.abspath(store.path)  # as given, symlinks kept: the workers resolve them
    with _client(address) as client:
        _check_workers(client, address, path, store.attrs.get(DIGEST_ATTR))
        yield DaskChunks(client, path, layer)
