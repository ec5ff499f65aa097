"""Hyper-parameter search for pipelines on CNN codes: a validation split or stratified CV.

Two things make it fast on large code matrices, where a plain ``GridSearchCV`` refits
everything for every candidate:

- the steps before the classifier (scaler, PCA, ...) are fitted once per fold, not once
  per candidate, whenever the searched parameters belong to the classifier alone;
- a regularisation *path* parameter (``C``) is walked in increasing order, warm-starting
  each fit from the previous solution where the estimator has ``warm_start``, and the walk
  stops once ``patience`` values in a row have not beaten the best score: the weakly
  regularised end of the path is where fits take longest and rarely help. A tie counts as
  no gain: codes of many classes are often separable, and then every large C predicts
  the same labels, a plateau that would otherwise be walked to its slow end (the best
  is the first of equal scores, the most regularised). A best at the path's first value
  is no peak (the grid may start too high), so the walk then goes on past a dip.

The folds of a candidate are fitted side by side in threads (``n_jobs``, by default as
many as there are cores and folds), each with its share of the cores: BLAS pools
(through threadpoolctl) and torch's intra-op pool are limited to ``cores // n_jobs``
threads for the search, so that workers times threads never exceeds the cores. Numpy,
scikit-learn's solvers and torch release the GIL in their heavy loops, and threads share
each fold's warm-started estimator without copying it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

__all__ = ["SearchResult", "search_pipeline", "PATH_PATIENCE", "thread_budget", "limit_threads"]

PATH_PATIENCE = 3
"""Path values not beating the best, in a row, after which the path walk stops."""

Fold = tuple[np.ndarray, np.ndarray]


@dataclass
class SearchResult:
    """What :func:`search_pipeline` found.

    Attributes:
        best_params: the chosen candidate, in ``set_params`` names.
        best_score: its mean held-out accuracy over the folds.
        candidates: every evaluated candidate: params, mean score, per-fold scores and
            seconds, in evaluation order.
        held_out_predictions: held-out predicted labels of the best candidate for every
            row that was held out in some fold (-1 elsewhere).
        n_candidates: size of the full grid (``len(candidates)`` is smaller when a path
            walk stopped early).
        n_not_converged: fits that ended with a ``ConvergenceWarning``.
        seconds: wall time of the search.
    """

    best_params: dict[str, Any]
    best_score: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    held_out_predictions: np.ndarray | None = None
    n_candidates: int = 0
    n_not_converged: int = 0
    seconds: float = 0.0


def _path_groups(
    space: dict[str, Sequence[Any]], path_parameter: str | None
) -> list[list[dict[str, Any]]]:
    """Candidates as sequences that share everything but the path parameter."""
    if not space:
        return [[{}]]
    if path_parameter is None:
        return [[dict(params)] for params in ParameterGrid(space)]
    values = sorted(space[path_parameter])
    others = {key: value for key, value in space.items() if key != path_parameter}
    return [
        [{**params, path_parameter: value} for value in values]
        for params in (ParameterGrid(others) if others else [{}])
    ]


class _Fold:
    """One train/held-out split, with the preprocessing steps fitted once when possible."""

    def __init__(
        self, pipeline: Pipeline, X: np.ndarray, y: np.ndarray, fold: Fold, prefit: bool
    ) -> None:
        train, held_out = fold
        self.held_out = held_out
        self.y_train, self.y_held_out = y[train], y[held_out]
        self.estimator: Any = None
        if prefit and len(pipeline.steps) > 1:
            preprocessing = clone(Pipeline(pipeline.steps[:-1])).fit(X[train], self.y_train)
            self.X_train = preprocessing.transform(X[train])
            self.X_held_out = preprocessing.transform(X[held_out])
        else:
            self.X_train, self.X_held_out = X[train], X[held_out]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(n_tasks: int, n_jobs: int | None = None) -> tuple[int, int]:
    """(parallel workers, threads per worker) for ``n_tasks`` independent fits.

    Workers are ``n_jobs`` (default: the cores), at most one per task and per core;
    the cores are shared out among them, so that workers x threads <= cores.
    """
    cores = available_cores()
    jobs = cores if n_jobs is None or n_jobs < 1 else n_jobs
    jobs = max(1, min(jobs, n_tasks, cores))
    return jobs, max(1, cores // jobs)


@contextlib.contextmanager
def limit_threads(threads: int, *, torch_too: bool = False) -> Iterator[None]:
    """Limit BLAS/OpenMP pools (threadpoolctl) and, when torch is loaded or ``torch_too``,
    torch's intra-op pool to ``threads`` while the block runs; restored afterwards."""
    from threadpoolctl import threadpool_limits

    torch: Any = None
    if torch_too or "torch" in sys.modules:
        import torch as torch_module

        torch = torch_module
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=threads):
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)


def search_pipeline(
    pipeline: Pipeline,
    space: dict[str, Sequence[Any]],
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[Fold],
    *,
    path_parameter: str | None = None,
    patience: int = PATH_PATIENCE,
    n_jobs: int | None = None,
) -> SearchResult:
    """Score every candidate of ``space`` by held-out accuracy; return the best.

    Args:
        pipeline: unfitted pipeline; candidates are applied with ``set_params``.
        space: parameter name -> candidate values (``GridSearchCV``'s ``param_grid``).
        X: codes of every row that any fold uses.
        y: integer labels of those rows.
        folds: (train rows, held-out rows) index pairs: one pair for a validation split,
            k pairs for k-fold CV.
        path_parameter: key of ``space`` walked in increasing order with warm starts and
            early stopping (see the module docstring); None searches the plain grid.
        patience: path values in a row that do not beat the best score (lower or equal)
            before the walk stops.
        n_jobs: folds fitted side by side (threads); None: as many as cores and folds
            allow. The cores are shared out among them (:func:`thread_budget`).

    Returns:
        The best candidate (first in evaluation order among equal scores, i.e. the most
        regularised one along a path), its score and every evaluated candidate.
    """
    from joblib import Parallel

    started = time.perf_counter()
    final_name, final = pipeline.steps[-1]
    prefix = f"{final_name}__"
    prefit = all(key.startswith(prefix) for key in space)
    warm = path_parameter is not None and prefit and "warm_start" in final.get_params()
    jobs, threads = thread_budget(len(folds), n_jobs)
    with limit_threads(threads, torch_too=_uses_torch(pipeline)), \
            Parallel(n_jobs=jobs, backend="threading") as parallel:
        walk = _Walk(pipeline, X, y, folds, prefit, warm, prefix, parallel)
        for group in _path_groups(space, path_parameter):
            walk.path(group, path_parameter is not None, patience)
    return SearchResult(
        dict(walk.best_params or {}), float(walk.best_score), walk.candidates,
        walk.best_predictions, sum(len(g) for g in _path_groups(space, path_parameter)),
        walk.not_converged, time.perf_counter() - started,
    )


def _uses_torch(pipeline: Pipeline) -> bool:
    from .linear import LinearProbe

    return any(isinstance(step, LinearProbe) for _, step in pipeline.steps)


class _Walk:
    """The search state: prepared folds, every candidate so far and the best one."""

    def __init__(self, pipeline: Pipeline, X: np.ndarray, y: np.ndarray,
                 folds: Sequence[Fold], prefit: bool, warm: bool, prefix: str,
                 parallel: Any) -> None:
        from joblib import delayed

        self.pipeline, self.y, self.prefit, self.warm, self.prefix = pipeline, y, prefit, warm, prefix
        self.parallel, self.delayed = parallel, delayed
        self.prepared: list[_Fold] = parallel(
            delayed(_Fold)(pipeline, X, y, fold, prefit) for fold in folds)
        self.best_score = -np.inf
        self.best_params: dict[str, Any] | None = None
        self.best_predictions: np.ndarray | None = None
        self.candidates: list[dict[str, Any]] = []
        self.not_converged = 0

    def path(self, group: list[dict[str, Any]], is_path: bool, patience: int) -> None:
        """Evaluate one group of candidates, in order; stop a path early once it fell."""
        for fold in self.prepared:
            fold.estimator = None
        group_best, below, best_position = -np.inf, 0, 0
        for position, params in enumerate(group):
            score = self.evaluate(params)
            if not is_path:
                continue
            if score > group_best:
                group_best, below, best_position = score, 0, position
            else:
                below += 1
                # A best at the grid's first value is no evidence of a peak: keep walking.
                if below >= patience and best_position > 0:
                    break

    def evaluate(self, params: dict[str, Any]) -> float:
        """Fit and score one candidate on every fold (side by side); its mean score."""
        started = time.perf_counter()
        predictions = np.full(len(self.y), -1, dtype=np.int64)
        # Warnings from the worker threads reach this (process-wide) record too.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            fitted = self.parallel(
                self.delayed(_fit_predict)(self.pipeline, fold, params, self.prefit, self.warm,
                                           self.prefix)
                for fold in self.prepared)
        self.not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        scores = []
        for fold, predicted in zip(self.prepared, fitted):
            predictions[fold.held_out] = predicted
            scores.append(float(np.mean(predicted == fold.y_held_out)))
        score = float(np.mean(scores))
        self.candidates.append({
            "params": params, "score": score, "fold_scores": scores,
            "seconds": round(time.perf_counter() - started, 4),
        })
        if score > self.best_score or self.best_params is None:
            self.best_score, self.best_params, self.best_predictions = score, params, predictions
        return score


def _fit_predict(
    pipeline: Pipeline, fold: _Fold, params: dict[str, Any], prefit: bool, warm: bool, prefix: str
) -> np.ndarray:
    if not prefit:
        model = clone(pipeline).set_params(**params).fit(fold.X_train, fold.y_train)
        return np.asarray(model.predict(fold.X_held_out))
    if fold.estimator is None or not warm:
        fold.estimator = clone(pipeline.steps[-1][1])
        if warm:
            fold.estimator.set_params(warm_start=True)
    fold.estimator.set_params(**{key.removeprefix(prefix): value for key, value in params.items()})
    fold.estimator.fit(fold.X_train, fold.y_train)
    return np.asarray(fold.estimator.predict(fold.X_held_out))
