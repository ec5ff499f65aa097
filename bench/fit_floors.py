"""The issue's accuracy floors on real data, measured with ``fit_pipeline``.

- hymenoptera (ants vs bees), default backbone, layer -2: logreg >= 0.94 val accuracy,
  linear_svm >= 0.93.
- Fashion-MNIST (10,000 train / 10,000 test images): logreg on codes of -2 and of three
  earlier layers against the raw-pixel LogisticRegression baseline (about 0.84, published
  with the data set; also measured here on the same 10,000 training images).

Prints markdown tables and writes bench/results/fit_floors.md.
Run: python bench/fit_floors.py [--skip-fashion]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from cnncodes import extract, fit_pipeline, format_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_codes import FASHION_LAYERS, FASHION_MNIST, fashion_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
RESULTS = Path(__file__).resolve().parent / "results"
RUNS = ROOT / "runs" / "bench"
FLOORS = {"logreg": 0.94, "linear_svm": 0.93}
PUBLISHED_RAW_PIXEL_LOGREG = 0.84


def _row(result, floor: float | None = None) -> dict:
    row = {k: result.row[k] for k in ("layer", "pipeline", "params", "code_dim", "n_train",
                                      "val_accuracy", "test_accuracy", "cv_accuracy",
                                      "macro_f1", "fit_seconds")}
    if floor is not None:
        row["floor"] = floor
        row["meets floor"] = "yes" if row["val_accuracy"] >= floor else "NO"
    return row


def hymenoptera() -> pd.DataFrame:
    store = extract(source=str(HYMENOPTERA), layers=("-2", "-5"), progress=False).path
    rows = []
    for clf, floor in FLOORS.items():
        result = fit_pipeline(store, clf=clf, layer="-2", out=RUNS / f"hymenoptera-{clf}",
                              progress=False)
        rows.append(_row(result, floor))
        print(rows[-1], flush=True)
    return pd.DataFrame(rows).dropna(axis=1, how="all")


def _idx(name: str) -> np.ndarray:
    with gzip.open(FASHION_MNIST / name, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def raw_pixel_baseline(limit: int) -> dict:
    X = _idx("train-images-idx3-ubyte.gz")[:limit].reshape(limit, -1) / 255.0
    y = _idx("train-labels-idx1-ubyte.gz")[:limit]
    X_test = _idx("t10k-images-idx3-ubyte.gz")[:limit].reshape(-1, 784) / 255.0
    y_test = _idx("t10k-labels-idx1-ubyte.gz")[:limit]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=1000).fit(X, y)
    return {"layer": "raw pixels", "pipeline": "LogisticRegression(C=1)", "params": "C=1",
            "code_dim": 784, "n_train": limit, "test_accuracy": round(model.score(X_test, y_test), 6),
            "fit_seconds": round(time.perf_counter() - started, 3)}


def fashion(limit: int) -> pd.DataFrame:
    store = fashion_store(limit)
    rows = [{"layer": "raw pixels (published)", "pipeline": "LogisticRegression",
             "test_accuracy": PUBLISHED_RAW_PIXEL_LOGREG}, raw_pixel_baseline(limit)]
    for layer in FASHION_LAYERS:
        result = fit_pipeline(store, clf="logreg", layer=layer,
                              out=RUNS / f"fashion-logreg-{layer}", progress=False)
        rows.append(_row(result))
        print(rows[-1], flush=True)
    return pd.DataFrame(rows).dropna(axis=1, how="all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--limit", type=int, default=10000)
    args = parser.parse_args()
    parts = ["# Accuracy floors on real data\n",
             "## hymenoptera, efficientnet_lite0, layer -2 (selected on val)\n",
             format_table(hymenoptera(), "md")]
    if not args.skip_fashion:
        parts += [f"\n## Fashion-MNIST, {args.limit} train / {args.limit} test, logreg "
                  "(C by 5-fold CV on train)\n", format_table(fashion(args.limit), "md")]
    text = "\n".join(parts) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_floors.md").write_text(text)


if __name__ == "__main__":
    main()
