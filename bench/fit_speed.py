"""Probe fit speed: one plain scikit-learn fit against the searches of `cnncodes fit`.

On two sets of 1280-d EfficientNet-Lite0 penultimate codes (``global_pool.flatten``):

- ``fashion``: real Fashion-MNIST codes, 10,000 train / 10,000 test images
  (bench/fashion_codes.py extracts and caches the store);
- ``synthetic-101``: 101 classes with 30 train / 20 test codes each, Caltech-101's
  protocol, drawn from the real Fashion codes: each class mean is a real training code
  (101 rows drawn at random, so several classes come from the same garment type and are
  hard to tell apart, as in Caltech), and each sample is its class mean plus twice the
  residual of another random real code from *its* Fashion class mean (real within-class
  covariance structure; the factor 2 makes the set as hard as Caltech-101 is for these
  codes: a linear probe reaches about 0.93, against 0.925 measured on Caltech-101 and
  0.997 with factor 1), clipped at 0 like the ReLU6-pooled codes. Written to a code store
  with a train/test split, so every method goes through `fit_pipeline`.

Every search is the real `fit_pipeline` (5-fold stratified CV on train, the 23-value C
grid walked coarse to fine with warm starts and early stop, folds in parallel, final
refit from the search's solution), timed end to end; its seconds are compared side by
side, in one run, with one plain fit (StandardScaler + LogisticRegression(C=1), lbfgs) on
the same train rows. First-call costs are left out of both: a tiny plain fit runs first,
and skops (which saves the searched models) is imported before the timing. liblinear's
LinearSVC (the previous linear_svm) is run once at the C the new linear_svm chose: the
same objective, so its test accuracy is the reference, and its search time is estimated
as that fit's seconds times the fits the path made. Accuracies carry n and a 95% Wilson
interval. Run: python bench/fit_speed.py [--sets fashion synthetic-101]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from cnncodes import CodeStore, fit_pipeline, format_table
from cnncodes.data.store import PartWriter, assemble_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_codes import fashion_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "global_pool.flatten"
SEARCHES = ("logreg", "torch_logreg", "linear_svm")


@dataclass
class _Item:
    path: str
    label: int
    split: str


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy of ``correct`` out of ``n``."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def accuracy_text(accuracy: float, n: int) -> str:
    low, high = wilson(round(accuracy * n), n)
    return f"{accuracy:.4f} [{low:.3f}, {high:.3f}] (n={n})"


def synthetic_codes(X: np.ndarray, y: np.ndarray, *, n_classes: int = 101, train: int = 30,
                    test: int = 20, spread: float = 2.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, labels and split ('train'/'test') of a Caltech-like set drawn from real codes."""
    rng = np.random.default_rng(seed)
    class_means = np.stack([X[y == c].mean(axis=0) for c in range(int(y.max()) + 1)])
    residuals = X - class_means[y]
    means = X[rng.choice(len(X), size=n_classes, replace=False)]
    per_class = train + test
    labels = np.repeat(np.arange(n_classes), per_class)
    noise = residuals[rng.integers(0, len(X), size=len(labels))]
    codes = np.clip(means[labels] + spread * noise, 0.0, None).astype(np.float32)
    split = np.tile(np.array(["train"] * train + ["test"] * test), n_classes)
    return codes, labels, split


def write_store(folder: Path, codes: np.ndarray, labels: np.ndarray, split: np.ndarray,
                attrs: dict[str, Any]) -> Path:
    """A code store of given codes (one layer, ``LAYER``) with a train/test split."""
    n_classes = int(labels.max()) + 1
    classes = [f"class_{c:03d}" for c in range(n_classes)]
    items = [_Item(f"{s}/{classes[c]}/{i}.png", int(c), str(s))
             for i, (c, s) in enumerate(zip(labels, split))]
    key = {"store_key": "synthetic-101"}
    writer = PartWriter(folder / "synthetic.h5.parts", key)
    writer.write(0, len(items), range(len(items)), {LAYER: codes}, [])
    attrs = {**attrs, "layers": [LAYER], "layer_specs": ["-2"], **key}
    return assemble_store(writer, folder / "synthetic.h5", layers=[LAYER],
                          dims={LAYER: codes.shape[1]}, items=items, classes=classes,
                          has_split=True, attrs=attrs)


def plain_fit(X: np.ndarray, y: np.ndarray, X_test: np.ndarray,
              y_test: np.ndarray) -> dict[str, Any]:
    """One StandardScaler + LogisticRegression(C=1) fit, as a user would run it."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000,
                                                                   tol=1e-4)).fit(X, y)
    seconds = time.perf_counter() - started
    return {"method": "plain sklearn fit (scaler + LogisticRegression C=1, lbfgs)",
            "C evaluated": 1, "chosen C": "1", "CV accuracy": None,
            "test accuracy": accuracy_text(float(model.score(X_test, y_test)), len(y_test)),
            "seconds": round(seconds, 2)}


def search(store: Path, clf: str, tmp: Path) -> tuple[dict[str, Any], Any]:
    """`fit_pipeline(store, clf=clf)`, timed end to end."""
    started = time.perf_counter()
    result = fit_pipeline(store, clf=clf, layer=LAYER, out=tmp / clf, progress=True)
    seconds = time.perf_counter() - started
    m = result.metrics
    return {"method": f"cnncodes fit --clf {clf} (search + refit)",
            "C evaluated": m["n_evaluated"],
            "chosen C": f"{result.best_params['classifier__C']:.3g}",
            "CV accuracy": round(m["cv_accuracy"], 4),
            "test accuracy": accuracy_text(m["test_accuracy"], m["n_test"]),
            "seconds": round(seconds, 2)}, result


def liblinear_reference(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                        C: float, fits: int) -> dict[str, Any]:
    """LinearSVC (liblinear, one-vs-rest) once at ``C``; its search time estimated."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), LinearSVC(C=C, dual="auto", max_iter=5000,
                                                          tol=1e-4)).fit(X, y)
    seconds = time.perf_counter() - started
    return {"method": f"liblinear LinearSVC at the same C, once ({seconds:.1f} s); search "
                      f"estimated as {fits} fits",
            "C evaluated": 1, "chosen C": f"{C:.3g}", "CV accuracy": None,
            "test accuracy": accuracy_text(float(model.score(X_test, y_test)), len(y_test)),
            "seconds": round(seconds * fits, 1)}


def measure(name: str, store: Path, liblinear: bool) -> pd.DataFrame:
    """Every row of one code set's table, measured one after another."""
    with CodeStore(store) as opened:
        X, y = opened.load(LAYER, "train")
        X_test, y_test = opened.load(LAYER, "test")
    print(f"{name}: train {X.shape}, test {X_test.shape}, {len(np.unique(y))} classes",
          flush=True)
    plain_fit(X[:200], y[:200], X_test[:10], y_test[:10])  # imports and first-call costs
    # The same for the searches: they save their model with skops, whose first import
    # (about 2 s here) is a once-per-process cost, not part of a search.
    import skops.io  # noqa: F401
    rows = [plain_fit(X, y, X_test, y_test)]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for clf in SEARCHES:
            row, results[clf] = search(store, clf, Path(tmp))
            rows.append(row)
    if liblinear:
        svm = results["linear_svm"]
        fits = svm.metrics["n_evaluated"] * svm.metadata["cv"] + 1
        rows.append(liblinear_reference(X, y, X_test, y_test,
                                        svm.best_params["classifier__C"], fits))
    table = pd.DataFrame(rows)
    plain, logreg = table["seconds"].iloc[0], table["seconds"].iloc[1]
    table["x plain fit"] = (table["seconds"] / plain).round(1)
    table["x logreg search"] = (table["seconds"] / logreg).round(2)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["synthetic-101", "fashion"],
                        choices=["synthetic-101", "fashion"])
    parser.add_argument("--store", help="the real code store (default: the Fashion-MNIST store)")
    parser.add_argument("--no-liblinear", action="store_true",
                        help="skip the liblinear reference fit (minutes on 10,000 codes)")
    args = parser.parse_args()
    real = Path(args.store) if args.store else fashion_store()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            store = real
            if name == "synthetic-101":
                with CodeStore(real) as opened:
                    X, y = opened.load(LAYER, "train")
                    attrs = dict(opened.attrs)
                store = write_store(Path(tmp), *synthetic_codes(X, y), attrs=attrs)
            load = os.getloadavg()[0]
            table = measure(name, store, not args.no_liblinear)
            sections.append(f"## {name}\n\n(load average {load:.1f} at the start)\n\n"
                            + format_table(table, "md") + "\n")
            print(sections[-1], flush=True)
    header = (
        "# fit speed: one plain fit against the searches of `cnncodes fit`\n\n"
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU "
        "(torch on CPU). Codes: 1280-d Lite0 `global_pool.flatten`; 5-fold CV on train, "
        "23-value C grid, test accuracy with a 95% Wilson interval. Made by "
        "bench/fit_speed.py (see its docstring for the synthetic set).\n\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_speed.md").write_text(header + "\n".join(sections))


if __name__ == "__main__":
    main()
