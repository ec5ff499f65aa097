"""StandardScaler + SVC with an RBF kernel: a non-linear classifier on the codes."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

__all__ = ["build", "search_space", "path_parameter"]

# gamma="scale" (1 / (n_features * X.var())) adapts to the code dimension; C carries the
# search. Kernel SVMs gain nothing below C=1e-3, so the 15-value grid starts there.
search_space: dict[str, list[Any]] = {"classifier__C": np.logspace(-3, 4, 15).tolist()}
path_parameter = "classifier__C"


def build(**params: Any) -> Pipeline:
    """Unfitted scaler + RBF SVM; ``params`` are ``set_params`` names."""
    pipeline = Pipeline([
        ("scaler", StandardScaler()),
        ("classifier", SVC(C=1.0, kernel="rbf", gamma="scale")),
    ])
    return pipeline.set_params(**params)
