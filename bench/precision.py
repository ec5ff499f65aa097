"""Extraction precision on a CPU: float32 against ``--amp`` (bfloat16 autocast).

For each real data set at hand (hymenoptera train/val; Fashion-MNIST, the first N train
and N test images), codes are extracted twice, once per precision, and the same
``fit --clf logreg`` runs on each. Prints speed (whole extraction), code agreement
(cosine to the float32 codes) and probe accuracy per precision with n and a 95 % Wilson
interval, plus the paired count of test images that only one precision got right.
Writes bench/results/precision.md. Run: python bench/precision.py [--fashion 1000]; on a
CPU without native bfloat16, ``--amp`` falls back to float32 unless CNNCODES_CPU_BF16=1.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from cnncodes import CodeStore, extract, fit_pipeline
from cnncodes.runtime import cpu_has_native_bf16

HERE = Path(__file__).resolve().parent
HYMENOPTERA = HERE.parent.parent / "shared" / "data" / "hymenoptera_data"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def one_precision(source: str, limit: int | None, amp: bool, work: Path) -> dict:
    started = time.perf_counter()
    result = extract(source=source, limit=limit, amp=amp, device="cpu", progress=False,
                     out=str(work / f"{Path(source).name}-{amp}.h5"))
    seconds = time.perf_counter() - started
    run = fit_pipeline(result.path, clf="logreg", out=work / f"run-{Path(source).name}-{amp}",
                       progress=False)
    predictions = pd.read_csv(run.run_dir / "predictions.csv")
    split = "test" if (predictions["split"] == "test").any() else "val"
    scored = predictions[predictions["split"] == split].sort_values("path")
    with CodeStore(result.path) as store:
        codes = store.codes("-2")
        order = np.argsort(store.paths)
    return {"seconds": seconds, "img/s": result.n_images / seconds, "codes": codes[order],
            "correct": (scored["label"] == scored["predicted"]).to_numpy(), "split": split,
            "C": run.best_params}


def compare(name: str, source: str, limit: int | None, work: Path) -> list[dict]:
    fp32 = one_precision(source, limit, False, work)
    bf16 = one_precision(source, limit, True, work)
    cosine = (fp32["codes"] * bf16["codes"]).sum(1) / (
        np.linalg.norm(fp32["codes"], axis=1) * np.linalg.norm(bf16["codes"], axis=1))
    only_fp32 = int((fp32["correct"] & ~bf16["correct"]).sum())
    only_bf16 = int((~fp32["correct"] & bf16["correct"]).sum())
    paired_p = binomtest(only_fp32, only_fp32 + only_bf16).pvalue if only_fp32 + only_bf16 else 1.0
    rows = []
    for label, run in (("float32", fp32), ("bfloat16 (--amp)", bf16)):
        k, n = int(run["correct"].sum()), len(run["correct"])
        low, high = wilson(k, n)
        rows.append({
            "data": name, "precision": label, "extract img/s": round(run["img/s"], 1),
            f"{run['split']} n": n, "accuracy": round(k / n, 4),
            "95% interval": f"{low:.3f}-{high:.3f}",
            "cosine to fp32 (mean/min)": "1 / 1" if label == "float32" else
            f"{cosine.mean():.4f} / {cosine.min():.4f}",
            "right only with this precision": only_fp32 if label == "float32" else only_bf16,
            "paired sign-test p": "" if label == "float32" else round(paired_p, 3),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", type=int, default=1000,
                        help="Fashion-MNIST images per split (0: leave it out)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if HYMENOPTERA.is_dir():
            rows += compare("hymenoptera", str(HYMENOPTERA), None, work)
        if FASHION.is_dir() and args.fashion > 0:
            rows += compare(f"Fashion-MNIST ({args.fashion}/split)", str(FASHION), args.fashion,
                            work)
    table = pd.DataFrame(rows).to_markdown(index=False)
    text = (
        "# Extraction precision on a CPU: float32 vs --amp (bfloat16)\n\n"
        f"efficientnet_lite0, layer -2, logreg (C chosen on val or by 5-fold CV); "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, native "
        f"bfloat16: {cpu_has_native_bf16()}; {time.strftime('%Y-%m-%d')}.\n\n{table}\n"
    )
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "precision.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
