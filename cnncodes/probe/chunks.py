"""The work of a streamed fit on one row chunk of the store, and the runner that does it here.

A streamed fit (:mod:`cnncodes.probe.stream`) is four kinds of pass over the store's row
chunks: scaler moments, training epochs, held-out counts, predictions. Every pass calls one
function of this module per chunk, with the chunk's codes and small per-chunk inputs
(masks, labels, the models). :class:`LocalChunks` calls them in this process, reading each
chunk once per pass; :mod:`cnncodes.probe.dask_fit` calls the same functions on Dask
workers that open the store themselves. Both feed every model the same rows in the same
order, so both train the same models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

from ..data.store import CodeStore

__all__ = [
    "Call",
    "ChunkRunner",
    "Group",
    "LocalChunks",
    "Moments",
    "Plan",
    "chunk_counts",
    "chunk_moments",
    "chunk_predictions",
    "merge_moments",
    "moments_scaler",
    "train_chunk",
]

# Rows, mean and sum of squared deviations from the mean, per feature (float64).
Moments = tuple[int, np.ndarray, np.ndarray]
# One chunk's call: first row, end row, the arguments that follow its codes.
Call = tuple[int, int, tuple[Any, ...]]
# One epoch: (first row, end row, row order within the chunk) in the order they are fed.
Plan = list[tuple[int, int, np.ndarray]]


@dataclass
class Group:
    """One training set (a CV fold's complement, or all of train): its scaler and one
    model per C."""

    train: np.ndarray  # bool per store row
    scaler: StandardScaler
    models: list[SGDClassifier]


def chunk_moments(codes: np.ndarray, members: list[np.ndarray]) -> list[Moments | None]:
    """Per training set, the moments of its rows in this chunk (None: it has none here)."""
    out: list[Moments | None] = []
    for chosen in members:
        if not chosen.any():
            out.append(None)
            continue
        rows = codes[chosen].astype(np.float64)
        mean = rows.mean(axis=0)
        out.append((len(rows), mean, ((rows - mean) ** 2).sum(axis=0)))
    return out


def merge_moments(first: Moments | None, second: Moments | None) -> Moments | None:
    """The moments of two disjoint sets of rows together (Chan et al.'s pairwise update)."""
    if first is None or second is None:
        return second if first is None else first
    (n_first, mean_first, squares_first), (n_second, mean_second, squares_second) = first, second
    n = n_first + n_second
    delta = mean_second - mean_first
    return (
        n,
        mean_first + delta * (n_second / n),
        squares_first + squares_second + delta**2 * (n_first * n_second / n),
    )


def moments_scaler(moments: Moments) -> StandardScaler:
    """The StandardScaler that ``fit`` on those rows gives (mean and variance within
    rounding); a feature without variance is left unscaled, as StandardScaler leaves it."""
    n, mean, squares = moments
    variance = squares / n
    scaler = StandardScaler()
    scaler.mean_, scaler.var_ = mean, variance
    scaler.scale_ = np.where(variance > 0, np.sqrt(variance), 1.0)
    scaler.n_samples_seen_ = n
    scaler.n_features_in_ = len(mean)
    return scaler


def train_chunk(
    codes: np.ndarray,
    order: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray, StandardScaler, list[SGDClassifier]]],
    classes: np.ndarray,
) -> list[list[SGDClassifier]]:
    """One chunk's ``partial_fit`` for every model of each part (a training set's chunk
    members, the chunk's labels, its scaler and models), rows in ``order``; the models
    are updated in place and returned per part."""
    for members, labels, scaler, models in parts:
        chosen = order[members[order]]
        if not len(chosen):
            continue
        scaled = scaler.transform(codes[chosen])
        for model in models:
            model.partial_fit(scaled, labels[chosen], classes=classes)
    return [models for *_, models in parts]


def chunk_counts(
    codes: np.ndarray,
    fitted: list[tuple[StandardScaler, list[SGDClassifier]]],
    labels: np.ndarray,
    held: list[np.ndarray],
) -> np.ndarray:
    """Held-out (correct, seen) counts [training set, candidate, 2] of this chunk: each
    training set's models on its ``held`` rows."""
    counts = np.zeros((len(fitted), max(len(models) for _, models in fitted), 2), dtype=np.int64)
    for number, ((scaler, models), rows) in enumerate(zip(fitted, held)):
        if not rows.any():
            continue
        scaled, truth = scaler.transform(codes[rows]), labels[rows]
        for candidate, model in enumerate(models):
            counts[number, candidate] = (int((model.predict(scaled) == truth).sum()), len(truth))
    return counts


def chunk_predictions(
    codes: np.ndarray,
    final: tuple[StandardScaler, SGDClassifier],
    wanted: np.ndarray,
    folds: list[tuple[StandardScaler, SGDClassifier]],
    fold: np.ndarray,
) -> np.ndarray:
    """Predicted labels [2, rows] of this chunk (-1 elsewhere): the ``wanted`` rows by the
    final model, and each CV fold's rows by its fold's model."""
    predicted = np.full((2, len(codes)), -1, dtype=np.int64)
    scaler, model = final
    if wanted.any():
        predicted[0, wanted] = model.predict(scaler.transform(codes[wanted]))
    for number, (scaler, model) in enumerate(folds):
        held = fold == number
        if held.any():
            predicted[1, held] = model.predict(scaler.transform(codes[held]))
    return predicted


class ChunkRunner(Protocol):
    """Where the chunk functions run: :class:`LocalChunks` or a Dask cluster."""

    def share(self, value: Any) -> Any:
        """``value`` as the argument of many calls (on Dask: sent to the workers once)."""

    def map(self, function: Callable[..., Any], calls: Iterable[Call]) -> Iterator[Any]:
        """``function(codes, *args)`` per call, results in the calls' order."""

    def train_epoch(
        self, plan: Plan, groups: list[Group], y: np.ndarray, classes: np.ndarray
    ) -> None:
        """One epoch of :func:`train_chunk` over the plan's chunks; updates every group's
        models."""


class LocalChunks:
    """The chunk functions in this process, reading from an open store."""

    def __init__(self, store: CodeStore, layer: str) -> None:
        self.store = store
        self.layer = layer

    def share(self, value: Any) -> Any:
        return value

    def map(self, function: Callable[..., Any], calls: Iterable[Call]) -> Iterator[Any]:
        for start, stop, args in calls:
            yield function(self.store.code_rows(self.layer, start, stop), *args)

    def train_epoch(
        self, plan: Plan, groups: list[Group], y: np.ndarray, classes: np.ndarray
    ) -> None:
        # One read per chunk feeds every training set.
        for start, stop, order in plan:
            parts = [(g.train[start:stop], y[start:stop], g.scaler, g.models) for g in groups]
            train_chunk(self.store.code_rows(self.layer, start, stop), order, parts, classes)
