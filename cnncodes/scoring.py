"""What model selection optimises, and class weights for imbalanced data.

One vocabulary for every choice cnncodes makes on held-out images: the probe's
hyper-parameter search (``fit``), the earlier layer of ``compare``'s strategy 2 and the
best epoch (early stopping) of fine-tuning. ``accuracy`` is the share of images right;
``balanced_accuracy`` the mean recall over classes (a rare class counts as much as a
common one); ``macro_f1`` the unweighted mean F1 over classes.

Class weights: ``balanced`` weighs each class by ``n_samples / (n_classes * count)``
(scikit-learn's ``class_weight="balanced"``; the same weights in a weighted cross-entropy
for PyTorch training), ``none`` weighs every image alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import CnnCodesError

__all__ = ["SCORINGS", "CLASS_WEIGHTS", "check_scoring", "check_class_weight", "score",
           "balanced_weights"]

SCORINGS = ("accuracy", "balanced_accuracy", "macro_f1")
CLASS_WEIGHTS = ("none", "balanced")


def _check(option: str, value: str, allowed: Sequence[str], hint: str = "") -> str:
    if value not in allowed:
        raise CnnCodesError(f"{option} {value!r} is not one of {', '.join(allowed)}{hint}.")
    return value


def check_scoring(scoring: str) -> str:
    """``scoring`` if it is one of :data:`SCORINGS`.

    Raises:
        CnnCodesError: any other value.
    """
    return _check("--scoring", scoring, SCORINGS,
                  "; e.g. --scoring balanced_accuracy for imbalanced classes")


def check_class_weight(class_weight: str) -> str:
    """``class_weight`` if it is one of :data:`CLASS_WEIGHTS`.

    Raises:
        CnnCodesError: any other value.
    """
    return _check("--class-weight", class_weight, CLASS_WEIGHTS)


def score(scoring: str, y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
          labels: Sequence[int] | None = None) -> float:
    """``scoring`` of predictions; 0.0 for no images.

    Args:
        labels: the classes that count for ``macro_f1`` (default: those in either array).
    """
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    if truth.size == 0:
        return 0.0
    if scoring == "accuracy":
        return float(np.mean(truth == predicted))
    from sklearn.metrics import balanced_accuracy_score, f1_score

    if scoring == "balanced_accuracy":
        # sklearn warns when a predicted class has no true images; the score is still right
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(balanced_accuracy_score(truth, predicted))
    if scoring == "macro_f1":
        return float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))
    raise CnnCodesError(check_scoring(scoring))  # pragma: no cover - check_scoring raises


def balanced_weights(labels: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Per class ``n / (n_classes * count)`` (scikit-learn's ``balanced``); a class
    without images gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]
    weights = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights
