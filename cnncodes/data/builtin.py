"""Built-in real image sources that every install has: ``sklearn:digits``.

scikit-learn ships ``load_digits``: 1,797 real 8x8 handwritten digits (UCI optdigits,
grey levels 0..16) inside its wheel, so this source works offline, from any folder,
without ../shared. cnncodes turns each digit into an 8-bit RGB image and splits the set
into train and test with a seeded, stratified split (25 % test), recorded in the store as
``/split`` like a folder with train/ and test/.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import CnnCodesError

__all__ = ["BUILTIN_SOURCES", "PREFIX", "BuiltinSet", "is_builtin", "load_builtin"]

PREFIX = "sklearn:"
BUILTIN_SOURCES = {
    "digits": "1,797 real 8x8 handwritten digits shipped inside scikit-learn (10 classes)",
}
TEST_FRACTION = 0.25
SPLIT_SEED = 0


def is_builtin(path: object) -> bool:
    """True for a source string such as ``sklearn:digits``."""
    return isinstance(path, str) and path.startswith(PREFIX)


@dataclass(frozen=True)
class BuiltinSet:
    """A built-in data set as arrays: images and labels per split, class names, and the
    facts its fingerprint is made of. :func:`cnncodes.data.sources.open_source` turns it
    into an image source."""

    name: str
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: list[str]
    identity: list[object]


def load_builtin(spec: str) -> BuiltinSet:
    """The built-in data set named by ``spec`` (``sklearn:digits``).

    Raises:
        CnnCodesError: an unknown built-in name.
    """
    name = spec[len(PREFIX):]
    if name not in BUILTIN_SOURCES:
        raise CnnCodesError(
            f"Unknown built-in source {spec!r}; built-in sources are "
            f"{', '.join(PREFIX + n for n in BUILTIN_SOURCES)}."
        )
    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_rows, test_rows = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    splits = {"train": np.sort(train_rows), "test": np.sort(test_rows)}
    identity: list[object] = [
        "sklearn", name, sklearn.__version__, hashlib.sha256(images.tobytes()).hexdigest(),
        hashlib.sha256(labels.tobytes()).hexdigest(), TEST_FRACTION, SPLIT_SEED,
    ]
    return BuiltinSet(
        spec, {s: images[rows] for s, rows in splits.items()},
        {s: labels[rows] for s, rows in splits.items()},
        [str(c) for c in digits.target_names], identity,
    )
