"""StandardScaler + LinearSVC (one-vs-rest hinge loss): the other linear probe."""

from __future__ import annotations

from typing import Any

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from cnncodes.pipelines import LINEAR_PROBE_C

__all__ = ["build", "search_space", "path_parameter"]

search_space: dict[str, list[Any]] = {"classifier__C": LINEAR_PROBE_C}
# liblinear cannot warm-start, but the path still stops early once large C overfits
# (those are the slowest fits).
path_parameter = "classifier__C"


def build(**params: Any) -> Pipeline:
    """Unfitted scaler + linear SVM; ``params`` are ``set_params`` names."""
    pipeline = Pipeline([
        ("scaler", StandardScaler()),
        ("classifier", LinearSVC(C=1.0, dual="auto", max_iter=5000, tol=1e-4)),
    ])
    return pipeline.set_params(**params)
