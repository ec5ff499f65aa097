"""A transformer that is not scikit-learn's, for the untrusted-types test of load_model."""

from __future__ import annotations

from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["Doubler"]


class Doubler(TransformerMixin, BaseEstimator):
    """Multiplies its input by two."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X * 2
