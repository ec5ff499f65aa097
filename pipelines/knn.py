"""L2-normalised codes + k-nearest neighbours (cosine similarity in effect)."""

from __future__ import annotations

from typing import Any

from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer

__all__ = ["build", "search_space"]

search_space: dict[str, list[Any]] = {
    "classifier__n_neighbors": [1, 3, 5, 7, 11, 15, 21, 31],
    "classifier__weights": ["uniform", "distance"],
}


def build(**params: Any) -> Pipeline:
    """Unfitted L2 normaliser + k-NN; ``params`` are ``set_params`` names."""
    pipeline = Pipeline([
        ("normalize", Normalizer(norm="l2")),
        ("classifier", KNeighborsClassifier(n_neighbors=5)),
    ])
    return pipeline.set_params(**params)
