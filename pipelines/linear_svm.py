"""StandardScaler + a one-vs-rest squared-hinge linear SVM: the other linear probe.

The model of scikit-learn's ``LinearSVC`` (squared hinge, one-vs-rest, intercept
penalised as liblinear does), solved for all classes at once by full-batch L-BFGS in torch
(:class:`cnncodes.probe.linear.LinearProbe`) and warm-started along the C path, to a
looser tolerance while searching than for the final fit. liblinear
fits one class after another and cannot warm-start: on 101 classes its search took half
an hour for the same accuracy (bench/results/fit_speed.md). The fitted classifier is
plain numpy; predicting needs no torch.
"""

from __future__ import annotations

from typing import Any

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cnncodes.pipelines import LINEAR_PROBE_C
from cnncodes.probe.linear import LinearProbe

__all__ = ["build", "search_space", "path_parameter", "search_settings"]

search_space: dict[str, list[Any]] = {"classifier__C": LINEAR_PROBE_C}
path_parameter = "classifier__C"
# The search solves to a 30x looser gradient tolerance: on 101 classes its fits take
# about a third of the L-BFGS iterations and score the same; the final fit starts from the
# search's solution and solves to the built tol=1e-4.
search_settings: dict[str, Any] = {"classifier__tol": 3e-3}


def build(**params: Any) -> Pipeline:
    """Unfitted scaler + linear SVM; ``params`` are ``set_params`` names."""
    pipeline = Pipeline([
        ("scaler", StandardScaler()),
        ("classifier", LinearProbe(loss="squared_hinge", C=1.0, tol=1e-4, max_iter=1000,
                                   penalize_intercept=True)),
    ])
    return pipeline.set_params(**params)
