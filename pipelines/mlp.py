"""StandardScaler + a small feed-forward network (MLPClassifier with early stopping)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["build", "search_space"]

# alpha is the L2 penalty; early stopping holds out 10 % of the training rows per fit.
search_space: dict[str, list[Any]] = {"classifier__alpha": np.logspace(-5, 1, 7).tolist()}


def build(**params: Any) -> Pipeline:
    """Unfitted scaler + one-hidden-layer MLP; ``params`` are ``set_params`` names."""
    pipeline = Pipeline([
        ("scaler", StandardScaler()),
        ("classifier", MLPClassifier(
            hidden_layer_sizes=(256,), alpha=1e-4, early_stopping=True, max_iter=200,
            n_iter_no_change=10,
        )),
    ])
    return pipeline.set_params(**params)
