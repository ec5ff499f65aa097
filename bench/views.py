"""Augmented codes: probe accuracy with K = 0, 2, 5 augmented views per training image,
with and without test-time augmentation, and what the views cost to extract.

For each data set and K, ``cnncodes.extract(views=K)`` writes the store (K seeded random
resized crops + flips of every training image, as ``cnncodes extract DATA --views K``),
``cnncodes.fit_pipeline`` fits the shipped ``logreg`` (C chosen on val for hymenoptera;
by 5-fold CV on train grouped by source image for Fashion-MNIST, which has no val), and
the held-out images are scored twice: without TTA (the fit's own held-out predictions)
and with ``predict --tta 2`` (mean probability of the image, its flip and one seeded view;
the TTA codes are extracted once and shared by every K).

- hymenoptera: train 244 photos -> val 153 (n = 153: differences are read against the
  intervals, never called wins);
- Fashion-MNIST: the first N train and N test images (``--limit N``, 100 per class for
  N = 1,000), written as PNG files so that ``predict`` reads them as any user's folder
  (the same pixels as the idx files).

Accuracies carry 95 % Wilson intervals; each K and the TTA rows are compared with K = 0
without TTA on the same test images by an exact McNemar test. Extraction time is the wall
time of ``extract`` (model load and listing included) on a machine shared with other jobs.

Run: python bench/views.py [--fashion-limit 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.stats import binomtest

from cnncodes import extract, fit_pipeline, predict
from cnncodes.data.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS = ROOT / "bench" / "results"
KS = (0, 2, 5)
TTA = 2


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``correct / n``."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test: (only A right, only B right, two-sided p)."""
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return b, c, (binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0)


def fashion_folder(work: Path, limit: int) -> Path:
    """The first ``limit`` Fashion-MNIST train and test images (as ``--limit`` picks
    them) as PNG files in an ImageFolder tree ``train/`` + ``test/``."""
    root = work / f"fashion-{limit}"
    if root.exists():
        return root
    source = open_source(FASHION_MNIST, limit=limit)
    for item in source.items:
        folder = root / item.split / source.classes[item.label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        split, index = item.path.split("#")
        Image.fromarray(source.arrays[split][int(index)], mode="L").save(folder / f"{index}.png")
    return root


def _correct(frame: pd.DataFrame, prefix: str) -> pd.Series:
    """Right or wrong per image, keyed by the path below the split folder."""
    keys = frame["path"].str.removeprefix(prefix)
    return pd.Series((frame["predicted"] == frame["label"]).to_numpy(), index=keys).sort_index()


def measure(name: str, data: Path, held: str, work: Path) -> list[dict[str, Any]]:
    """Every K on one data set: extraction, fit, held-out accuracy with and without TTA."""
    rows = []
    for k in KS:
        started = time.perf_counter()
        result = extract(source=str(data), views=k, out=str(work / f"{name}-k{k}.h5"),
                         progress=False, overwrite=True)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        fitted = fit_pipeline(result.path, clf="logreg", out=work / f"{name}-k{k}-run",
                              progress=False)
        fit_seconds = time.perf_counter() - started
        scored = pd.read_csv(fitted.run_dir / "predictions.csv")
        plain = _correct(scored[scored["split"] == held], f"{held}/")
        tta = predict(fitted.run_dir, data / held, tta=TTA, progress=False,
                      keep_codes=work / f"{name}-tta{TTA}.h5")
        rows.append({"data": name, "K": k, "rows": result.n_images, "views": result.n_views,
                     "extract_s": seconds, "fit_s": fit_seconds,
                     "selected_on": fitted.metrics["selected_on"],
                     "plain": plain, "tta": _correct(tta, "")})
        print(f"{name} K={k}: {result.n_images} rows in {seconds:.1f}s, "
              f"accuracy {plain.mean():.4f}, TTA {rows[-1]['tta'].mean():.4f}", flush=True)
    return rows


def _cell(right: pd.Series) -> str:
    n, correct = len(right), int(right.sum())
    low, high = wilson(correct, n)
    return f"{correct / n:.3f} ({low:.3f}-{high:.3f})"


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Augmented codes: K views per training image, with and without TTA",
        "",
        "| data | K | rows (views) | extract s | rows/s | fit s | selected on | n | "
        f"accuracy (95 % CI) | McNemar vs K=0 | with --tta {TTA} | McNemar vs K=0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["data"]: r for r in rows if r["K"] == 0}
    for r in rows:
        reference = base[r["data"]]["plain"].to_numpy()
        tests = []
        for right in (r["plain"], r["tta"]):
            assert (right.index == base[r["data"]]["plain"].index).all(), "other images"
            b, c, p = mcnemar(reference, right.to_numpy())
            tests.append("-" if r["K"] == 0 and right is r["plain"] else
                         f"+{c} -{b}, p={p:.3f}")
        lines.append(
            f"| {r['data']} | {r['K']} | {r['rows']} ({r['views']}) | {r['extract_s']:.1f} | "
            f"{r['rows'] / r['extract_s']:.1f} | {r['fit_s']:.1f} | {r['selected_on']} | "
            f"{len(r['plain'])} | {_cell(r['plain'])} | {tests[0]} | {_cell(r['tta'])} | "
            f"{tests[1]} |")
    lines += [
        "",
        "McNemar +a -b: a images this row gets right and K=0 without TTA gets wrong, b the reverse;",
        "exact two-sided p on the same test images. Views: random resized crop (25-100 % of",
        "the area, ratio 3/4-4/3) at 224 px + left-right flip half the time, seed 0;",
        f"--tta {TTA}: mean probability of the image, its flip and one seeded view.",
        "",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, no GPU; shared with "
        f"other jobs: 1-minute load {meta['load_before']:.1f} before, {meta['load_after']:.1f} "
        f"after; total {meta['seconds']:.0f} s. Times are wall times of the API calls.",
        "- Backbone efficientnet_lite0 (offline ImageNet weights), layer -2 (1280-d), logreg.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-limit", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep stores and runs here")
    args = parser.parse_args()
    started, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-views-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("CNNCODES_CACHE", str(work / "cache"))
        rows = measure("hymenoptera", HYMENOPTERA, "val", work)
        rows += measure(f"fashion-mnist-{args.fashion_limit}", fashion_folder(
            work, args.fashion_limit), "test", work)
    meta = {"load_before": load, "load_after": os.getloadavg()[0],
            "seconds": time.perf_counter() - started}
    text = render(rows, meta)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "views.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
