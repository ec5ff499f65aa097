"""The default ``fit --clf logreg`` search against scikit-learn's LogisticRegressionCV.

Same codes (Fashion-MNIST train, 10,000 x 1280 Lite0 penultimate codes by default), same
C grid (23 values, 1e-6..1e5), same 5 stratified folds, same solver settings (lbfgs,
max_iter 1000, tol 1e-4), both standardised. Reports chosen C, CV accuracy, test accuracy
and wall seconds side by side; prints a markdown table and writes
bench/results/fit_speed.md. Run: python bench/fit_speed.py [--store S.h5 --layer -2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cnncodes import CodeStore, fit_pipeline, format_table
from cnncodes.pipelines import logreg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_codes import fashion_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="code store (default: the Fashion-MNIST store)")
    parser.add_argument("--layer", default="-2")
    parser.add_argument("--cv", type=int, default=5)
    args = parser.parse_args()
    store_path = Path(args.store) if args.store else fashion_store()

    with CodeStore(store_path) as store:
        layer = store.resolve(args.layer)
        X_train, y_train = store.load(layer, "train")
        X_test, y_test = store.load(layer, "test")
    print(f"codes: train {X_train.shape}, test {X_test.shape} from {store_path.name}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ours = fit_pipeline(store_path, clf="logreg", layer=layer, cv=args.cv,
                            out=Path(tmp) / "run", progress=True)
    m = ours.metrics

    grid = logreg.search_space["classifier__C"]
    reference = logreg.build().steps[-1][1]
    folds = StratifiedKFold(args.cv, shuffle=True, random_state=0)
    sklearn_cv = Pipeline([
        ("scaler", StandardScaler()),
        ("classifier", LogisticRegressionCV(
            Cs=grid, cv=folds, scoring="accuracy", solver="lbfgs",
            max_iter=reference.max_iter, tol=reference.tol, n_jobs=1,
        )),
    ])
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sklearn_cv.fit(X_train, y_train)
    seconds = time.perf_counter() - started
    cv_model = sklearn_cv.named_steps["classifier"]
    mean_scores = np.mean(next(iter(cv_model.scores_.values())), axis=0)

    table = pd.DataFrame([
        {"method": "cnncodes fit --clf logreg (val/CV path, warm starts, early stop)",
         "C grid": f"{len(grid)} values", "C evaluated": m["n_evaluated"],
         "chosen C": f"{ours.best_params['classifier__C']:.3g}",
         "CV accuracy": m["cv_accuracy"], "test accuracy": m["test_accuracy"],
         "seconds": m["fit_seconds"]},
        {"method": "sklearn LogisticRegressionCV (same grid and folds)",
         "C grid": f"{len(grid)} values", "C evaluated": len(grid),
         "chosen C": f"{float(cv_model.C_[0]):.3g}", "CV accuracy": float(mean_scores.max()),
         "test accuracy": float(sklearn_cv.score(X_test, y_test)) if len(X_test) else None,
         "seconds": round(seconds, 3)},
    ])
    text = (
        f"# fit speed: logreg search vs LogisticRegressionCV\n\n"
        f"Codes: {store_path.name}, layer {layer}, train {X_train.shape[0]} x {X_train.shape[1]}, "
        f"test {X_test.shape[0]}; {args.cv}-fold stratified CV; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.\n\n"
        + format_table(table, "md") + "\n"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_speed.md").write_text(text)


if __name__ == "__main__":
    main()
