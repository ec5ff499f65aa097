"""Linear probes fitted by full-batch L-BFGS in torch, saved as plain numpy estimators.

:class:`LinearProbe` fits a multinomial logistic regression (``loss="log"``) or a
one-vs-rest squared-hinge linear SVM (``loss="squared_hinge"``, LinearSVC's default
loss) on the whole code matrix at once, on the GPU when there is one. ``C`` means what
it means in scikit-learn: the objective is ``C * sum of per-sample losses + 0.5 *
||W||^2`` (the intercept is not penalised), solved here in the equivalent scaled form
``mean loss + ||W||^2 / (2 C n)`` whose gradient ``tol`` bounds, as scikit-learn's lbfgs
does. With ``warm_start=True`` a refit starts from the previous solution, so a path of
increasing ``C`` values (:mod:`cnncodes.probe.search`) costs little more than its last
fit.

What is fitted is numpy only (``coef_``, ``intercept_``, ``classes_``); ``predict`` and
``decision_function`` come from scikit-learn's ``LinearClassifierMixin`` and never need
torch, so a saved model holds no torch object and loads through the skops allow-list
(:data:`cnncodes.probe.model.ALLOWED_TYPES`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.utils.extmath import softmax
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import CnnCodesError

__all__ = ["LinearProbe", "LOSSES"]

LOSSES = ("log", "squared_hinge")
"""``log``: multinomial logistic regression; ``squared_hinge``: one-vs-rest linear SVM."""


def _has_proba(estimator: LinearProbe) -> bool:
    return estimator.loss == "log"


class LinearProbe(LinearClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """L2-regularised linear classifier fitted by full-batch L-BFGS in torch.

    Args:
        loss: ``log`` (multinomial logistic regression, softmax) or ``squared_hinge``
            (one-vs-rest squared hinge, the loss of scikit-learn's ``LinearSVC``). Two
            classes fit one binary classifier either way.
        C: inverse regularisation strength, as in scikit-learn.
        tol: stop once the largest absolute gradient entry of the scaled objective is
            below this (scikit-learn's lbfgs ``tol``).
        max_iter: L-BFGS iterations at most; a ``ConvergenceWarning`` beyond.
        warm_start: start from the previous ``coef_`` and ``intercept_`` when the classes
            and features are the same.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``;
            only the fit runs there.
        history_size: L-BFGS memory (pairs of past steps).
        penalize_intercept: penalise the intercept like a weight, as liblinear does
            (``LinearSVC``'s ``intercept_scaling=1``); scikit-learn's lbfgs does not.

    Attributes:
        coef_: ``(n_classes, n_features)``, or ``(1, n_features)`` for two classes.
        intercept_: ``(n_classes,)``, or ``(1,)``.
        classes_: the class labels.
        n_iter_: L-BFGS iterations of the last fit.
        n_features_in_: code dimension.
    """

    def __init__(self, loss: str = "log", C: float = 1.0, tol: float = 1e-4,
                 max_iter: int = 1000, warm_start: bool = False, device: str = "auto",
                 history_size: int = 20, penalize_intercept: bool = False) -> None:
        self.loss = loss
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.device = device
        self.history_size = history_size
        self.penalize_intercept = penalize_intercept

    def fit(self, X: Any, y: Any) -> LinearProbe:
        """Fit on codes ``X`` (n, d) and labels ``y`` (n,).

        Returns:
            self.

        Raises:
            CnnCodesError: an unknown loss, or C, tol or max_iter out of range.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], reset=True)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise CnnCodesError(
                f"LinearProbe needs at least two classes; the labels hold only {classes[0]!r}."
            )
        start = self._warm_start_point(classes, X.shape[1])
        coef, intercept, n_iter, converged = _lbfgs_fit(
            X, encoded, len(classes), loss=self.loss, C=float(self.C), tol=float(self.tol),
            max_iter=int(self.max_iter), device=self.device,
            history_size=int(self.history_size), start=start,
            penalize_intercept=bool(self.penalize_intercept),
        )
        if not converged:
            warnings.warn(
                f"L-BFGS did not converge in {self.max_iter} iterations (C={self.C:g}); "
                "raise max_iter or tol.", ConvergenceWarning, stacklevel=2,
            )
        self.classes_ = classes
        self.coef_, self.intercept_ = coef, intercept
        self.n_iter_ = int(n_iter)
        return self

    def _check_params(self) -> None:
        if self.loss not in LOSSES:
            raise CnnCodesError(
                f"LinearProbe loss {self.loss!r} is unknown; use one of {', '.join(LOSSES)}."
            )
        for name in ("C", "tol", "max_iter"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not value > 0:
                raise CnnCodesError(
                    f"LinearProbe {name} must be a positive number; got {value!r}."
                )

    def _warm_start_point(
        self, classes: np.ndarray, n_features: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.warm_start or not hasattr(self, "coef_"):
            return None
        same = (np.array_equal(getattr(self, "classes_", np.empty(0)), classes)
                and self.coef_.shape[1] == n_features)
        return (self.coef_, self.intercept_) if same else None

    @available_if(_has_proba)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (``loss="log"`` only): softmax of the decision scores."""
        check_is_fitted(self)
        scores = self.decision_function(X)
        if scores.ndim == 1:  # two classes: the sigmoid of the one score
            positive = expit(scores)
            return np.column_stack([1.0 - positive, positive])
        return softmax(scores)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags


def _lbfgs_fit(
    X: np.ndarray, encoded: np.ndarray, n_classes: int, *, loss: str, C: float, tol: float,
    max_iter: int, device: str, history_size: int,
    start: tuple[np.ndarray, np.ndarray] | None, penalize_intercept: bool,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Minimise ``mean loss + ||W||^2 / (2 C n)``; returns numpy coef, intercept, iterations
    and whether L-BFGS stopped before ``max_iter``."""
    import torch

    from ..runtime import resolve_device

    target = resolve_device(device)
    n, d = X.shape
    k = 1 if n_classes == 2 else n_classes
    features = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=target)
    labels = torch.as_tensor(encoded, dtype=torch.int64, device=target)
    if start is None:
        initial = np.zeros(k * (d + 1), dtype=np.float32)
    else:
        initial = np.concatenate([np.ravel(start[0]), np.ravel(start[1])])
    # One flat parameter (coef rows, then the intercepts): L-BFGS reads its gradient as a
    # contiguous vector.
    flat = torch.tensor(initial, dtype=torch.float32, device=target, requires_grad=True)
    objective = _objective(features, labels, k, loss, 1.0 / (C * n), penalize_intercept)
    optimizer = torch.optim.LBFGS(
        [flat], lr=1.0, max_iter=max_iter, max_eval=max_iter * 5 // 4 + 20,
        tolerance_grad=tol, tolerance_change=1e-12, history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective(flat)
        value.backward()
        return value

    optimizer.step(closure)
    n_iter = int(optimizer.state[flat].get("n_iter", 0))
    solution = flat.detach().to("cpu", torch.float64).numpy()
    coef, intercept = solution[: k * d].reshape(k, d).copy(), solution[k * d:].copy()
    if loss == "log" and k > 1 and not penalize_intercept:
        # Softmax is unchanged by a shift of every intercept: report the centred one.
        intercept -= intercept.mean()
    # Stopping before max_iter: the gradient reached tol, or no step lowers the objective.
    return coef, intercept, n_iter, n_iter < max_iter


def _objective(features: Any, labels: Any, k: int, loss: str, penalty: float,
               penalize_intercept: bool) -> Any:
    """The scaled objective as a function of the flat ``k * (d + 1)`` weights: the
    ``(k, d)`` coef rows, then the ``k`` intercepts."""
    import torch
    import torch.nn.functional as F

    n, d = features.shape
    signs: Any = None
    if k == 1:
        signs = (labels * 2 - 1).to(torch.float64)[:, None]
    elif loss != "log":
        signs = -torch.ones(n, k, dtype=torch.float64, device=features.device)
        signs[torch.arange(n, device=features.device), labels] = 1.0

    def value(flat: torch.Tensor) -> torch.Tensor:
        coef, intercept = flat[: k * d].view(k, d), flat[k * d:]
        # The products in float32 (the costly part), the sums in float64: near the optimum
        # the line search compares values that differ by less than float32 resolves. The
        # (k, d) layout of nn.Linear makes the gradient product grad.T @ features, several
        # times faster on CPU for few classes than features.T @ grad of a (d, k) layout.
        scores = F.linear(features, coef, intercept).double()
        if loss == "log" and k > 1:
            data = F.cross_entropy(scores, labels, reduction="mean")
        elif loss == "log":
            data = F.softplus(-signs * scores).mean()
        else:
            data = torch.clamp(1.0 - signs * scores, min=0.0).square().sum() / n
        penalised = coef.double().square().sum()
        if penalize_intercept:
            penalised = penalised + intercept.double().square().sum()
        return data + 0.5 * penalty * penalised

    return value
