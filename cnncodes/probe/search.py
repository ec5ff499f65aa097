"""Hyper-parameter search for pipelines on CNN codes: a validation split or stratified CV.

Two things make it fast on large code matrices, where a plain ``GridSearchCV`` refits
everything for every candidate:

- the steps before the classifier (scaler, PCA, ...) are fitted once per fold, not once
  per candidate, whenever the searched parameters belong to the classifier alone;
- a regularisation *path* parameter (``C``) is walked in increasing order, warm-starting
  each fit from the previous solution where the estimator has ``warm_start``, and the walk
  stops once the score has been below the best for ``patience`` values in a row: the
  weakly regularised end of the path is where fits take longest and rarely help. A best
  at the path's first value is no peak (the grid may start too high), so the walk then
  goes on past a dip.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

__all__ = ["SearchResult", "search_pipeline", "PATH_PATIENCE"]

PATH_PATIENCE = 3
"""Path values scoring below the best, in a row, after which the path walk stops."""

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


def search_pipeline(
    pipeline: Pipeline,
    space: dict[str, Sequence[Any]],
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[Fold],
    *,
    path_parameter: str | None = None,
    patience: int = PATH_PATIENCE,
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
        patience: path values below the best score, in a row, before the walk stops.

    Returns:
        The best candidate (first in evaluation order among equal scores, i.e. the most
        regularised one along a path), its score and every evaluated candidate.
    """
    started = time.perf_counter()
    final_name, final = pipeline.steps[-1]
    prefix = f"{final_name}__"
    prefit = all(key.startswith(prefix) for key in space)
    warm = path_parameter is not None and prefit and "warm_start" in final.get_params()
    prepared = [_Fold(pipeline, X, y, fold, prefit) for fold in folds]
    groups = _path_groups(space, path_parameter)

    best_score, best_params, best_predictions = -np.inf, groups[0][0], None
    candidates: list[dict[str, Any]] = []
    not_converged = 0
    for group in groups:
        for fold in prepared:
            fold.estimator = None
        group_best, below = -np.inf, 0
        for position, params in enumerate(group):
            candidate_started = time.perf_counter()
            predictions = np.full(len(y), -1, dtype=np.int64)
            scores = []
            for fold in prepared:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    predicted = _fit_predict(pipeline, fold, params, prefit, warm, prefix)
                not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
                predictions[fold.held_out] = predicted
                scores.append(float(np.mean(predicted == fold.y_held_out)))
            score = float(np.mean(scores))
            candidates.append({
                "params": params, "score": score, "fold_scores": scores,
                "seconds": round(time.perf_counter() - candidate_started, 4),
            })
            if score > best_score:
                best_score, best_params, best_predictions = score, params, predictions
            if path_parameter is None:
                continue
            if score > group_best:
                group_best, below, best_position = score, 0, position
            elif score < group_best:
                below += 1
                # A best at the grid's first value is no evidence of a peak: keep walking.
                if below >= patience and best_position > 0:
                    break
    return SearchResult(
        dict(best_params), float(best_score), candidates, best_predictions,
        sum(len(group) for group in groups), not_converged, time.perf_counter() - started,
    )


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
