"""StandardScaler + multinomial logistic regression fitted by full-batch L-BFGS in torch.

The same model and C as ``logreg`` (``C * sum of log losses + 0.5 * ||W||^2``), solved on
the whole code matrix at once, on the GPU when there is one (``--device``), and
warm-started along the C path. The fitted classifier is plain numpy
(:class:`cnncodes.probe.linear.LinearProbe`): predicting needs no torch.
"""

from __future__ import annotations

from typing import Any

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cnncodes.pipelines import LINEAR_PROBE_C
from cnncodes.probe.linear import LinearProbe

__all__ = ["build", "search_space", "path_parameter"]

search_space: dict[str, list[Any]] = {"classifier__C": LINEAR_PROBE_C}
path_parameter = "classifier__C"


def build(**params: Any) -> Pipeline:
    """Unfitted scaler + L-BFGS logistic regression; ``params`` are ``set_params`` names."""
    pipeline = Pipeline([
        ("scaler", StandardScaler()),
        ("classifier", LinearProbe(loss="log", C=1.0, tol=1e-4, max_iter=1000)),
    ])
    return pipeline.set_params(**params)
