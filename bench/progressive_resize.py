"""Progressive resizing against one size, with the same total epochs: time and accuracy.

``cnncodes finetune DATA --strategy 4 --sizes S1,S2,224 --epochs E`` against the same run
without ``--sizes`` (every epoch at the model's own 224 px), on:

- hymenoptera (ants vs bees, train 244 / val 153, no test split): val is the scored split
  and also chose the best epoch, so its figures are optimistic, and at n = 153 the two
  rows are told apart only where their intervals do not overlap;
- a Fashion-MNIST subset (the first N training and N test images, N >= 1,000; a fifth of
  the training images held out as val): 28 px grayscale articles, which the eval transform
  upscales to 224 px. Sizes 64, 128 are still upscaled 28 px images, so the early stages
  lose no pixels of the source, only the network's resolution of them.

A third row gives progressive resizing more epochs, as many as fit in about the one-size
run's training time (the small stages are cheaper per epoch). Every run trains the same
layers (strategy 4 defaults: the last two layer groups + an MLP head, augmentation), with
seed 0 and ``--patience 0`` so that every epoch runs and the time is the epochs' own.
``train s`` sums the epochs (training + validation at 224 px); ``whole s`` adds decoding,
the test pass and the predictions. Accuracies carry n and a 95 % Wilson interval;
``p vs one size`` is the exact McNemar test against the one-size run on the same scored
images (test, else val). No assertions on time.

Run: python bench/progressive_resize.py [--only hymenoptera|fashion] [--fashion-limit 1200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy.stats import binomtest

from cnncodes.finetuning.finetune import finetune, stage_epochs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of ``correct`` out of ``n``."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def scored(accuracy: float | None, n: int) -> str:
    if accuracy is None:
        return "-"
    low, high = wilson(round(accuracy * n), n)
    return f"{accuracy:.3f} ({low:.3f}-{high:.3f}, n={n})"


def correct_by_path(run_dir: Path) -> pd.Series:
    """Whether each image of the scored split (test, else val) was classified right."""
    frame = pd.read_csv(run_dir / "predictions.csv")
    split = "test" if (frame["split"] == "test").any() else "val"
    frame = frame[frame["split"] == split]
    return pd.Series((frame["label"] == frame["predicted"]).to_numpy(), index=frame["path"])


def mcnemar(first: pd.Series, second: pd.Series) -> float:
    """Exact McNemar p-value (two-sided binomial on the discordant pairs)."""
    first, second = first.align(second, join="inner")
    only_first, only_second = int((first & ~second).sum()), int((~first & second).sum())
    if only_first + only_second == 0:
        return 1.0
    return float(binomtest(only_first, only_first + only_second, 0.5).pvalue)


def run(name: str, source: str, sizes: tuple[int, ...] | None, epochs: int, work: Path,
        **options: Any) -> dict[str, Any]:
    label = ",".join(map(str, sizes)) if sizes else "224 (one size)"
    result = finetune(source=source, strategy=4, sizes=sizes, epochs=epochs, patience=0,
                      out=str(work / f"{name}-{label.split()[0]}-{epochs}"), progress=True,
                      **options)
    counts = stage_epochs(sizes, epochs) if sizes else [epochs]
    sizes_seen = sizes or (224,)
    meta = json.loads((result.run_dir / "finetune.json").read_text())
    n_val, n_test = meta["result"]["n_val"], meta["result"]["n_test"]
    return {
        "data": name, "sizes": label,
        "epochs per size": " + ".join(f"{c}@{s}" for c, s in zip(counts, sizes_seen, strict=True)),
        "train s": round(sum(r.seconds for r in result.history), 1),
        "whole s": round(result.seconds, 1), "best epoch": result.best_epoch,
        "val accuracy": scored(result.val_accuracy, n_val),
        "test accuracy": scored(result.test_accuracy, n_test),
        "val per stage (best)": "; ".join(f"{s['size']}: {s['val_accuracy']:.3f}"
                                          for s in result.stages),
        "p vs one size": "-",
        "_correct": correct_by_path(result.run_dir),
    }


def compare_rows(rows: list[dict[str, Any]]) -> None:
    """Fill ``p vs one size`` of each progressive row from its data set's one-size row."""
    for row in rows[1:]:
        row["p vs one size"] = f"{mcnemar(rows[0]['_correct'], row['_correct']):.3f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    columns = [column for column in rows[0] if not column.startswith("_")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["hymenoptera", "fashion"])
    parser.add_argument("--hymenoptera-epochs", type=int, default=6)
    parser.add_argument("--fashion-epochs", type=int, default=4)
    parser.add_argument("--fashion-limit", type=int, default=1200,
                        help="first N images of each Fashion-MNIST split (test n = N)")
    args = parser.parse_args()
    load_before, started, rows = os.getloadavg(), time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="progressive-resize-") as folder:
        work = Path(folder)
        if args.only in (None, "hymenoptera"):
            epochs = args.hymenoptera_epochs
            group = [run("hymenoptera", str(HYMENOPTERA), sizes, count, work)
                     for sizes, count in ((None, epochs), ((128, 160, 224), epochs),
                                          ((128, 160, 224), round(epochs * 4 / 3)))]
            compare_rows(group)
            rows += group
        if args.only in (None, "fashion") and (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
            epochs = args.fashion_epochs
            group = [run("fashion-mnist", str(FASHION_MNIST), sizes, count, work,
                         limit=args.fashion_limit)
                     for sizes, count in ((None, epochs), ((64, 128, 224), epochs),
                                          ((64, 128, 224), round(epochs * 3 / 2)))]
            compare_rows(group)
            rows += group
    total, load_after = time.perf_counter() - started, os.getloadavg()
    table = markdown(rows)
    lines = [
        "# Progressive resizing against one size, same total epochs", "",
        "`python bench/progressive_resize.py` (strategy 4 defaults, seed 0, --patience 0; "
        f"hymenoptera {args.hymenoptera_epochs} epochs, Fashion-MNIST first "
        f"{args.fashion_limit:,} images of each split, {args.fashion_epochs} epochs)", "",
        table, "",
        "- `train s`: the epochs (training + validation at 224 px); `whole s`: the whole "
        "run (decoding, epochs, test and predictions at 224 px).",
        "- Third row of each data set: progressive resizing with more epochs (4/3 of them on "
        "hymenoptera, 3/2 on Fashion-MNIST), about the one-size run's training time.",
        "- `p vs one size`: exact McNemar test against the one-size run on the same scored "
        "images (Fashion-MNIST: test; hymenoptera: val).",
        "- Validation, the best epoch, test and the checkpoint are at 224 px in every row; "
        "`val per stage` is each size's best val accuracy.",
        "- Hymenoptera has no test split: val (n=153) is scored and also chose the best "
        "epoch, so its figures are optimistic; where the intervals overlap, the difference "
        "is inside them. Fashion-MNIST accuracies are on its test split.",
        f"- Whole bench: {total / 60:.1f} minutes. Machine: {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, {'CUDA' if torch.cuda.is_available() else 'no GPU'}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs "
        "shared the machine; timings are of one run each).",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "progressive_resize.md").write_text("\n".join(lines), encoding="utf-8")
    print(table)
    print(f"\n{total / 60:.1f} min; written to {RESULTS / 'progressive_resize.md'}")


if __name__ == "__main__":
    main()
