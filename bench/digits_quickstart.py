"""The README's first command, measured: sklearn:digits -> codes -> logreg, test accuracy
with a 95 % Wilson interval. Prints a Markdown table and writes it to
``bench/results/digits_quickstart.md``."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from cnncodes import extract, fit_pipeline

ROOT = Path(__file__).resolve().parents[1]


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        store = extract(source="sklearn:digits", out=f"{work}/digits.h5", progress=False)
        extract_seconds = time.perf_counter() - started
        fitted = fit_pipeline(store.path, clf="logreg", out=f"{work}/run", progress=False)
        held_out = pd.read_csv(Path(fitted.run_dir) / "predictions.csv", dtype=str)
    test = held_out[held_out["split"] == "test"]
    n, accuracy = len(test), float((test["label"] == test["predicted"]).mean())
    low, high = wilson(accuracy, n)
    text = "\n".join([
        "| data | codes | pipeline | chosen | n test | test accuracy | 95 % interval | extract |",
        "|---|---|---|---|---:|---:|---|---:|",
        f"| sklearn:digits (1,347 train / 450 test) | efficientnet_lite0 -2 (1280-d) | logreg "
        f"| {fitted.row.get('params')} by {fitted.row.get('selected_on')} | {n} | {accuracy:.4f} "
        f"| {low:.3f}-{high:.3f} | {store.n_images / extract_seconds:.0f} img/s |",
    ]) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / "digits_quickstart.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
