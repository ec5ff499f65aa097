"""StandardScaler + multinomial LogisticRegression: the classic linear probe on CNN codes."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["build", "search_space", "path_parameter"]

# Linear-probe studies tune C over 1e-6..1e5; the best value moves by orders of magnitude
# between data sets, so the grid is wide and log-spaced (two values per decade).
search_space: dict[str, list[Any]] = {"classifier__C": np.logspace(-6, 5, 23).tolist()}
path_parameter = "classifier__C"


def build(**params: Any) -> Pipeline:
    """Unfitted scaler + logistic regression; ``params`` are ``set_params`` names."""
    pipeline = Pipeline([
        ("scaler", StandardScaler()),
        # lbfgs fits the multinomial (softmax) loss for more than two classes.
        ("classifier", LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, tol=1e-4)),
    ])
    return pipeline.set_params(**params)
