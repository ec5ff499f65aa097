"""Hyper-parameter search for pipelines on CNN codes: a validation split or stratified CV.

Two things make it fast on large code matrices, where a plain ``GridSearchCV`` refits
everything for every candidate:

- the steps before the classifier (scaler, PCA, ...) are fitted once per fold, not once
  per candidate, whenever the searched parameters belong to the classifier alone;
- a regularisation *path* parameter (``C``) is walked coarse to fine: first every other
  value of the sorted grid (a decade apart on the shipped half-decade C grid), in
  increasing order, warm-starting each fit from the previous solution where the estimator
  has ``warm_start``; the walk stops once ``patience`` of these values in a row have not
  beaten the best score: the weakly regularised end of the path is where fits take
  longest and rarely help. Then the skipped values beside the best are evaluated, each
  warm-started from the solution at the evaluated value just below it: on the side of
  the better of the best's two neighbours, or on both sides when they tie or one is
  missing. A tie counts as no
  gain: codes of many classes are often separable, and then every large C predicts the
  same labels, a plateau that would otherwise be walked to its slow end (among equal
  scores the best is the most regularised). A best at the path's first value is no peak
  (the grid may start too high), so the walk then goes on past a dip.

The chosen candidate is the one with the best held-out score, whichever pass evaluated
it. Where the classifier warm-starts and is linear (``coef_``, ``intercept_``), the search
also returns the mean of the fold solutions at the chosen candidate, and
:func:`fit_final` starts the final fit from it: a solver stopped at a gradient tolerance
lands in another place from a cold start than along a warm-started path (with separable
codes and a large C, far apart: 0.932 against 0.956 test accuracy on 101 classes), and
the final model should be the one whose held-out score chose it. It also makes the
final fit a few iterations instead of a cold solve.

The folds of a candidate are fitted side by side in threads (``n_jobs``, by default as
many as there are cores and folds), each with its share of the cores: BLAS pools
(through threadpoolctl) and torch's intra-op pool are limited to ``cores // n_jobs``
threads for the search, so that workers times threads never exceeds the cores. Numpy,
scikit-learn's solvers and torch release the GIL in their heavy loops, and threads share
each fold's warm-started estimator without copying it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
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

from ..scoring import score as score_predictions

__all__ = ["SearchResult", "search_pipeline", "fit_final", "PATH_PATIENCE", "PATH_STRIDE",
           "thread_budget", "limit_threads"]

PATH_PATIENCE = 2
"""Coarse path values not beating the best, in a row, after which the walk stops."""

PATH_STRIDE = 2
"""The coarse pass of a path walk evaluates every ``PATH_STRIDE``-th value of the grid."""

Fold = tuple[np.ndarray, np.ndarray]


@dataclass
class SearchResult:
    """What :func:`search_pipeline` found.

    Attributes:
        best_params: the chosen candidate, in ``set_params`` names.
        best_score: its mean held-out score (accuracy unless another scoring) over the folds.
        candidates: every evaluated candidate: params, mean score, per-fold scores and
            seconds, in evaluation order.
        held_out_predictions: held-out predicted labels of the best candidate for every
            row that was held out in some fold (-1 elsewhere).
        n_candidates: size of the full grid (``len(candidates)`` is smaller when a path
            walk stopped early).
        n_not_converged: fits that ended with a ``ConvergenceWarning``.
        seconds: wall time of the search.
        start: mean ``(coef_, intercept_)`` of the fold solutions at the best candidate,
            when the classifier warm-starts along a path and is linear; None otherwise.
    """

    best_params: dict[str, Any]
    best_score: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    held_out_predictions: np.ndarray | None = None
    n_candidates: int = 0
    n_not_converged: int = 0
    seconds: float = 0.0
    start: tuple[np.ndarray, np.ndarray] | None = None


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
    scoring: str = "accuracy",
) -> SearchResult:
    """Score every candidate of ``space`` by held-out ``scoring``; return the best.

    Args:
        pipeline: unfitted pipeline; candidates are applied with ``set_params``.
        space: parameter name -> candidate values (``GridSearchCV``'s ``param_grid``).
        X: codes of every row that any fold uses.
        y: integer labels of those rows.
        folds: (train rows, held-out rows) index pairs: one pair for a validation split,
            k pairs for k-fold CV.
        path_parameter: key of ``space`` walked coarse to fine with warm starts and early
            stopping (see the module docstring); None searches the plain grid.
        patience: coarse path values in a row that do not beat the best score (lower or
            equal) before the walk stops.
        n_jobs: folds fitted side by side (threads); None: as many as cores and folds
            allow. The cores are shared out among them (:func:`thread_budget`).
        scoring: what a candidate's held-out predictions are scored by, one of
            :data:`cnncodes.scoring.SCORINGS` (mean over the folds).

    Returns:
        The best candidate (among equal scores the first in grid order, i.e. the most
        regularised one along a path), its score, every evaluated candidate and, for a
        warm-started linear classifier, the start of the final fit.
    """
    from joblib import Parallel

    started = time.perf_counter()
    final_name, final = pipeline.steps[-1]
    prefix = f"{final_name}__"
    prefit = all(key.startswith(prefix) for key in space)
    warm = path_parameter is not None and prefit and "warm_start" in final.get_params()
    jobs, threads = thread_budget(len(folds), n_jobs)
    with limit_threads(threads, torch_too=_uses_torch(pipeline)), \
            Parallel(n_jobs=jobs, backend="threading", batch_size=1) as parallel:
        walk = _Walk(pipeline, X, y, folds, prefit, warm, prefix, parallel, scoring)
        for group in _path_groups(space, path_parameter):
            walk.path(group, path_parameter is not None, patience)
    return SearchResult(
        dict(walk.best_params or {}), float(walk.best_score), walk.candidates,
        walk.best_predictions, sum(len(g) for g in _path_groups(space, path_parameter)),
        walk.not_converged, time.perf_counter() - started, walk.best_start,
    )


def fit_final(pipeline: Pipeline, X: np.ndarray, y: np.ndarray,
              start: tuple[np.ndarray, np.ndarray] | None) -> Pipeline:
    """Fit ``pipeline`` on ``X``, ``y``; its classifier starts from ``start`` (the search's
    mean fold solution, :attr:`SearchResult.start`) when given and it can warm-start.

    The classifier's ``warm_start`` is left as it was built.
    """
    classifier = pipeline.steps[-1][1]
    params = classifier.get_params()
    if start is None or "warm_start" not in params:
        return pipeline.fit(X, y)
    classifier.set_params(warm_start=True)
    classifier.coef_, classifier.intercept_ = start[0].copy(), start[1].copy()
    # LinearProbe warm-starts only for the classes it saw; LogisticRegression checks shapes.
    classifier.classes_ = np.unique(y)
    try:
        return pipeline.fit(X, y)
    finally:
        classifier.set_params(warm_start=params["warm_start"])


def _uses_torch(pipeline: Pipeline) -> bool:
    from .linear import LinearProbe

    return any(isinstance(step, LinearProbe) for _, step in pipeline.steps)


class _Walk:
    """The search state: prepared folds, every candidate so far and the best one.

    Candidates are evaluated in batches: every (candidate, fold) fit of a batch is one task
    for the worker threads, so that a worker that finishes its fold of one candidate takes
    up a fold of the next instead of waiting for the slowest fold (5 folds on 2 workers
    would otherwise cost 3 rounds a candidate, not 2.5). A fit that continues a fold's
    warm-started path waits for that fold's previous fit.
    """

    def __init__(self, pipeline: Pipeline, X: np.ndarray, y: np.ndarray,
                 folds: Sequence[Fold], prefit: bool, warm: bool, prefix: str,
                 parallel: Any, scoring: str = "accuracy") -> None:
        from joblib import delayed

        self.pipeline, self.y, self.prefit, self.warm, self.prefix = pipeline, y, prefit, warm, prefix
        self.parallel, self.delayed, self.scoring = parallel, delayed, scoring
        self.prepared: list[_Fold] = parallel(
            delayed(_Fold)(pipeline, X, y, fold, prefit) for fold in folds)
        self.best_score = -np.inf
        self.best_params: dict[str, Any] | None = None
        self.best_rank: tuple[int, int] = (0, 0)
        self.best_predictions: np.ndarray | None = None
        self.best_start: tuple[np.ndarray, np.ndarray] | None = None
        self.candidates: list[dict[str, Any]] = []
        self.not_converged = 0
        self.group = 0

    def path(self, group: list[dict[str, Any]], is_path: bool, patience: int) -> None:
        """Evaluate one group of candidates: all of them at once, or a path coarse to fine."""
        self.group += 1
        for fold in self.prepared:
            fold.estimator = None
        if not is_path:
            self.evaluate([(params, position, None) for position, params in enumerate(group)])
            return
        coarse = list(range(0, len(group), PATH_STRIDE))
        snapshots: dict[int, list[Any]] = {}
        coarse_scores: dict[int, float] = {}
        group_best, best, below = -np.inf, 0, 0
        # Coarse values two at a time (their folds overlap in the workers); the stopping
        # rule sees them one by one, so a walk may go one value past where it would stop.
        for pair in (coarse[i:i + 2] for i in range(0, len(coarse), 2)):
            fitted = self.evaluate([(group[p], p, _CONTINUE) for p in pair])
            for position, (score, estimators) in zip(pair, fitted):
                snapshots[position], coarse_scores[position] = estimators, score
                if score > group_best:
                    group_best, best, below = score, position, 0
                else:
                    below += 1
            # The fine pass starts from the values at and just below the best only.
            snapshots = {p: e for p, e in snapshots.items() if p >= best - PATH_STRIDE}
            # A best at the grid's first value is no evidence of a peak: keep walking.
            if below >= patience and best > 0:
                break
        self.evaluate([(group[p], p, snapshots.get(low) if self.warm else None)
                       for low in _fine_sides(coarse_scores, best)
                       for p in range(low + 1, min(low + PATH_STRIDE, len(group)))])

    def evaluate(self, requests: list[tuple[dict[str, Any], int, Any]]
                 ) -> list[tuple[float, list[Any]]]:
        """Fit and score candidates on every fold, all fits side by side.

        Args:
            requests: (params, position in the group, start) per candidate; start is
                ``_CONTINUE`` (go on from the fold's previous fit), None (a cold start) or
                one estimator per fold to start from (copied).

        Returns:
            Per candidate: its mean score and the fitted fold estimators (copies).
        """
        tasks: list[_Task] = []
        previous: dict[int, _Task] = {}
        for params, _, start in requests:
            for index, fold in enumerate(self.prepared):
                begin = start[index] if isinstance(start, list) else start
                task = _Task(fold, params, begin, previous.get(index) if begin is _CONTINUE
                             else None)
                previous[index] = task
                tasks.append(task)
        # Warnings from the worker threads reach this (process-wide) record too.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.parallel(self.delayed(task.run)(self.pipeline, self.prefit, self.warm,
                                                 self.prefix) for task in tasks)
        self.not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        folds = len(self.prepared)
        return [self.record(params, position, tasks[n * folds:(n + 1) * folds])
                for n, (params, position, _) in enumerate(requests)]

    def record(self, params: dict[str, Any], position: int,
               tasks: list[_Task]) -> tuple[float, list[Any]]:
        """Add one evaluated candidate; keep it when it is the best so far."""
        predictions = np.full(len(self.y), -1, dtype=np.int64)
        scores = []
        for task in tasks:
            predictions[task.fold.held_out] = task.predicted
            scores.append(score_predictions(self.scoring, task.fold.y_held_out, task.predicted))
        score = float(np.mean(scores))
        self.candidates.append({
            "params": params, "score": score, "fold_scores": scores,
            "seconds": round(sum(task.seconds for task in tasks), 4),
        })
        fitted = [task.fitted for task in tasks]
        rank = (self.group, position)
        if (self.best_params is None or score > self.best_score
                or (score == self.best_score and rank < self.best_rank)):
            self.best_score, self.best_params, self.best_rank = score, params, rank
            self.best_predictions = predictions
            self.best_start = _mean_solution(fitted) if self.warm else None
        return score, fitted


def _fine_sides(coarse_scores: dict[int, float], best: int) -> list[int]:
    """The coarse positions after which the fine pass refines: both gaps beside the best,
    or only the one towards the better neighbour when both neighbours were scored and
    differ (a parabola through the three scores peaks on that side)."""
    low, high = best - PATH_STRIDE, best + PATH_STRIDE
    sides = [p for p in (low, best) if p >= 0]
    if low in coarse_scores and high in coarse_scores and coarse_scores[low] != coarse_scores[high]:
        sides = [low] if coarse_scores[low] > coarse_scores[high] else [best]
    return sides


_CONTINUE = "continue"
"""A fit's start: where the fold's previous fit ended (its warm-started path)."""


class _Task:
    """One fit of one candidate on one fold, run by a worker thread."""

    def __init__(self, fold: _Fold, params: dict[str, Any], start: Any,
                 after: _Task | None) -> None:
        self.fold, self.params, self.start, self.after = fold, params, start, after
        self.done = threading.Event()
        self.predicted: np.ndarray = np.empty(0)
        self.fitted: Any = None
        self.seconds = 0.0

    def run(self, pipeline: Pipeline, prefit: bool, warm: bool, prefix: str) -> None:
        try:
            if self.after is not None:
                # Dispatched in order, so the fit waited for is running or done: no deadlock.
                self.after.done.wait()
            started = time.perf_counter()
            if self.start is _CONTINUE:
                estimator = self.fold.estimator
            else:
                estimator = None if self.start is None else copy.deepcopy(self.start)
            self.predicted, estimator = _fit_predict(pipeline, self.fold, estimator, self.params,
                                                     prefit, warm, prefix)
            if self.start is _CONTINUE:
                self.fold.estimator = estimator
            self.fitted = copy.deepcopy(estimator) if warm else None
            self.seconds = time.perf_counter() - started
        finally:
            self.done.set()


def _mean_solution(estimators: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean ``(coef_, intercept_)`` of fitted fold estimators; None unless all are linear
    with the same shapes."""
    solutions = [(getattr(e, "coef_", None), getattr(e, "intercept_", None)) for e in estimators]
    if any(coef is None or intercept is None for coef, intercept in solutions):
        return None
    coefs = [np.asarray(coef, dtype=np.float64) for coef, _ in solutions]
    intercepts = [np.atleast_1d(np.asarray(b, dtype=np.float64)) for _, b in solutions]
    if len({c.shape for c in coefs}) != 1 or len({b.shape for b in intercepts}) != 1:
        return None
    return np.mean(coefs, axis=0), np.mean(intercepts, axis=0)


def _fit_predict(
    pipeline: Pipeline, fold: _Fold, estimator: Any, params: dict[str, Any], prefit: bool,
    warm: bool, prefix: str,
) -> tuple[np.ndarray, Any]:
    """Held-out predictions of one fit, and the fitted classifier (None without prefit)."""
    if not prefit:
        model = clone(pipeline).set_params(**params).fit(fold.X_train, fold.y_train)
        return np.asarray(model.predict(fold.X_held_out)), None
    if estimator is None or not warm:
        estimator = clone(pipeline.steps[-1][1])
        if warm:
            estimator.set_params(warm_start=True)
    estimator.set_params(**{key.removeprefix(prefix): value for key, value in params.items()})
    estimator.fit(fold.X_train, fold.y_train)
    return np.asarray(estimator.predict(fold.X_held_out)), estimator
